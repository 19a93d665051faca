"""Rating statistics as pure functions: Elo, Bradley-Terry, Wilson intervals, mean CIs, agreement.

Numbers in, numbers out; no file I/O. Used by `harness human import|elo` (harness.human) and by the
QLoRA Elo reproduction (`python -m harness.recipes.qlora_elo`).

    elo_sequence(a, b, score_a, n_players)               one pass over the matches in the given order
    elo_orderings(a, b, score_a, n_players, orderings=10_000)   the same over random orderings (numpy,
                                                        all orderings advance one match at a time)
    bradley_terry(wins)                                  MLE strengths (choix.ilsr_pairwise_dense)
    bradley_terry_bootstrap(...)                         the same on resamples (ours: Hunter's MM, batched)
    wilson_interval(successes, n)                        binomial proportion interval (statsmodels)
    mean_ci(values)                                      mean with a Student-t interval (scipy.stats.t)
    cohen_kappa(a, b)                                    (weighted) kappa (statsmodels' cohens_kappa)
    krippendorff_alpha(units, level)                     agreement with missing data (krippendorff.alpha)

Matches are encoded as integer player indices `a`, `b` and `score_a` in {1, 0.5, 0} (a won, tie,
b won). A tie counts as half a win for each side everywhere in this module.

Elo and the batched Bradley-Terry bootstrap are our own code (each says why); tests/test_ratings.py
checks every function against its library or a published value. The libraries (scipy.stats,
statsmodels, choix, krippendorff) are imported inside the functions that use them.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

ELO_SCALE = 400.0


# ------------------------------------------------------------------------------------------ Elo
def _check_matches(a, b, score_a, n_players: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    s = np.asarray(score_a, dtype=np.float64)
    if not (a.shape == b.shape == s.shape) or a.ndim != 1:
        raise ValueError(f"a, b and score_a must be 1-D and the same length; got {a.shape}, {b.shape}, {s.shape}")
    if a.size and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= n_players):
        raise ValueError(f"player indices must lie in [0, {n_players}); got {min(a.min(), b.min())}..{max(a.max(), b.max())}")
    if np.any(a == b):
        raise ValueError(f"a player cannot play itself (match {int(np.argmax(a == b))})")
    if not np.all(np.isin(s, (0.0, 0.5, 1.0))):
        raise ValueError("score_a must be 1 (a won), 0.5 (tie) or 0 (b won)")
    return a, b, s


def elo_expected(r_a, r_b):
    """Expected score of a against b: 1 / (1 + 10^((r_b - r_a) / 400))."""
    return 1.0 / (1.0 + np.power(10.0, (np.asarray(r_b) - np.asarray(r_a)) / ELO_SCALE))


def elo_sequence(a, b, score_a, n_players: int, k: float = 32.0, initial: float = 1000.0) -> np.ndarray:
    """Final ratings after playing the matches once, in the given order (classic online Elo)."""
    # Ours: none of the pinned statistics libraries has online Elo updates.
    a, b, s = _check_matches(a, b, score_a, n_players)
    r = np.full(n_players, float(initial))
    for i, j, sc in zip(a, b, s):
        delta = k * (sc - elo_expected(r[i], r[j]))
        r[i] += delta
        r[j] -= delta
    return r


def elo_orderings(a, b, score_a, n_players: int, k: float = 32.0, initial: float = 1000.0,
                  orderings: int = 10_000, seed: int = 0, chunk: int = 1_000) -> np.ndarray:
    """Final Elo ratings for `orderings` random permutations of the matches: shape (orderings, n_players).

    Vectorised across orderings: at step t every ordering plays its own t-th match, so the Python
    loop runs len(matches) times per chunk of orderings, not len(matches) * orderings times.
    Ordering o is the same permutation for a given seed whatever the chunk size.
    """
    # Ours: no pinned library rates Elo over many orderings, let alone vectorised across them.
    a, b, s = _check_matches(a, b, score_a, n_players)
    if orderings < 1:
        raise ValueError(f"orderings must be >= 1, got {orderings}")
    n = a.size
    out = np.empty((orderings, n_players))
    rng = np.random.default_rng(seed)
    c = math.log(10.0) / ELO_SCALE
    for start in range(0, orderings, chunk):
        m = min(chunk, orderings - start)
        # row o of perm is ordering start+o; rng.permuted draws row by row, so chunking does not change it
        perm = rng.permuted(np.tile(np.arange(n, dtype=np.int32), (m, 1)), axis=1).T  # (n, m)
        offset = (np.arange(m, dtype=np.int64) * n_players)[None, :]
        idt = np.int32 if m * n_players < 2**31 else np.int64
        fa = np.ascontiguousarray(a[perm] + offset, dtype=idt)  # flat index of player a in ordering o at step t
        fb = np.ascontiguousarray(b[perm] + offset, dtype=idt)
        ks = np.ascontiguousarray(k * s[perm])
        del perm
        r = np.full(m * n_players, float(initial))  # ratings, ordering-major
        tmp = np.empty(m)
        for t in range(n):
            ia, ib = fa[t], fb[t]
            ra, rb = r[ia], r[ib]
            np.subtract(rb, ra, out=tmp)
            tmp *= c
            np.exp(tmp, out=tmp)
            tmp += 1.0
            np.divide(k, tmp, out=tmp)  # k * expected score of a
            delta = ks[t] - tmp
            r[ia] = ra + delta
            r[ib] = rb - delta
        out[start:start + m] = r.reshape(m, n_players)
    return out


def summarize_samples(samples: np.ndarray, confidence: float = 0.95) -> dict[str, np.ndarray]:
    """Per column of (draws, players): mean, sd, the CI of the mean, and the central percentile interval."""
    samples = np.asarray(samples, dtype=np.float64)
    n = samples.shape[0]
    mean = samples.mean(axis=0)
    sd = samples.std(axis=0, ddof=1) if n > 1 else np.full(samples.shape[1], math.nan)
    z = _z(confidence)
    half = z * sd / math.sqrt(n) if n > 1 else np.full(samples.shape[1], math.nan)
    q = (1 - confidence) / 2
    return {
        "mean": mean, "sd": sd, "mean_ci_half": half,
        "lo": np.quantile(samples, q, axis=0), "hi": np.quantile(samples, 1 - q, axis=0),
    }


def _z(confidence: float) -> float:
    from scipy.stats import norm

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return float(norm.ppf(0.5 + confidence / 2))


# ------------------------------------------------------------------------------- Bradley-Terry
def win_matrix(a, b, score_a, n_players: int) -> np.ndarray:
    """W[i, j] = wins of i over j, a tie adding 0.5 to both W[i, j] and W[j, i]."""
    a, b, s = _check_matches(a, b, score_a, n_players)
    w = np.zeros((n_players, n_players))
    np.add.at(w, (a, b), s)
    np.add.at(w, (b, a), 1.0 - s)
    return w


def bt_mle_exists(wins: np.ndarray) -> bool:
    """The Bradley-Terry MLE exists iff the 'beat at least once' graph is strongly connected (Hunter 2004)."""
    from scipy.sparse.csgraph import connected_components

    n_comp, _ = connected_components(np.asarray(wins) > 0, directed=True, connection="strong")
    return n_comp == 1


def bradley_terry(wins: np.ndarray, prior: float = 0.0, max_iter: int = 10_000, tol: float = 1e-10) -> np.ndarray:
    """Bradley-Terry strengths p (geometric mean 1) maximising prod p_i/(p_i+p_j) over the wins.

    wins: (..., m, m) matrix or a batch of them; W[i, j] = times i beat j (ties as 0.5 each way).
    prior: virtual ties added to every pair (prior/2 each way), which makes the estimate exist
    when some player never wins or never loses; 0 gives the plain MLE and raises if it does not exist.
    One matrix: choix.ilsr_pairwise_dense on W plus the virtual ties (its ML estimate, exp of its
    centred log-strengths); tol bounds the L1 change of log-strengths between its iterations.
    A batch: Hunter's MM update p_i <- W_i / sum_j N_ij / (p_i + p_j) on all matrices at once,
    stopping when no strength moves by tol.
    """
    w = np.array(wins, dtype=np.float64)
    m = w.shape[-1]
    if w.shape[-2] != m:
        raise ValueError(f"wins must be square in its last two axes, got {w.shape}")
    eye = np.eye(m, dtype=bool)
    if prior:
        # choix's own `alpha` is a different regulariser (a constant rate in its Markov chain), so the
        # virtual ties go into the matrix and choix fits a plain MLE
        w = w + np.where(eye, 0.0, prior / 2.0)
    elif w.ndim == 2 and not bt_mle_exists(w):
        raise ValueError(
            "the Bradley-Terry MLE does not exist for these comparisons: some player never wins or never "
            "loses against the rest (the win graph is not strongly connected). Pass prior > 0 (virtual ties)."
        )
    if w.ndim == 2:
        import choix

        return np.exp(choix.ilsr_pairwise_dense(w, max_iter=max_iter, tol=tol))
    # Ours for a batch (bootstrap resamples): choix fits one matrix per call, ~7x slower over 1000 resamples.
    n = w + np.swapaxes(w, -1, -2)
    total = w.sum(axis=-1)
    p = np.ones(w.shape[:-1])
    for _ in range(max_iter):
        denom = (n / (p[..., :, None] + p[..., None, :])).sum(axis=-1)
        new = total / denom
        new = new / np.exp(np.log(np.maximum(new, 1e-300)).mean(axis=-1, keepdims=True))
        done = np.max(np.abs(new - p)) < tol
        p = new
        if done:
            break
    return p


def bt_to_elo_scale(p: np.ndarray, base: float = 1000.0) -> np.ndarray:
    """Strengths on the Elo scale: 400 log10(p) + base (so a 400-point gap is 10:1 odds)."""
    return ELO_SCALE * np.log10(np.maximum(np.asarray(p), 1e-300)) + base


def bradley_terry_bootstrap(a, b, score_a, n_players: int, resamples: int = 1000, seed: int = 0,
                            prior: float = 1.0) -> np.ndarray:
    """BT strengths on resamples of the matches (with replacement): shape (resamples, n_players).

    All resamples are fitted at once by bradley_terry's batched MM (the single fits use choix; the
    tests check that both give the same strengths)."""
    a, b, s = _check_matches(a, b, score_a, n_players)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(resamples, a.size))
    batch = np.repeat(np.arange(resamples), a.size)
    ia, ib, si = a[idx].ravel(), b[idx].ravel(), s[idx].ravel()
    w = np.zeros((resamples, n_players, n_players))
    np.add.at(w, (batch, ia, ib), si)
    np.add.at(w, (batch, ib, ia), 1.0 - si)
    return bradley_terry(w, prior=prior, max_iter=2000, tol=1e-8)


# ---------------------------------------------------------------------------------- intervals
def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Newcombe 1998, method 3):
    statsmodels' proportion_confint(method="wilson"), which also takes fractional successes."""
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(successes, n, alpha=1.0 - confidence, method="wilson")
    return (max(0.0, float(lo)), min(1.0, float(hi)))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi) with a Student-t interval (scipy.stats.t.interval); (x, nan, nan) for a single value."""
    from scipy.stats import t

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if x.size == 1:
        return (mean, math.nan, math.nan)
    scale = x.std(ddof=1) / math.sqrt(x.size)
    if scale == 0:  # every value equal: a zero-width interval (scipy would give nan for scale 0)
        return (mean, mean, mean)
    lo, hi = t.interval(confidence, x.size - 1, loc=mean, scale=scale)
    return (mean, float(lo), float(hi))


# ---------------------------------------------------------------------------------- agreement
def cohen_kappa(a: Sequence, b: Sequence, weights: str | None = None, labels: Sequence | None = None) -> float:
    """Cohen's kappa between two raters over the same items; weights None | 'linear' | 'quadratic'
    (weighted kappa needs ordered numeric labels; disagreement weights are |x - y| or (x - y)^2 of
    the label values). Computed by statsmodels' cohens_kappa from the contingency table: unlike
    scikit-learn's cohen_kappa_score, which weights by label positions, it takes the label values,
    so unevenly spaced labels (1, 2, 5) weigh as their values say."""
    if len(a) != len(b):
        raise ValueError(f"both raters must rate the same items: {len(a)} vs {len(b)} ratings")
    if not a:
        return math.nan
    if weights not in (None, "linear", "quadratic"):
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")
    cats = list(labels) if labels is not None else sorted(set(a) | set(b), key=lambda v: (str(type(v)), v))
    index = {c: i for i, c in enumerate(cats)}
    k = len(cats)
    table = np.zeros((k, k))
    for x, y in zip(a, b):
        table[index[x], index[y]] += 1
    # kappa is undefined when chance disagreement is 0 (both raters used one and the same category
    # throughout); statsmodels would divide by zero there
    expected = np.outer(table.sum(axis=1), table.sum(axis=0))
    vals = np.asarray(cats, dtype=np.float64) if weights else None
    if weights is None:
        chance = (expected * (1.0 - np.eye(k))).sum()
    else:
        diff = np.abs(vals[:, None] - vals[None, :])
        chance = (expected * (diff if weights == "linear" else diff ** 2)).sum()
    if chance == 0:
        return math.nan
    from statsmodels.stats.inter_rater import cohens_kappa

    if weights is None:
        return float(cohens_kappa(table, return_results=False))
    return float(cohens_kappa(table, weights=vals, wt=weights, return_results=False))


KRIPPENDORFF_LEVELS = ("nominal", "ordinal", "interval", "ratio")


def krippendorff_alpha(units: Sequence[Sequence], level: str = "nominal") -> float:
    """Krippendorff's alpha from units: each unit is the list of values its raters gave (None = missing).

    Coincidence-matrix form (Krippendorff 2011, "Computing Krippendorff's alpha-reliability"):
    alpha = 1 - (n - 1) * sum o_ck d2_ck / sum n_c n_k d2_ck over pairable values, computed by
    krippendorff.alpha from the per-unit value counts. Units need not share raters, and values
    may be any sortable labels (interval and ratio levels need numbers). nan when nothing is
    pairable or no pairable values differ.
    """
    if level not in KRIPPENDORFF_LEVELS:
        raise ValueError(f"level must be one of {KRIPPENDORFF_LEVELS}, got {level!r}")
    clean = [[v for v in u if v is not None and not (isinstance(v, float) and math.isnan(v))] for u in units]
    clean = [u for u in clean if len(u) >= 2]  # only pairable values count
    if not clean:
        return math.nan
    cats = sorted({v for u in clean for v in u})
    if len(cats) < 2:
        return math.nan  # a single value used throughout: no variation to agree on
    index = {c: i for i, c in enumerate(cats)}
    counts = np.zeros((len(clean), len(cats)))  # value_counts: how many raters gave unit u value c
    for r, u in enumerate(clean):
        for v in u:
            counts[r, index[v]] += 1
    import krippendorff

    # columns in sorted order carry the ordinal ranks; interval and ratio distances need the values
    domain = np.asarray(cats, dtype=np.float64) if level in ("interval", "ratio") else None
    with np.errstate(invalid="ignore", divide="ignore"):  # ratio level with only v and -v: 0/0 -> nan
        return float(krippendorff.alpha(value_counts=counts, value_domain=domain, level_of_measurement=level))
