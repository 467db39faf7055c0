"""Every verdict rule on synthetic numbers: each outcome is reached."""

import math

import pytest

from mlx_grow.reproduce import verdicts as v


def test_spread():
    m, se, n = v.spread([0.1, 0.3])
    assert (m, n) == (pytest.approx(0.2), 2) and se == pytest.approx(0.1)
    assert math.isnan(v.spread([0.5])[1])
    with pytest.raises(ValueError):
        v.spread([])


def test_not_testable_until_every_seed_is_clearly_below_the_unigram_table():
    assert v.clear_of_unigram("mono", [4.0, 4.1], unigram=4.3) is None
    out = v.clear_of_unigram("mono", [4.0, 4.25], unigram=4.3)  # one seed only 0.05 below
    assert out.outcome == v.NOT_TESTABLE and "4.250" in out.reason and "4.300" in out.reason


@pytest.mark.parametrize("diffs, outcome", [
    ([-0.30, -0.25, -0.28], v.SUPPORTS),
    ([0.30, 0.25, 0.28], v.CONTRADICTS),
    ([-0.3, 0.3, 0.05], v.INCONCLUSIVE),
    ([-0.3], v.INCONCLUSIVE),  # one seed
])
def test_better(diffs, outcome):
    got = v.better("grown", "monolithic", diffs)
    assert got.outcome == outcome, got


@pytest.mark.parametrize("diffs, outcome", [
    # tolerance: 10 % of (5.0 - 4.0) = 0.1 nats
    ([0.02, 0.03, 0.01], v.SUPPORTS),
    ([-0.2, -0.25, -0.22], v.SUPPORTS),  # better than the reference also rivals it
    ([0.40, 0.45, 0.42], v.CONTRADICTS),
    ([0.05, 0.15, 0.10], v.INCONCLUSIVE),  # straddles the tolerance
    ([0.0], v.INCONCLUSIVE),
])
def test_rivals(diffs, outcome):
    got = v.rivals("grown", "monolithic", diffs, b_loss=4.0, unigram=5.0)
    assert got.outcome == outcome, got
    assert "tolerance 0.100" in got.reason
