"""Runs -> configurations: seeds of one configuration grouped, means with confidence intervals, the primary
metric chosen, configurations ranked and the best value of each column marked.

A configuration is the runs' axes without the seed *and* what they started from: the data files' and base
weights' hashes (manifest.json). Runs with the same axes but other data files are another configuration,
labelled with the data hash, never averaged in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from harness.report.fmt import axis_label
from harness.report.runs import ReportError, Run, varying_axes
from harness.report.stats import mean_ci

PRIMARY_ORDER = ("bleu", "acc", "chrf", "rougeL", "word_perplexity", "loss")


# ------------------------------------------------------------------------------------ aggregate
@dataclass
class Config:
    key: str
    axes: dict
    runs: list[Run]
    baseline: bool
    label: str = ""
    cells: dict = field(default_factory=dict)  # metric -> {mean, lo, hi, n}
    data_hash: str = ""  # Run.data_hash of every run in it
    model_hash: str = ""  # Run.model_hash of every run in it


def aggregate(runs: list[Run], metrics: list[str]) -> list[Config]:
    groups: dict[tuple[bool, str, str, str], list[Run]] = {}
    for r in runs:
        if r.status in ("completed", "baseline"):
            groups.setdefault((r.status == "baseline", r.key, r.data_hash, r.model_hash), []).append(r)
    out = []
    for (is_base, key, data_hash, model_hash), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: (str(r.seed), str(r.path)))
        c = Config(json.dumps([key, data_hash, model_hash]), rs[0].axes, rs, is_base, data_hash=data_hash,
                   model_hash=model_hash)
        for m in metrics:
            mean, lo, hi, n = mean_ci([r.metrics.get(m, math.nan) for r in rs])
            if n:
                c.cells[m] = {"mean": mean, "lo": lo, "hi": hi, "n": n}
        out.append(c)
    varying = varying_axes([c.axes for c in out if not c.baseline])
    for c in out:
        c.label = ("base " + str(c.axes.get("model", ""))).strip() if c.baseline else axis_label(c.axes, varying)
    for label in {c.label for c in out}:  # same axes, other data files or weights: the hash tells them apart
        same = [c for c in out if c.label == label]
        if len(same) > 1:
            for c in same:
                which = "data" if len({x.data_hash for x in same}) > 1 else "weights"
                c.label += f" [{which} {(c.data_hash if which == 'data' else c.model_hash)[:8] or 'unrecorded'}]"
    return out


def choose_primary(metrics: list[str], requested: str, optuna_info: dict | None) -> str:
    if requested:
        if requested not in metrics:
            raise ReportError(f"--metric {requested!r} is in no completed run. Available: {', '.join(metrics)}")
        return requested
    for m in study_objectives(optuna_info):
        if m in metrics:
            return m
    for want in PRIMARY_ORDER:
        for m in metrics:
            if m.split(".", 1)[-1] == want and not m.startswith("summary."):
                return m
    return next((m for m in metrics if not m.startswith("summary.")), "summary.best_val_loss")


def study_objectives(optuna_info: dict | None) -> list[str]:
    """The study's objective metrics, in order: user attribute "objectives" (harness sweep), else
    "metric"/"objective"."""
    attrs = (optuna_info or {}).get("user_attrs", {})
    objs = attrs.get("objectives")
    if isinstance(objs, list):
        return [str(o) for o in objs]
    return [str(attrs[k]) for k in ("metric", "objective") if isinstance(attrs.get(k), str)]


def rank(configs: list[Config], metric: str, direction: str | None) -> list[Config]:
    """Baselines last; trained configurations best first on `metric` (by label when its direction is unknown)."""
    sign = -1.0 if direction == "max" else 1.0

    def k(c):
        m = c.cells.get(metric, {}).get("mean", math.nan)
        if direction is None:
            return (c.baseline, not math.isfinite(m), 0.0, c.label)
        return (c.baseline, not math.isfinite(m), sign * m if math.isfinite(m) else 0.0, c.label)

    return sorted(configs, key=k)


def best_marks(configs: list[Config], columns: list[str], directions: dict[str, str | None]) -> dict[str, float]:
    """Per column with a known direction, the best mean among trained configurations (baselines are
    references only), when exactly one configuration has it: a tie is not starred."""
    best = {}
    for m in columns:
        d = directions.get(m)
        vals = [c.cells[m]["mean"] for c in configs if not c.baseline and m in c.cells and math.isfinite(c.cells[m]["mean"])]
        if d and len(vals) > 1:
            top = max(vals) if d == "max" else min(vals)
            if vals.count(top) == 1:
                best[m] = top
    return best
