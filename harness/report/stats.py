"""Statistics for reports: pure functions, lists of numbers in, numbers out (no I/O, no torch).

Used by `harness report` (harness/report.py) to put confidence intervals on leaderboard means,
to test paired differences between configurations on the same evaluation items, to correct the
p-values of all comparisons shown for multiplicity, and to find the quality/cost Pareto front.

    mean_ci([0.41, 0.43, 0.40])                 # mean and 95% t interval over seeds
    paired_bootstrap(bleu_a, bleu_b, n=1000)    # delta, (lo, hi), p  -- BLEU/chrF/ROUGE per item
    mcnemar_exact(acc_a, acc_b)                 # exact two-sided p for paired 0/1 outcomes
    paired_permutation(a, b)                    # delta, p  -- sign-flip test on paired differences
    paired_t(loss_a, loss_b)                    # delta, p  -- per-run values paired by seed
    holm([0.01, 0.04, 0.03])                    # Holm-adjusted p-values, same order
    pareto_front([(loss, mem), ...], ("min", "min"))   # indices of non-dominated points

Which library computes what (tests/test_stats.py checks each against it or a textbook value):
mean_ci's t quantile is scipy.special.stdtrit (what scipy.stats.t.ppf calls); paired_bootstrap
resamples and takes percentiles with scipy.stats.bootstrap; mcnemar_exact is
scipy.stats.binomtest on the discordant pairs; paired_permutation's exact p is
scipy.stats.permutation_test; paired_t is scipy.stats.ttest_rel; holm is statsmodels' multipletests(method="holm"). Our own code
remains for the bootstrap p-value, the Monte Carlo sign-flip test and the Pareto front (each
says why). scipy.stats and statsmodels are imported inside the functions that use them, so
`import harness.stats` stays light (numpy only).

Every random procedure takes a seed, so the same inputs always give the same numbers.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

__all__ = ["mean_ci", "paired_bootstrap", "mcnemar_exact", "paired_permutation", "paired_t", "holm", "pareto_front"]


def _finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and two-sided t-distribution confidence interval: (mean, lo, hi, n).

    Non-finite values are ignored (n counts the finite ones). With n < 2 the interval is
    undefined and returned as (nan, nan); with n == 0 the mean is nan too.
    """
    # scipy.stats.t.interval computes the same (its t.ppf is this stdtrit), but scipy.stats takes ~1 s to import
    # and every report calls mean_ci; scipy.special is a fraction of that.
    from scipy.special import stdtrit  # Student-t quantile

    x = _finite(values)
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    m = float(x.mean())
    if n < 2:
        return m, math.nan, math.nan, n
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    half = float(stdtrit(n - 1, 0.5 + confidence / 2.0)) * sem
    return m, m - half, m + half, n


