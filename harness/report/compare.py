"""Paired comparisons between configurations on the same evaluation items: per-item values from the runs'
samples, paired tests (harness/report/stats.py), Holm-corrected p-values, and a verdict per pair.

Every eval metric whose recorded metadata (harness/report/meta.py) has a per-item key and a direction is
tested: McNemar's exact test when its scale is binary (per-item 0/1), a paired bootstrap or permutation
test of the mean per-item value otherwise. A base model is compared with the trained configurations that
started from the same weights (manifest.json's model sha256), never matched by name.
"""

from __future__ import annotations

import math

from harness.report.aggregate import Config, rank
from harness.report.fmt import _num, fmt_p
from harness.report.runs import Run
from harness.report.stats import holm, mcnemar_exact, paired_bootstrap, paired_permutation
from harness.run.metric_meta import POINTS, MetricMeta
from harness.run.record import read_samples


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


def tested_metrics(configs: list[Config], metas: dict[str, MetricMeta | None],
                   directions: dict[str, str | None]) -> list[tuple[str, str, MetricMeta, str]]:
    """(suite, metric, meta, direction) of every eval metric in the leaderboard with a per-item form and a direction."""
    have = {m for c in configs for m in c.cells}
    out = []
    for flat, meta in sorted(metas.items()):
        if meta and meta.per_item and directions.get(flat) and flat in have and not flat.startswith("summary."):
            suite, metric = flat.split(".", 1)
            out.append((suite, metric, meta, directions[flat]))
    return out


def compare(configs: list[Config], cache: SampleCache, args, metas: dict[str, MetricMeta | None],
            directions: dict[str, str | None]) -> tuple[list[dict], list[str]]:
    """Paired tests: each configuration against the best one per tested metric, and against the
    baseline(s) it was trained from; Holm-adjusted over every comparison shown."""
    notes = []
    trained = [c for c in configs if not c.baseline]
    bases = [c for c in configs if c.baseline]
    for base in bases:
        if not any(c.model_hash and c.model_hash == base.model_hash for c in trained):
            weights = f"weights sha256 {base.model_hash[:16]}" if base.model_hash else "no weights hash recorded"
            notes.append(f"{base.label} ({weights}) is the base of no trained configuration here (none started from the "
                         "same weights): shown for reference, not tested against.")
    out = []
    for suite, key, meta, d in tested_metrics(configs, metas, directions):
        m = f"{suite}.{key}"
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
            todo += [(c, base, "vs baseline") for c in ranked[: 1 + args.max_compare]
                     if c.model_hash and c.model_hash == base.model_hash]
        for a, b, kind_cmp in todo:
            xa, xb, n_items, n_pairs, unmatched = paired_values(cache, a, b, suite, meta.per_item)
            row = {"suite": suite, "metric": key, "flat_metric": m, "a": a.label, "b": b.label, "kind": kind_cmp,
                   "per_item": meta.per_item, "scale": meta.scale, "direction": d,
                   "n_items": n_items, "run_pairs": n_pairs, "n": len(xa), "unmatched": unmatched,
                   "delta": math.nan, "ci": [math.nan, math.nan], "p": math.nan}
            if len(xa) < 2:
                row["test"] = "none (no paired samples)"
            elif meta.scale == "binary" and set(xa) | set(xb) <= {0.0, 1.0}:
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
    scale = POINTS.get(row["scale"], 1.0)
    name = f"{row['suite']} {row['metric']}"
    if not math.isfinite(row["p"]):
        return f"{row['a']} vs {row['b']} on {name}: not tested ({row['test']})"
    delta = row["delta"] * scale
    better = (delta > 0) == (row["direction"] == "max")
    sig = row["p_holm"] < 0.05
    word = (("better" if better else "worse") + ", significant") if sig and delta != 0 else "not significant"
    seeds = f" × {row['run_pairs']} run pairs" if row["run_pairs"] > 1 else ""
    left_out = f"; {row['unmatched']} item scores without a partner left out" if row["unmatched"] else ""
    return (f"{row['a']} vs {row['b']} on {name}: {delta:+.2f} points, {word} "
            f"(p {fmt_p(row['p_holm'])} Holm-adjusted, raw p {fmt_p(row['p'])}, n = {row['n_items']} items{seeds}{left_out})")
