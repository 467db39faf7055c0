"""Count baselines, scored on the same validation batches as a model: a unigram
table and an interpolated bigram, fitted on the training tokens a run read. They
say whether a model has learned more than token frequencies (unigram) and
adjacent-pair statistics (bigram).

Nothing is tuned on the validation batches; both estimates are parameter-free:
- unigram: P(w) = (c(w) + a) / (N + a V), where the pseudo-count a gives the ids
  never seen in training the mass Good-Turing estimates for them, n1 / N (n1: ids
  seen once, at least 1; N: tokens; V: vocabulary), or a = 1 (add-one) where no
  pseudo-count reaches that mass;
- bigram: Witten-Bell interpolation with that unigram,
  P(b | a) = (c(a, b) + T(a) P(b)) / (c(a) + T(a)), T(a) the number of distinct
  ids seen after a (an id never seen first falls back to the unigram).

Both score what the model scores: in a window x[0..L], the targets x[1..L], the
bigram given the token before each.
"""

import numpy as np


def _targets(batches) -> np.ndarray:
    return np.concatenate([np.asarray(b)[..., 1:].reshape(-1) for b in batches]).astype(np.int64)


def _pairs(batches) -> tuple:
    prev = np.concatenate([np.asarray(b)[..., :-1].reshape(-1) for b in batches]).astype(np.int64)
    return prev, _targets(batches)


class CountBaselines:
    """Unigram and interpolated-bigram counts of `train_batches` (windows [.., L+1],
    as a Stream gives them) over a vocabulary of `vocab_size` ids."""

    def __init__(self, train_batches, vocab_size: int):
        self.V = int(vocab_size)
        prev, nxt = _pairs(train_batches)
        if nxt.size == 0:
            raise ValueError("the baselines need at least one training token")
        if nxt.max() >= self.V or min(prev.min(), nxt.min()) < 0:
            raise ValueError(f"token ids must lie in [0, {self.V})")
        counts = np.bincount(nxt, minlength=self.V).astype(np.float64)
        N, n1 = counts.sum(), max(int(np.count_nonzero(counts == 1)), 1)
        unseen = max(self.V - int(np.count_nonzero(counts)), 1)
        # a * unseen / (N + a V) = n1 / N  (the Good-Turing mass of the unseen ids)
        self.alpha = n1 * N / (N * unseen - n1 * self.V) if N * unseen > n1 * self.V else 1.0
        self.unigram = (counts + self.alpha) / (N + self.alpha * self.V)
        codes, pair_counts = np.unique(prev * self.V + nxt, return_counts=True)
        self.pair_codes, self.pair_counts = codes, pair_counts.astype(np.float64)
        first = codes // self.V
        self.first_count = np.bincount(first, weights=self.pair_counts, minlength=self.V)  # c(a)
        self.successors = np.bincount(first, minlength=self.V).astype(np.float64)  # T(a)
        self.tokens = int(N)

    def unigram_nll(self, batches) -> np.ndarray:
        return -np.log(self.unigram[_targets(batches)])

    def bigram_nll(self, batches) -> np.ndarray:
        prev, nxt = _pairs(batches)
        code = prev * self.V + nxt
        at = np.clip(np.searchsorted(self.pair_codes, code), 0, len(self.pair_codes) - 1)
        c_ab = np.where(self.pair_codes[at] == code, self.pair_counts[at], 0.0)
        c_a, t_a, p_b = self.first_count[prev], self.successors[prev], self.unigram[nxt]
        seen = c_a > 0
        p = np.where(seen, (c_ab + t_a * p_b) / np.where(seen, c_a + t_a, 1.0), p_b)
        return -np.log(p)

    def losses(self, val_batches) -> dict:
        """Mean nats per target token on `val_batches`, as a model's validation loss."""
        return {"unigram": float(self.unigram_nll(val_batches).mean()),
                "bigram": float(self.bigram_nll(val_batches).mean())}