def _paired(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """a - b as an array; both must have the same length and be finite (a paired test cannot
    silently drop one side of a pair)."""
    xa = np.asarray([float(v) for v in a], dtype=float)
    xb = np.asarray([float(v) for v in b], dtype=float)
    if xa.shape != xb.shape:
        raise ValueError(f"paired samples need equal lengths, got {xa.size} and {xb.size}")
    d = xa - xb
    if not np.all(np.isfinite(d)):
        bad = int(np.sum(~np.isfinite(d)))
        raise ValueError(f"{bad} paired differences are not finite (nan/inf in the per-item scores); remove those items first")
    return d


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, tuple[float, float], float]:
    """Paired bootstrap of the difference in means, mean(a) - mean(b), over items.

    Items are resampled with replacement (the same indices for a and b) `n` times by
    scipy.stats.bootstrap (method="percentile", rng=default_rng(seed)). Returns
    (delta, (lo, hi), p): the observed difference, its percentile confidence interval, and a
    two-sided p-value for "no difference" from the bootstrap standard error (normal
    approximation, p = erfc(|delta| / (se * sqrt 2))). Unlike the share of resamples crossing
    zero, this p is not floored at 1/(n + 1), so it survives a multiplicity correction over many
    comparisons. A zero-variance difference gives p = 1 if delta == 0 else 0.
    """
    d = _paired(a, b)
    if d.size == 0:
        return math.nan, (math.nan, math.nan), math.nan
    delta = float(d.mean())
    if d.size == 1:  # scipy.stats.bootstrap needs two items; every resample of one item is that item
        return delta, (delta, delta), 1.0 if delta == 0.0 else 0.0
    from scipy.stats import bootstrap

    # resamples are rows of default_rng(seed).integers(0, items, (batch, items)) and the interval
    # is the linear-interpolation percentile of their means; `batch` bounds memory for many items
    with warnings.catch_warnings():
        if n < 2:  # scipy's standard error (ddof=1) of one resample warns; se is 0 then, below
            warnings.simplefilter("ignore", RuntimeWarning)
        res = bootstrap(
            (d,), np.mean, n_resamples=n, batch=max(1, min(n, 2_000_000 // d.size)), vectorized=True,
            method="percentile", confidence_level=confidence, rng=np.random.default_rng(seed),
        )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    # the p-value is ours: scipy.stats.bootstrap gives an interval and a standard error, not a test
    se = float(res.standard_error) if n > 1 else 0.0
    if se == 0.0:
        return delta, (lo, hi), 1.0 if delta == 0.0 else 0.0
    p = math.erfc(abs(delta) / (se * math.sqrt(2.0)))
    return delta, (lo, hi), float(min(1.0, p))


def mcnemar_exact(a_correct: Sequence[int | bool], b_correct: Sequence[int | bool]) -> float:
    """Exact (binomial) two-sided McNemar test for paired 0/1 outcomes.

    Only discordant pairs count: b = a right and b wrong, c = a wrong and b right;
    p = min(1, 2 * P(X <= min(b, c))) with X ~ Binomial(b + c, 1/2), which is
    scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue. No discordant pairs: p = 1.
    """
    xa = np.asarray([int(v) for v in a_correct])
    xb = np.asarray([int(v) for v in b_correct])
    if xa.shape != xb.shape:
        raise ValueError(f"paired outcomes need equal lengths, got {xa.size} and {xb.size}")
    for name, x in (("a_correct", xa), ("b_correct", xb)):
        if x.size and not np.all((x == 0) | (x == 1)):
            raise ValueError(f"{name} must hold 0/1 (or booleans); got values {sorted(set(x.tolist()))[:5]}")
    b = int(np.sum((xa == 1) & (xb == 0)))
    c = int(np.sum((xa == 0) & (xb == 1)))
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(min(1.0, binomtest(min(b, c), b + c, 0.5).pvalue))


def paired_permutation(
    a: Sequence[float], b: Sequence[float], n: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Paired permutation (sign-flip) test of mean(a) - mean(b): returns (delta, two-sided p).

    Under the null each paired difference is equally likely to have either sign. When 2**items
    is at most `n` every sign pattern is enumerated: the exact p, share of patterns with
    |mean| >= |delta|, computed by scipy.stats.permutation_test. Otherwise `n` random patterns are
    drawn and p = (1 + count) / (n + 1), count = random patterns with |mean| >= |delta|.
    """
    d = _paired(a, b)
    if d.size == 0:
        return math.nan, math.nan
    delta = float(d.mean())
    if 2 ** d.size <= n:
        if d.size == 1:  # permutation_test needs two items; both signs of one item give |mean| = |delta|
            return delta, 1.0
        from scipy.stats import permutation_test

        res = permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                               n_resamples=2 ** d.size, batch=max(1, 2_000_000 // d.size), vectorized=True,
                               alternative="two-sided")
        return delta, float(res.pvalue)
    # Ours when sampling: permutation_test's random branch draws other patterns and reports 2 x the
    # smaller one-sided p, so the seeded p-values in reports would change; this keeps them.
    observed = abs(delta) - 1e-12
    rng = np.random.default_rng(seed)
    count = 0
    chunk = max(1, min(n, 2_000_000 // max(1, d.size)))
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(k, d.size))
        count += int(np.sum(np.abs((signs * d).mean(axis=1)) >= observed))
    return delta, float(min(1.0, (1 + count) / (n + 1)))


def paired_t(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Student's paired t-test of mean(a - b) = 0: returns (delta, two-sided p), scipy.stats.ttest_rel.

    For per-run values (validation loss, a corpus metric without per-item values) paired by seed. Fewer
    than two pairs: p is nan. Differences all equal up to rounding (zero variance, where scipy gives nan or
    warns of catastrophic cancellation): p = 1 when they are 0, else 0.
    """
    d = _paired(a, b)
    if d.size == 0:
        return math.nan, math.nan
    delta = float(d.mean())
    if d.size < 2:
        return delta, math.nan
    if float(np.ptp(d)) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return delta, 1.0 if delta == 0.0 else 0.0
    from scipy.stats import ttest_rel

    return delta, float(ttest_rel(np.asarray(a, dtype=float), np.asarray(b, dtype=float)).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values, in the order given.

    Sorted ascending, the i-th smallest (0-based) is multiplied by (m - i), running maxima keep
    the adjusted values monotone, and everything is capped at 1: statsmodels'
    multipletests(method="holm"). NaN p-values (tests that could not run) stay NaN and do not
    count towards m.
    """
    p = np.asarray([float(v) for v in pvalues], dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.isfinite(p)
    if not ok.any():
        return out.tolist()
    from statsmodels.stats.multitest import multipletests

    out[ok] = multipletests(p[ok], method="holm")[1]
    return out.tolist()


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices (ascending) of the points no other point dominates.

    `directions` gives "min" or "max" per coordinate. A point dominates another when it is at
    least as good in every coordinate and strictly better in one. Points with a non-finite
    coordinate are never on the front. Duplicates of a front point are all on the front.
    """
    # Ours: none of scipy, statsmodels or scikit-learn has a non-dominated (Pareto) filter.
    if any(d not in ("min", "max") for d in directions):
        raise ValueError(f"directions must be 'min' or 'max' per coordinate, got {list(directions)}")
    if len(points) == 0:
        return []
    x = np.asarray([[float(v) for v in pt] for pt in points], dtype=float)
    if x.ndim != 2 or x.shape[1] != len(directions):
        raise ValueError(f"each point needs {len(directions)} coordinates (one per direction), got shape {x.shape}")
    sign = np.array([1.0 if d == "min" else -1.0 for d in directions])
    y = x * sign  # now every coordinate is "lower is better"
    finite = np.all(np.isfinite(y), axis=1)
    idx = np.flatnonzero(finite)
    z = y[idx]
    front = []
    for i, row in enumerate(z):
        le = np.all(z <= row, axis=1)
        lt = np.any(z < row, axis=1)
        if not np.any(le & lt):
            front.append(int(idx[i]))
    return front
