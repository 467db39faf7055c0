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


def test_the_interval_widens_with_few_seeds():
    assert v.t95(2) == pytest.approx(12.706) and v.t95(3) == pytest.approx(4.303)
    assert v.t95(14) == pytest.approx(2.179)  # between rows: the smaller degrees of freedom (wider)
    assert v.t95(1000) == 1.96 and v.t95(1) == math.inf
    # 2 seeds, -0.25 and -0.15: 2 standard errors (0.1) would say "lower"; the t interval (0.635) does not
    got = v.better("grown", "monolithic", [-0.25, -0.15])
    assert got.outcome == v.INCONCLUSIVE and "t = 12.71" in got.reason
    # 2 seeds that agree closely are enough
    assert v.better("grown", "monolithic", [-0.30, -0.31]).outcome == v.SUPPORTS
    assert v.rivals("grown", "monolithic", [0.01, 0.012], b_loss=4.0, unigram=5.0).outcome == v.SUPPORTS


def test_each_seed_against_its_own_unigram_table():
    assert v.clear_of_unigram("mono", [4.0, 4.3], unigram=[4.2, 4.5]) is None
    out = v.clear_of_unigram("mono", [4.0, 4.3], unigram=[4.2, 4.35])
    assert out.outcome == v.NOT_TESTABLE and "4.300" in out.reason and "4.350" in out.reason
    with pytest.raises(ValueError):
        v.clear_of_unigram("mono", [4.0, 4.3], unigram=[4.2])
