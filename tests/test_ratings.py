"""Tests for harness.ratings: Elo, Bradley-Terry, Wilson, mean CI, Cohen's kappa, Krippendorff's alpha.

    python -m pytest tests/test_ratings.py -x -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.human.ratings import (
    KRIPPENDORFF_LEVELS,
    bradley_terry,
    bradley_terry_bootstrap,
    bt_mle_exists,
    bt_to_elo_scale,
    cohen_kappa,
    elo_orderings,
    elo_sequence,
    krippendorff_alpha,
    mean_ci,
    summarize_samples,
    wilson_interval,
    win_matrix,
)

# ------------------------------------------------------------------------------------------ Elo


def test_elo_three_matches_hand_computed():
    # players A=0, B=1, C=2, all start at 1000, K = 32
    # 1) A beats B: E = 0.5, A += 16 -> 1016, B -> 984
    # 2) B beats C: E_B = 1/(1+10^(16/400)) = 0.476990, B += 32*(1-0.476990) = 16.7363 -> 1000.7363, C -> 983.2637
    # 3) A ties C: E_A = 1/(1+10^((983.2637-1016)/400)) = 0.546972, A += 32*(0.5-0.546972) = -1.5031
    #    -> A 1014.4969, C 984.7668
    r1 = elo_sequence([0], [1], [1.0], 3)
    assert r1 == pytest.approx([1016.0, 984.0, 1000.0])
    r2 = elo_sequence([0, 1], [1, 2], [1.0, 1.0], 3)
    assert r2 == pytest.approx([1016.0, 1000.7363, 983.2637], abs=1e-4)
    r3 = elo_sequence([0, 1, 0], [1, 2, 2], [1.0, 1.0, 0.5], 3)
    assert r3 == pytest.approx([1014.4969, 1000.7363, 984.7668], abs=1e-4)
    assert r3.sum() == pytest.approx(3000.0)  # Elo updates are zero-sum


def test_elo_orderings_equal_sequential_elo_on_the_same_permutations():
    rng = np.random.default_rng(1)
    n, players = 60, 4
    a = rng.integers(0, players, n)
    b = (a + rng.integers(1, players, n)) % players
    s = rng.choice([0.0, 0.5, 1.0], n)
    out = elo_orderings(a, b, s, players, orderings=7, seed=3, chunk=3)
    # the permutations the function draws: rng.permuted row by row, whatever the chunk size
    perms = np.random.default_rng(3).permuted(np.tile(np.arange(n), (7, 1)), axis=1)
    for o in range(7):
        ref = elo_sequence(a[perms[o]], b[perms[o]], s[perms[o]], players)
        np.testing.assert_allclose(out[o], ref, atol=1e-9)
    np.testing.assert_allclose(out, elo_orderings(a, b, s, players, orderings=7, seed=3, chunk=100))
    np.testing.assert_allclose(out.sum(axis=1), players * 1000.0)


def test_elo_orderings_rank_a_dominant_player_first_and_summary_shapes():
    a = np.array([0] * 30 + [1] * 30)
    b = np.array([1] * 30 + [2] * 30)
    s = np.ones(60)  # 0 always beats 1, 1 always beats 2
    final = elo_orderings(a, b, s, 3, orderings=50, seed=0)
    st = summarize_samples(final)
    assert st["mean"][0] > st["mean"][1] > st["mean"][2]
    assert np.all(st["lo"] <= st["mean"]) and np.all(st["mean"] <= st["hi"])
    assert np.all(st["mean_ci_half"] > 0)


def test_elo_rejects_bad_matches():
    with pytest.raises(ValueError, match="itself"):
        elo_sequence([0], [0], [1.0], 2)
    with pytest.raises(ValueError, match="score_a"):
        elo_sequence([0], [1], [0.7], 2)
    with pytest.raises(ValueError, match="indices"):
        elo_orderings([0], [5], [1.0], 2)


# -------------------------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_two_players_closed_form():
    # MLE of p0/p1 with w wins and l losses is w/l
    w = np.array([[0.0, 3.0], [1.0, 0.0]])
    p = bradley_terry(w)
    assert p[0] / p[1] == pytest.approx(3.0, rel=1e-6)
    assert math.prod(p) == pytest.approx(1.0)  # geometric mean 1
    assert bt_to_elo_scale(p)[0] - bt_to_elo_scale(p)[1] == pytest.approx(400 * math.log10(3), rel=1e-6)


def test_bradley_terry_matches_direct_scipy_optimisation():
    from scipy.optimize import minimize

    w = np.array([[0, 7, 4, 9], [3, 0, 6, 5], [5, 4, 0, 8], [1, 2, 2, 0]], dtype=float)

    def nll(theta):
        th = np.concatenate([[0.0], theta])  # fix player 0 for identifiability
        diff = th[:, None] - th[None, :]
        return float((w * np.logaddexp(0, -diff)).sum())

    res = minimize(nll, np.zeros(3), method="BFGS", options={"gtol": 1e-10})
    theta = np.concatenate([[0.0], res.x])
    p = bradley_terry(w)
    np.testing.assert_allclose(np.log(p) - np.log(p[0]), theta, atol=1e-5)


def test_bradley_terry_symmetric_tournament_is_flat_and_nonexistent_mle_raises():
    w = np.full((3, 3), 2.0) - 2.0 * np.eye(3)
    np.testing.assert_allclose(bradley_terry(w), np.ones(3), atol=1e-9)
    undefeated = np.array([[0, 3, 2], [0, 0, 1], [0, 1, 0]], dtype=float)
    assert not bt_mle_exists(undefeated)
    with pytest.raises(ValueError, match="does not exist"):
        bradley_terry(undefeated)
    p = bradley_terry(undefeated, prior=1.0)
    assert np.all(np.isfinite(p)) and p[0] == p.max()


def test_bradley_terry_bootstrap_batches_agree_with_single_fits():
    a = np.array([0, 0, 1, 1, 2, 2, 0, 1] * 5)
    b = np.array([1, 2, 2, 0, 0, 1, 2, 2] * 5)
    s = np.array([1, 1, 1, 0.5, 0, 0, 1, 0] * 5, dtype=float)
    boot = bradley_terry_bootstrap(a, b, s, 3, resamples=40, seed=2, prior=1.0)
    assert boot.shape == (40, 3)
    # resample 0 refitted alone gives the same strengths as in the batch
    idx = np.random.default_rng(2).integers(0, a.size, size=(40, a.size))[0]
    single = bradley_terry(win_matrix(a[idx], b[idx], s[idx], 3), prior=1.0)
    np.testing.assert_allclose(boot[0], single, rtol=1e-5)


# ---------------------------------------------------------------------------------- intervals


@pytest.mark.parametrize("x,n,lo,hi", [  # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_textbook(x, n, lo, hi):
    got = wilson_interval(x, n)
    assert got == pytest.approx((lo, hi), abs=6e-5)


def test_wilson_interval_edges():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_mean_ci_student_t():
    mean, lo, hi = mean_ci([1, 2, 3, 4, 5])
    # t(0.975, 4) = 2.776445; sd = 1.581139; half = 2.776445 * 1.581139 / sqrt(5) = 1.963243
    assert (mean, lo, hi) == pytest.approx((3.0, 1.036757, 4.963243), abs=1e-5)
    m1, l1, h1 = mean_ci([4])
    assert m1 == 4 and math.isnan(l1) and math.isnan(h1)


# ---------------------------------------------------------------------------------- agreement


def test_cohen_kappa_textbook():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> po = 0.7, pe = 0.5, kappa = 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)


def test_weighted_kappa_against_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    a = [1, 2, 3, 4, 5, 3, 2, 4, 5, 1, 3, 3]
    b = [1, 3, 3, 5, 4, 2, 2, 4, 5, 2, 3, 4]
    for w in ("linear", "quadratic"):
        assert cohen_kappa(a, b, weights=w) == pytest.approx(sk.cohen_kappa_score(a, b, weights=w))
    assert cohen_kappa(a, b) == pytest.approx(sk.cohen_kappa_score(a, b))


N = None
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C: 4 observers, 12 units, missing data
KRIPP_OBSERVERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]


@pytest.mark.parametrize("level,alpha", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)])
def test_krippendorff_alpha_published_example(level, alpha):
    units = list(zip(*KRIPP_OBSERVERS))
    assert round(krippendorff_alpha(units, level), 3) == alpha


def test_krippendorff_alpha_binary_two_observers_and_edges():
    # Krippendorff (2011) example A: two observers, binary data, alpha = 0.095
    units = list(zip([0, 1, 0, 0, 0, 0, 0, 0, 1, 0], [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]))
    assert round(krippendorff_alpha(units, "nominal"), 3) == 0.095
    assert krippendorff_alpha([[1, 1], [2, 2], [3, 3]], "ordinal") == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha([[1, None], [2]], "nominal"))  # nothing pairable
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha([[1, 2]], "cardinal")


# ------------------------------------------------------- each statistic against its library or by hand


def test_bradley_terry_single_fit_is_choix_and_batch_mm_agrees():
    choix = pytest.importorskip("choix")
    rng = np.random.default_rng(4)
    batch = []
    for m in (2, 3, 5, 8):
        w = rng.integers(0, 6, (m, m)).astype(float) + 0.5 * (rng.random((m, m)) < 0.3)  # some ties
        np.fill_diagonal(w, 0.0)
        for prior in (0.0, 1.0, 0.3):
            if prior == 0.0 and not bt_mle_exists(w):
                continue
            # prior = virtual ties, prior/2 each way, added to the matrix (not choix's alpha)
            aug = w + prior / 2.0 * (1 - np.eye(m))
            ref = np.exp(choix.ilsr_pairwise_dense(aug, max_iter=10_000, tol=1e-12))
            np.testing.assert_allclose(bradley_terry(w, prior=prior), ref, rtol=1e-8)
        if m == 5:
            batch = [w + 0.5 * (1 - np.eye(m)) for w in (w, w.T, w + w.T, np.triu(w) + 1 - np.eye(m))]
    # the batched MM (used for bootstrap resamples) gives the ML estimates choix gives one by one
    fits = bradley_terry(np.stack(batch))
    for fit, w in zip(fits, batch):
        np.testing.assert_allclose(fit, np.exp(choix.ilsr_pairwise_dense(w, max_iter=10_000, tol=1e-12)), rtol=1e-7)


def test_wilson_interval_matches_scipy_and_fractional_counts_by_formula():
    from scipy.stats import binomtest, norm

    for n in (1, 7, 40, 263):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for conf in (0.9, 0.95, 0.99):
                ref = binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
                assert wilson_interval(k, n, conf) == pytest.approx((ref.low, ref.high), abs=1e-12)
    # 2.5 of 7 (ties as half a success): Wilson's formula by hand, z = 1.959964
    z, p, n = norm.ppf(0.975), 2.5 / 7, 7
    denom = 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / denom, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    assert wilson_interval(2.5, 7) == pytest.approx((centre - half, centre + half), abs=1e-12)


def test_mean_ci_matches_scipy_t_interval():
    from scipy import stats as sps

    x = [0.2, 0.5, 0.9, 0.4, 0.45, 0.61]
    lo, hi = sps.t.interval(0.9, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert mean_ci(x, 0.9) == pytest.approx((np.mean(x), lo, hi), rel=1e-12)


def test_weighted_kappa_uses_label_values_by_hand():
    # labels 1, 2, 5 (unevenly spaced). Table: (1,1), (2,5), (5,5), (5,2); both raters' marginals 1/4, 1/4, 1/2.
    # linear: observed disagreement (3 + 3)/4 = 1.5; chance 2*(1/16*1 + 1/8*4 + 1/8*3) = 1.875 -> kappa 0.2
    # quadratic: observed (9 + 9)/4 = 4.5; chance 2*(1/16*1 + 1/8*16 + 1/8*9) = 6.375 -> kappa 5/17
    # (scikit-learn's cohen_kappa_score weights by label position 0, 1, 2 and gives 3/7 for linear)
    a, b = [1, 2, 5, 5], [1, 5, 5, 2]
    assert cohen_kappa(a, b, weights="linear") == pytest.approx(0.2)
    assert cohen_kappa(a, b, weights="quadratic") == pytest.approx(5 / 17)
    # the same labels evenly spaced: scikit-learn agrees
    sk = pytest.importorskip("sklearn.metrics")
    a3, b3 = [1, 2, 3, 3], [1, 3, 3, 2]
    for w in ("linear", "quadratic"):
        assert cohen_kappa(a3, b3, weights=w) == pytest.approx(sk.cohen_kappa_score(a3, b3, weights=w))
    assert math.isnan(cohen_kappa([1, 1], [1, 1]))  # one category throughout: undefined


def test_krippendorff_alpha_matches_krippendorff_package_on_reliability_data():
    krippendorff = pytest.importorskip("krippendorff")
    data = np.array([[np.nan if v is None else v for v in row] for row in KRIPP_OBSERVERS], dtype=float)
    units = list(zip(*KRIPP_OBSERVERS))
    for level in KRIPPENDORFF_LEVELS:
        ref = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
        assert krippendorff_alpha(units, level) == pytest.approx(ref, rel=1e-12)
    # strings, nominal
    words = [["low", "low", "mid"], ["mid", "mid", None], ["high", "mid", "high"], ["low", None, "low"]]
    coded = np.array([["nan" if v is None else v for v in unit] for unit in words]).T  # raters x units; "nan" = missing
    ref = krippendorff.alpha(reliability_data=coded, level_of_measurement="nominal")
    assert krippendorff_alpha(words, "nominal") == pytest.approx(ref, rel=1e-12)
    assert math.isnan(krippendorff_alpha([[3, 3], [3, 3, None]], "interval"))  # one value throughout


def test_mean_ci_of_equal_values_is_a_point_not_nan():
    assert mean_ci([4.0, 4.0, 4.0]) == (4.0, 4.0, 4.0)
