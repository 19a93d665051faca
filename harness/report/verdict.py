"""The report's headline: a single best configuration on the primary metric only where the evidence supports it.

The top-ranked configuration is named best only when it beats the runner-up with a significant paired test:
per-item tests (harness/report/compare.py, Holm-adjusted) for an eval metric whose runs record per-item
values, a paired t-test over seed pairs (stats.paired_t) for per-run values such as validation loss, with
"too few seeds to tell" below 3 seed pairs. Otherwise the report says "no reliable difference between
A, B (, C)", listing the top configuration and every one not significantly worse than it. `decide` is the
rule, a pure function; `primary_verdict` gathers its inputs from the configurations and comparisons.
"""
from __future__ import annotations

import math

from harness.report.aggregate import Config
from harness.report.fmt import fmt, fmt_p
from harness.report.stats import holm, paired_t
from harness.run.metric_meta import MetricMeta

ALPHA = 0.05
MIN_SEED_PAIRS = 3


def beaten(t: dict, direction: str) -> bool:
    """The tested configuration is significantly worse than the top one."""
    p, delta = t.get("p", math.nan), t.get("delta", math.nan)
    worse = delta < 0 if direction == "max" else delta > 0
    return math.isfinite(p) and p < ALPHA and math.isfinite(delta) and worse


def decide(primary: str, direction: str | None, ranked: list[str], tests: list[dict], basis: str,
           unit: tuple[float, str] = (1.0, "")) -> dict:
    """Who, if anyone, is the single best configuration on `primary`.

    ranked: the trained configurations' labels, best first by their mean on primary.
    tests: each configuration tested against ranked[0], in rank order: {"label", "delta" (its mean minus the
      top's, metric units), "p" (to judge by, already corrected for multiplicity), "n" (item or seed
      pairs), "test" (name)}. basis: "items" (per-item paired tests) or "seeds" (runs paired by seed).
    unit: (factor to the shown unit, its name), e.g. (100, " points") for accuracy.
    Returns {"status", "best", "tied", "runner_up", "basis", "test", "p", "n", "text"}; status is one of
    best | no reliable difference | too few seeds | direction unknown | single | none.
    """
    out = {"metric": primary, "status": "none", "best": None, "tied": [], "runner_up": None, "basis": basis,
           "test": "", "p": math.nan, "n": 0, "text": f"No trained configuration has {primary}."}
    if not ranked:
        return out
    top = ranked[0]
    if direction not in ("max", "min"):
        return {**out, "status": "direction unknown", "tied": list(ranked),
                "text": f"No best configuration named on {primary}: whether higher or lower is better is not recorded "
                        "(runs evaluated before eval.json carried metric_meta); --direction sets it."}
    if len(ranked) == 1:
        return {**out, "status": "single", "tied": [top],
                "text": f"Only one configuration has {primary} ({top}): nothing to compare it with."}
    by_label = {t["label"]: t for t in tests}
    runner = ranked[1]
    rt = by_label.get(runner, {"label": runner, "delta": math.nan, "p": math.nan, "n": 0, "test": "not tested"})
    tied = [top] + [lbl for lbl in ranked[1:] if lbl in by_label and not beaten(by_label[lbl], direction)]
    out.update(runner_up=runner, test=rt.get("test", ""), p=rt.get("p", math.nan), n=int(rt.get("n") or 0), tied=tied)
    factor, name = unit
    pairs = f"{out['n']} {'item' if basis == 'items' else 'seed'} pairs"
    evidence = f"{out['test']}, p {fmt_p(out['p'])}{' Holm-adjusted' if basis == 'items' else ''}, {pairs}"
    if basis == "seeds" and out["n"] < MIN_SEED_PAIRS:
        return {**out, "status": "too few seeds",
                "text": f"Too few seeds to tell on {primary}: {top} ranks first, but it shares {out['n']} seed(s) with "
                        f"the runner-up {runner}; a t-test on seed pairs needs at least {MIN_SEED_PAIRS}."}
    if beaten(rt, direction):
        return {**out, "status": "best", "best": top, "tied": [top],
                "text": f"Best on {primary}: {top}, ahead of the runner-up {runner} by "
                        f"{fmt(abs(rt['delta']) * factor)}{name} ({evidence})."}
    why = "not tested" if not math.isfinite(out["p"]) else "not significantly worse"
    return {**out, "status": "no reliable difference",
            "text": f"No reliable difference between {', '.join(tied)} on {primary}: {top} ranks first, but the runner-up "
                    f"{runner} is {why} ({evidence})."}


def seed_values(a: Config, b: Config, metric: str) -> tuple[list[float], list[float]]:
    """The two configurations' per-run values of `metric`, paired by seed (seeds only one side has are left out)."""
    theirs = {str(r.seed): r.metrics.get(metric, math.nan) for r in b.runs}
    xa, xb = [], []
    for r in a.runs:
        va, vb = r.metrics.get(metric, math.nan), theirs.get(str(r.seed), math.nan)
        if math.isfinite(va) and math.isfinite(vb):
            xa.append(va)
            xb.append(vb)
    return xa, xb


def seed_tests(ranked: list[Config], metric: str, max_compare: int) -> list[dict]:
    """ranked[1 : 1 + max_compare] against ranked[0] by a paired t-test over seeds; Holm over those with
    at least MIN_SEED_PAIRS pairs (the others are not tested)."""
    tests = []
    for c in ranked[1 : 1 + max_compare]:
        xa, xb = seed_values(c, ranked[0], metric)
        delta, p = paired_t(xa, xb) if len(xa) >= MIN_SEED_PAIRS else (math.nan, math.nan)
        tests.append({"label": c.label, "delta": delta, "p_raw": p, "n": len(xa), "test": "paired t-test on seed pairs"})
    for t, adj in zip(tests, holm([t["p_raw"] for t in tests])):
        t["p"] = adj
    return tests


def primary_verdict(ranked: list[Config], primary: str, direction: str | None, meta: MetricMeta | None,
                    comparisons: list[dict], max_compare: int) -> dict:
    """decide() for the trained configurations `ranked` (best first): per-item tests where the comparisons
    have paired items on the primary metric, seed-paired t-tests otherwise."""
    ranked = [c for c in ranked if math.isfinite(c.cells.get(primary, {}).get("mean", math.nan))]
    rows = [r for r in comparisons if r["flat_metric"] == primary and r["kind"] == "vs best"]
    if meta is not None and meta.per_item and any(r["n"] >= 2 for r in rows):
        basis = "items"
        tests = [{"label": r["a"], "delta": r["delta"], "p": r["p_holm"], "n": r["n"], "test": r["test"]} for r in rows]
    else:
        basis = "seeds"
        tests = seed_tests(ranked, primary, max_compare) if direction else []
    factor = meta.points if meta is not None else 1.0
    unit = " points" if meta is not None and meta.scale in ("binary", "fraction", "percent") else ""
    v = decide(primary, direction, [c.label for c in ranked], tests, basis, (factor, unit))
    v["tests"] = tests
    return v
