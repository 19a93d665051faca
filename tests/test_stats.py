"""Tests for harness/stats.py against known values (textbook examples, scipy, statsmodels, hand computation).

    python -m pytest tests/test_stats.py -q
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from harness.report.stats import holm, mcnemar_exact, mean_ci, paired_bootstrap, paired_permutation, pareto_front


def test_mean_ci_matches_scipy_t_interval():
    x = [0.41, 0.43, 0.40, 0.45, 0.39]
    m, lo, hi, n = mean_ci(x)
    ref_lo, ref_hi = sps.t.interval(0.95, df=len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert n == 5
    assert m == pytest.approx(np.mean(x))
    assert lo == pytest.approx(ref_lo, rel=1e-12)
    assert hi == pytest.approx(ref_hi, rel=1e-12)


def test_mean_ci_small_and_nonfinite():
    m, lo, hi, n = mean_ci([2.0, float("nan")])
    assert (m, n) == (2.0, 1) and math.isnan(lo) and math.isnan(hi)
    m, lo, hi, n = mean_ci([])
    assert n == 0 and math.isnan(m)
    # two values: half-width = t_{0.975,1} * sd / sqrt(2) = 12.706 * 0.7071 / 1.4142
    m, lo, hi, n = mean_ci([1.0, 2.0])
    assert hi - m == pytest.approx(12.7062047 * 0.5, rel=1e-6)


def test_mcnemar_exact_textbook_example():
    # Discordant pairs b = 2 (a right, b wrong), c = 8: p = 2 * P(X <= 2), X ~ Bin(10, 1/2)
    # = 2 * (1 + 10 + 45) / 1024 = 0.109375, computed by hand; scipy's two-sided binomial test on
    # the discordant pairs (the textbook definition of the exact McNemar test) must agree.
    a = [1, 1] + [0] * 8 + [1] * 20 + [0] * 5
    b = [0, 0] + [1] * 8 + [1] * 20 + [0] * 5
    p = mcnemar_exact(a, b)
    assert p == pytest.approx(112 / 1024)
    assert p == pytest.approx(sps.binomtest(2, 10, 0.5).pvalue)
    assert mcnemar_exact(b, a) == pytest.approx(p)  # symmetric


def test_mcnemar_no_discordant_pairs_and_bad_input():
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar_exact([1, 0], [1])
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([2, 0], [1, 0])


@pytest.mark.slow
def test_holm_known_list():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm([0.01, float("nan"), 0.02])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_pareto_front_small_set():
    # (quality higher better, memory lower better)
    pts = [(0.5, 100), (0.6, 200), (0.55, 300), (0.7, 400), (0.4, 50), (0.7, 500), (float("nan"), 10)]
    assert pareto_front(pts, ("max", "min")) == [0, 1, 3, 4]
    assert pareto_front([(1, 1), (1, 1)], ("min", "min")) == [0, 1]
    with pytest.raises(ValueError, match="min' or 'max"):
        pareto_front(pts, ("up", "min"))


def test_paired_bootstrap_detects_shift_and_is_seeded():
    rng = np.random.default_rng(1)
    base = rng.normal(50, 10, size=300)
    a = base + 2.0 + rng.normal(0, 1, size=300)
    delta, (lo, hi), p = paired_bootstrap(a, base, n=2000, seed=3)
    assert delta == pytest.approx(np.mean(a - base))
    assert lo < delta < hi and lo > 0
    assert p < 0.01
    assert paired_bootstrap(a, base, n=2000, seed=3) == (delta, (lo, hi), p)
    # no effect: large p, interval covers 0
    b = base + rng.normal(0, 1, size=300)
    c = base + rng.normal(0, 1, size=300)
    d2, (lo2, hi2), p2 = paired_bootstrap(b, c, n=2000, seed=0)
    assert lo2 < 0 < hi2 and p2 > 0.05


def test_paired_bootstrap_p_agrees_with_paired_t_test():
    # with many items the bootstrap SE equals the t-test SE, so the p-values agree closely
    rng = np.random.default_rng(7)
    a = rng.normal(0.1, 1, 2000)
    b = a - rng.normal(0.05, 1, 2000)
    _, _, p = paired_bootstrap(a, b, n=4000, seed=0)
    ref = sps.ttest_rel(a, b).pvalue
    assert 0.01 < ref < 0.5  # a case where the p-value is informative
    assert p == pytest.approx(ref, rel=0.2)


def test_paired_bootstrap_rejects_nan_pairs():
    with pytest.raises(ValueError, match="not finite"):
        paired_bootstrap([1.0, float("nan")], [1.0, 2.0])


def test_paired_permutation_exact_small_case():
    # differences 1, 2, 3: only all-plus and all-minus reach |mean| >= 2 -> p = 2/8
    delta, p = paired_permutation([1, 2, 3], [0, 0, 0])
    assert delta == pytest.approx(2.0) and p == pytest.approx(0.25)
    # random version agrees with the exact one on a larger case
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 1, 12), rng.normal(0, 1, 12)
    _, exact = paired_permutation(a, b, n=5000)  # 2**12 <= 5000: exact
    _, approx = paired_permutation(a, b, n=4000, seed=1)
    assert approx == pytest.approx(exact, abs=0.03)


# ------------------------------------------------------- each statistic against its library or by hand


def test_paired_bootstrap_interval_is_scipy_bootstrap_paired_percentile():
    # scipy's own paired API on (a, b), same generator: the same resamples, so the same interval and SE
    rng = np.random.default_rng(5)
    a = rng.normal(30, 8, 120)
    b = a - rng.normal(0.5, 2, 120)
    delta, (lo, hi), p = paired_bootstrap(a, b, n=1500, seed=11, confidence=0.9)
    ref = sps.bootstrap((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), paired=True, vectorized=True,
                        n_resamples=1500, method="percentile", confidence_level=0.9, rng=np.random.default_rng(11))
    assert (lo, hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-12)
    assert p == pytest.approx(math.erfc(abs(delta) / (ref.standard_error * math.sqrt(2))), rel=1e-12)


def test_paired_bootstrap_two_items_by_hand():
    # differences 1 and 3: a resample mean is 1, 2 or 3 with chances 1/4, 1/2, 1/4, so the 95%
    # percentile interval is (1, 3) and the bootstrap SE is sqrt(1/2); p = erfc(2 / (sqrt(1/2) sqrt 2)) = erfc(2)
    delta, (lo, hi), p = paired_bootstrap([1.0, 3.0], [0.0, 0.0], n=4000, seed=0)
    assert (delta, lo, hi) == (2.0, 1.0, 3.0)
    assert p == pytest.approx(math.erfc(2.0), rel=0.1)
    # one item: every resample is that item
    assert paired_bootstrap([2.0], [1.0]) == (1.0, (1.0, 1.0), 0.0)
    assert paired_bootstrap([2.0], [2.0]) == (0.0, (0.0, 0.0), 1.0)


def test_mcnemar_exact_matches_statsmodels_mcnemar():
    from statsmodels.stats.contingency_tables import mcnemar

    for b in range(0, 25):
        for c in range(0, 25):
            a_correct = [1] * b + [0] * c + [1] * 7 + [0] * 3
            b_correct = [0] * b + [1] * c + [1] * 7 + [0] * 3
            ref = mcnemar([[7, b], [c, 3]], exact=True).pvalue if b + c else 1.0
            assert mcnemar_exact(a_correct, b_correct) == pytest.approx(ref, rel=1e-12)


def _sign_flip_p_by_enumeration(d):
    d = np.asarray(d, dtype=float)
    obs = abs(d.mean())
    hits = sum(abs(np.mean(np.array(signs) * d)) >= obs - 1e-12
               for signs in itertools.product((1.0, -1.0), repeat=d.size))
    return hits / 2 ** d.size


def test_paired_permutation_exact_matches_enumeration_and_scipy():
    rng = np.random.default_rng(3)
    for size in range(1, 11):
        a = rng.normal(0.4, 1, size).round(1)  # rounding makes ties, which must count as ">="
        b = rng.normal(0, 1, size).round(1)
        delta, p = paired_permutation(a, b, n=2 ** size)
        assert p == pytest.approx(_sign_flip_p_by_enumeration(a - b), abs=1e-12)
        if size >= 2:
            ref = sps.permutation_test((a - b,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                                       n_resamples=np.inf, vectorized=True).pvalue
            assert p == pytest.approx(ref, abs=1e-12)


def test_paired_permutation_random_branch_by_hand():
    # 20 equal differences: only the all-plus and all-minus patterns (chance 2 / 2**20) reach the
    # observed |mean|, so 1000 random patterns almost surely hit none and p = (1 + 0) / (1000 + 1)
    delta, p = paired_permutation([1.0] * 20, [0.0] * 20, n=1000, seed=0)
    assert delta == 1.0 and p == pytest.approx(1 / 1001)
    assert paired_permutation([0.0] * 20, [0.0] * 20, n=1000)[1] == 1.0


@pytest.mark.slow
def test_holm_matches_statsmodels_and_r_p_adjust():
    from statsmodels.stats.multitest import multipletests

    # R: p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), "holm") = 0.05 0.08 0.09 0.09 0.09
    assert holm([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])
    rng = np.random.default_rng(0)
    for _ in range(6):  # few: multipletests runs gc.collect() on every Holm call
        p = rng.random(int(rng.integers(1, 12))) ** 3
        p[rng.random(p.size) < 0.2] = np.nan  # skipped tests stay nan and do not count
        ok = np.isfinite(p)
        out = np.array(holm(p))
        assert np.array_equal(np.isnan(out), ~ok)
        if ok.any():
            np.testing.assert_allclose(out[ok], multipletests(p[ok], method="holm")[1], rtol=1e-15)
