"""Count baselines against values computed by hand on a toy corpus."""

import math

import numpy as np
import pytest

from mlx_grow.eval.baselines import CountBaselines

# One training window of L = 6 targets over a vocabulary of 5 ids (id 4 never occurs).
TRAIN = [np.array([[0, 1, 0, 1, 2, 0, 1]])]
VAL = [np.array([[0, 1, 2, 3]])]


def test_unigram_by_hand():
    b = CountBaselines(TRAIN, vocab_size=5)
    # targets 1 0 1 2 0 1: c = [2, 3, 1, 0, 0], N = 6; n1 = 1 (id 2); unseen ids 3, 4 (U = 2)
    # a * 2 / (6 + 5a) = 1/6  ->  12a = 6 + 5a  ->  a = 6/7
    a = 6 / 7
    assert b.alpha == pytest.approx(a)
    want = (np.array([2, 3, 1, 0, 0]) + a) / (6 + 5 * a)
    np.testing.assert_allclose(b.unigram, want)
    assert b.unigram[3] + b.unigram[4] == pytest.approx(1 / 6)  # the Good-Turing unseen mass
    # validation targets 1, 2, 3
    assert b.losses(VAL)["unigram"] == pytest.approx(-np.mean(np.log(want[[1, 2, 3]])))


def test_witten_bell_bigram_by_hand():
    b = CountBaselines(TRAIN, vocab_size=5)
    p = b.unigram
    # pairs: (0,1) x3, (1,0) x1, (1,2) x1, (2,0) x1
    # after 0: c = 3, T = 1;  after 1: c = 2, T = 2;  after 2: c = 1, T = 1
    p01 = (3 + 1 * p[1]) / (3 + 1)
    p12 = (1 + 2 * p[2]) / (2 + 2)
    p23 = (0 + 1 * p[3]) / (1 + 1)
    assert b.losses(VAL)["bigram"] == pytest.approx(-np.mean(np.log([p01, p12, p23])))
    # an id never seen as a predecessor falls back to the unigram
    assert b.bigram_nll([np.array([[3, 0]])])[0] == pytest.approx(-math.log(p[0]))
    # each conditional distribution sums to one
    for a in range(5):
        rows = [np.array([[a, x]]) for x in range(5)]
        assert sum(math.exp(-b.bigram_nll([r])[0]) for r in rows) == pytest.approx(1.0)


def test_bigram_beats_unigram_on_text_with_structure():
    rng = np.random.default_rng(0)
    # a Markov chain: each id is followed by one of two others
    nxt = {i: [(i + 1) % 50, (i + 7) % 50] for i in range(50)}
    seq = [0]
    for _ in range(20_000):
        seq.append(nxt[seq[-1]][rng.integers(2)])
    seq = np.array(seq)
    train, val = [seq[:16_001].reshape(1, -1)], [seq[16_000:].reshape(1, -1)]
    got = CountBaselines(train, vocab_size=64).losses(val)
    assert got["bigram"] == pytest.approx(math.log(2), abs=0.02)  # the chain's entropy rate
    assert got["unigram"] == pytest.approx(math.log(50), abs=0.05)


def test_refuses_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="token ids"):
        CountBaselines([np.array([[0, 9]])], vocab_size=5)
