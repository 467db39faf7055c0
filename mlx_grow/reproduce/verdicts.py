"""Verdicts on the papers' claims, computed by written rules from measured numbers
(never written by hand). Every verdict is one of four outcomes and carries the
numbers behind it.

1. Not testable at this scale: the reference arm did not end clearly below the
   unigram table on the same validation batches (every seed at least CLEAR nats
   below it), or, for growth, the grown run's first stage did not. Below that
   level a comparison measures how soon each arm learns token frequencies.
2. Otherwise the per-seed paired differences d (same seed, same batches) decide,
   with mean m, standard error se = sd / sqrt(n) over n >= 2 seeds, and the
   interval m +- k se, k the two-sided 95 % Student-t value for n - 1 degrees of
   freedom (12.71 for 2 seeds, 4.30 for 3, 3.18 for 4, ... 1.96 for many: "2
   standard errors" is the large-sample value, and with 2 seeds it would call
   about 3 in 10 chance differences real):
   - "A is better than B" (d = A - B): supports if m + k se < 0, contradicts if
     m - k se > 0, else inconclusive;
   - "A rivals B" (A is not worse than B by more than a tolerance t): supports if
     m + k se <= t, contradicts if m - k se > t, else inconclusive. The tolerance is
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
# Two-sided 95 % Student-t values by degrees of freedom (seeds - 1); between two rows the smaller
# degrees of freedom (the wider interval) is used, past the last row the normal 1.96.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}


def t95(n: int) -> float:
    """The interval's half-width in standard errors for n seeds (n - 1 degrees of freedom)."""
    df = n - 1
    if df < 1:
        return math.inf
    if df > max(T95):
        return 1.96
    return T95[max(k for k in T95 if k <= df)]


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


def clear_of_unigram(name: str, losses, unigram):
    """None when every seed of `name` ended at least CLEAR nats below the unigram
    table; else the not-testable Verdict saying by how much it missed. `unigram`: one
    value, or one per seed (each seed's table, fitted on the tokens that seed read)."""
    losses = [float(x) for x in losses]
    unis = [float(u) for u in unigram] if isinstance(unigram, (list, tuple)) else [float(unigram)] * len(losses)
    if len(unis) != len(losses):
        raise ValueError("one unigram value, or one per seed")
    if not losses:
        raise ValueError("no losses to judge")
    gaps = [x - u for x, u in zip(losses, unis)]
    i = max(range(len(gaps)), key=gaps.__getitem__)
    if gaps[i] <= -CLEAR:
        return None
    return Verdict(NOT_TESTABLE, f"{name} ended at {losses[i]:.3f} nats (its worst seed against its table), not "
                                 f"{CLEAR:.2f} below the unigram table's {unis[i]:.3f}: the models have not learned "
                                 "clearly more than token frequencies")


def _words(m, se, n) -> str:
    return (f"mean paired difference {m:+.3f} nats" + (f" ± {t95(n) * se:.3f} (95 % interval, t = {t95(n):.2f} "
                                                      f"standard errors, {n} seeds)" if n > 1 else " (one seed)"))


def better(a: str, b: str, diffs) -> Verdict:
    """The claim "a is better (lower loss) than b" from per-seed differences a - b."""
    m, se, n = spread(diffs)
    what = f"{a} minus {b}: {_words(m, se, n)}"
    if n < 2:
        return Verdict(INCONCLUSIVE, what + "; one seed gives no spread to judge by")
    k = t95(n)
    if m + k * se < 0:
        return Verdict(SUPPORTS, what + f"; {a} is lower, the interval below 0")
    if m - k * se > 0:
        return Verdict(CONTRADICTS, what + f"; {a} is higher, the interval above 0")
    return Verdict(INCONCLUSIVE, what + "; the interval holds 0")


def rivals(a: str, b: str, diffs, b_loss: float, unigram: float) -> Verdict:
    """The claim "a rivals b": a's loss is not above b's by more than RIVAL_SHARE of
    b's gain over the unigram table (b_loss: b's mean final loss)."""
    m, se, n = spread(diffs)
    tol = RIVAL_SHARE * (unigram - b_loss)
    what = (f"{a} minus {b}: {_words(m, se, n)}; tolerance {tol:.3f} nats ({RIVAL_SHARE:.0%} of {b}'s "
            f"{unigram - b_loss:.3f} below the unigram table)")
    if n < 2:
        return Verdict(INCONCLUSIVE, what + "; one seed gives no spread to judge by")
    k = t95(n)
    if m + k * se <= tol:
        return Verdict(SUPPORTS, what + "; the whole interval is within the tolerance")
    if m - k * se > tol:
        return Verdict(CONTRADICTS, what + f"; {a} is worse by more than the tolerance, the whole interval above it")
    return Verdict(INCONCLUSIVE, what + "; the interval straddles the tolerance")


def rules_text() -> list:
    """The rules as the report states them (once), with the constants in force."""
    return [
        f"1. **Not testable at this scale** when the reference arm did not end clearly below the unigram table on "
        f"the same validation batches: every seed at least {CLEAR:.2f} nats below its own table (fitted on the "
        "tokens that seed read); for growth, the grown run's first stage too. Below that level a comparison "
        "measures how soon each arm learns token frequencies.",
        "2. Otherwise the per-seed paired differences d (same seed, same batches, A minus B) decide, by their mean "
        "m and the 95 % interval m ± k·se (se = sd/√n; k the two-sided Student-t value for n − 1 degrees of "
        "freedom: 12.71 for 2 seeds, 4.30 for 3; \"2 standard errors\" holds only for many seeds):",
        "   - **A is better than B**: *supports* if the whole interval is below 0, *contradicts* if it is above 0, "
        "else *inconclusive*;",
        f"   - **A rivals B**: *supports* if the whole interval is below a tolerance t, *contradicts* if it is above "
        f"t, else *inconclusive*; t = {RIVAL_SHARE:.0%} of what B learned beyond the unigram table.",
        "   - One seed gives no spread: *inconclusive*.",
    ]
