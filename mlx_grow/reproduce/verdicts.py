"""Verdicts on the papers' claims, computed by written rules from measured numbers
(never written by hand). Every verdict is one of four outcomes and carries the
numbers behind it.

1. Not testable at this scale: the reference arm did not end clearly below the
   unigram table on the same validation batches (every seed at least CLEAR nats
   below it), or, for growth, the grown run's first stage did not. Below that
   level a comparison measures how soon each arm learns token frequencies.
2. Otherwise the per-seed paired differences d (same seed, same batches) decide,
   with mean m and standard error se = sd / sqrt(n) over n >= 2 seeds:
   - "A is better than B" (d = A - B): supports if m + 2 se < 0, contradicts if
     m - 2 se > 0, else inconclusive;
   - "A rivals B" (A is not worse than B by more than a tolerance t): supports if
     m + 2 se <= t, contradicts if m - 2 se > t, else inconclusive. The tolerance is
     RIVAL_SHARE of what B learned beyond the unigram table (unigram - B), so it
     scales with how far the models got.
   One seed gives no spread: inconclusive.
"""

import math
from dataclasses import dataclass

SUPPORTS, CONTRADICTS, INCONCLUSIVE, NOT_TESTABLE = (
    "supports", "contradicts", "inconclusive", "not testable at this scale")
CLEAR = 0.10  # nats below the unigram table that count as clearly past token frequencies
RIVAL_SHARE = 0.10  # "rivals": within this share of the reference arm's gain over the unigram table


@dataclass(frozen=True)
class Verdict:
    outcome: str
    reason: str

    def __str__(self):
        return f"{self.outcome}: {self.reason}"


def spread(diffs) -> tuple:
    """(mean, standard error, n) of per-seed differences; the error is nan for one seed."""
    d = [float(x) for x in diffs]
    if not d:
        raise ValueError("no differences to judge")
    n, m = len(d), sum(d) / len(d)
    se = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1) / n) if n > 1 else math.nan
    return m, se, n


def clear_of_unigram(name: str, losses, unigram: float):
    """None when every seed of `name` ended at least CLEAR nats below the unigram
    table; else the not-testable Verdict saying by how much it missed."""
    worst = max(float(x) for x in losses)
    if worst <= unigram - CLEAR:
        return None
    return Verdict(NOT_TESTABLE, f"{name} ended at {worst:.3f} nats (worst seed), not {CLEAR:.2f} below the "
                                 f"unigram table's {unigram:.3f}: the models have not learned clearly more than "
                                 "token frequencies")


def _words(m, se, n) -> str:
    return (f"mean paired difference {m:+.3f} nats" + (f" ± {2 * se:.3f} (2 standard errors, {n} seeds)"
                                                      if n > 1 else " (one seed)"))


def better(a: str, b: str, diffs) -> Verdict:
    """The claim "a is better (lower loss) than b" from per-seed differences a - b."""
    m, se, n = spread(diffs)
    what = f"{a} minus {b}: {_words(m, se, n)}"
    if n < 2:
        return Verdict(INCONCLUSIVE, what + "; one seed gives no spread to judge by")
    if m + 2 * se < 0:
        return Verdict(SUPPORTS, what + f"; {a} is lower beyond 2 standard errors")
    if m - 2 * se > 0:
        return Verdict(CONTRADICTS, what + f"; {a} is higher beyond 2 standard errors")
    return Verdict(INCONCLUSIVE, what + "; within 2 standard errors of no difference")


def rivals(a: str, b: str, diffs, b_loss: float, unigram: float) -> Verdict:
    """The claim "a rivals b": a's loss is not above b's by more than RIVAL_SHARE of
    b's gain over the unigram table (b_loss: b's mean final loss)."""
    m, se, n = spread(diffs)
    tol = RIVAL_SHARE * (unigram - b_loss)
    what = (f"{a} minus {b}: {_words(m, se, n)}; tolerance {tol:.3f} nats ({RIVAL_SHARE:.0%} of {b}'s "
            f"{unigram - b_loss:.3f} below the unigram table)")
    if n < 2:
        return Verdict(INCONCLUSIVE, what + "; one seed gives no spread to judge by")
    if m + 2 * se <= tol:
        return Verdict(SUPPORTS, what + "; within the tolerance beyond 2 standard errors")
    if m - 2 * se > tol:
        return Verdict(CONTRADICTS, what + f"; {a} is worse by more than the tolerance beyond 2 standard errors")
    return Verdict(INCONCLUSIVE, what + "; the interval straddles the tolerance")
