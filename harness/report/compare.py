"""Paired comparisons between configurations on the same evaluation items: per-item values from the runs'
samples, paired tests (harness/report/stats.py), Holm-corrected p-values, and a verdict per pair.
"""

from __future__ import annotations

import math

from harness.report.aggregate import Config, rank
from harness.report.fmt import BINARY, PERCENT, _num, fmt_p, metric_direction
from harness.report.runs import Run
from harness.report.stats import holm, mcnemar_exact, paired_bootstrap, paired_permutation
from harness.run.record import read_samples

PAIRED = {"lm_eval": ("acc",), "generation": ("bleu", "chrf", "rougeL")}  # per-item keys tested per suite kind


# ------------------------------------------------------------------------------ paired statistics
class SampleCache:
    """Per-item scores read once per (run, suite) and indexed by item id per key."""

    def __init__(self):
        self._rows: dict[tuple[str, str], list[dict]] = {}
        self._by_key: dict[tuple[str, str, str], dict[str, float]] = {}

    def get(self, run: Run, suite: str) -> list[dict]:
        k = (str(run.path), suite)
        if k not in self._rows:
            self._rows[k] = read_samples(run.path, suite)
        return self._rows[k]

    def scores(self, run: Run, suite: str, key: str) -> dict[str, float]:
        k = (str(run.path), suite, key)
        if k not in self._by_key:
            self._by_key[k] = {str(s.get("id")): _num(s.get(key)) for s in self.get(run, suite) if key in s}
        return self._by_key[k]


def _run_pairs(a: list[Run], b: list[Run]) -> list[tuple[Run, Run]]:
    """Which runs to pair: a single run on either side pairs with every run of the other (a baseline
    is deterministic); otherwise runs with the same seed; with no common seed, in seed order."""
    if len(a) == 1 or len(b) == 1:
        return [(x, y) for x in a for y in b]
    bs = {str(r.seed): r for r in b}
    common = [(x, bs[str(x.seed)]) for x in a if str(x.seed) in bs]
    return common or list(zip(a, b))


def paired_values(cache: SampleCache, a: Config, b: Config, suite: str, key: str):
    xa, xb, items, unmatched, pairs = [], [], set(), 0, _run_pairs(a.runs, b.runs)
    for ra, rb in pairs:
        sa, sb = cache.scores(ra, suite, key), cache.scores(rb, suite, key)
        common = sorted(sa.keys() & sb.keys())
        unmatched += len(sa.keys() ^ sb.keys())
        for i in common:
            if math.isfinite(sa[i]) and math.isfinite(sb[i]):
                xa.append(sa[i])
                xb.append(sb[i])
                items.add(i)
            else:
                unmatched += 1
    return xa, xb, len(items), len(pairs), unmatched


def compare(configs: list[Config], cache: SampleCache, args) -> tuple[list[dict], list[str]]:
    """Paired tests: each configuration against the best one per tested metric, and against the
    baseline(s); Holm-adjusted over every comparison shown."""
    notes = []
    trained = [c for c in configs if not c.baseline]
    bases = [c for c in configs if c.baseline]
    suites = {}
    for c in configs:
        for r in c.runs:
            for s, res in sorted((r.eval.get("suites") or {}).items()):
                for key in PAIRED.get(res.get("kind", ""), ()):
                    if key in (res.get("metrics") or {}):
                        suites.setdefault((s, key), res.get("kind"))
    out = []
    for (suite, key), kind in sorted(suites.items()):
        m = f"{suite}.{key}"
        d = metric_direction(m) or "max"
        ranked = [c for c in rank(trained, m, d) if m in c.cells]
        if not ranked:
            continue
        best = ranked[0]
        shown = ranked[1 : 1 + args.max_compare]
        if len(ranked) - 1 > args.max_compare:
            notes.append(f"{m}: compared the top {args.max_compare} of {len(ranked) - 1} configurations with the best; "
                         f"raise --max-compare to test more (all are in the leaderboard).")
        todo = [(c, best, "vs best") for c in shown]
        for base in bases:
            same_model = [c for c in ranked[: 1 + args.max_compare] if c.axes.get("model") == base.axes.get("model")]
            todo += [(c, base, "vs baseline") for c in (same_model or ranked[: 1 + args.max_compare])]
        for a, b, kind_cmp in todo:
            xa, xb, n_items, n_pairs, unmatched = paired_values(cache, a, b, suite, key)
            row = {"suite": suite, "metric": key, "flat_metric": m, "a": a.label, "b": b.label, "kind": kind_cmp,
                   "n_items": n_items, "run_pairs": n_pairs, "n": len(xa), "unmatched": unmatched,
                   "delta": math.nan, "ci": [math.nan, math.nan], "p": math.nan}
            if len(xa) < 2:
                row["test"] = "none (no paired samples)"
            elif key in BINARY and set(xa) | set(xb) <= {0.0, 1.0}:
                row.update(test="McNemar exact", delta=sum(xa) / len(xa) - sum(xb) / len(xb), p=mcnemar_exact(xa, xb))
            elif args.paired_test == "permutation":
                delta, p = paired_permutation(xa, xb, n=args.permutations, seed=args.seed)
                row.update(test="paired permutation", delta=delta, p=p)
            else:
                delta, ci, p = paired_bootstrap(xa, xb, n=args.bootstrap, seed=args.seed)
                row.update(test="paired bootstrap (mean of per-item scores)", delta=delta, ci=list(ci), p=p)
            out.append(row)
    for row, adj in zip(out, holm([r["p"] for r in out])):
        row["p_holm"] = adj
        row["verdict"] = verdict(row)
    return out, notes


def verdict(row: dict) -> str:
    scale = 100.0 if row["metric"] in PERCENT else 1.0
    name = f"{row['suite']} {row['metric']}"
    if not math.isfinite(row["p"]):
        return f"{row['a']} vs {row['b']} on {name}: not tested ({row['test']})"
    delta = row["delta"] * scale
    d = metric_direction(row["flat_metric"]) or "max"
    better = (delta > 0) == (d == "max")
    sig = row["p_holm"] < 0.05
    word = (("better" if better else "worse") + ", significant") if sig and delta != 0 else "not significant"
    seeds = f" × {row['run_pairs']} run pairs" if row["run_pairs"] > 1 else ""
    left_out = f"; {row['unmatched']} item scores without a partner left out" if row["unmatched"] else ""
    return (f"{row['a']} vs {row['b']} on {name}: {delta:+.2f} points, {word} "
            f"(p {fmt_p(row['p_holm'])} Holm-adjusted, raw p {fmt_p(row['p'])}, n = {row['n_items']} items{seeds}{left_out})")
