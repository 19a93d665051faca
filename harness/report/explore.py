"""The data behind report.html's interactive parts (`harness report`), as plain values: the leaderboard's
column groups and cells (sortable, filterable, collapsible), the hover-and-zoom plots, and the per-example
view of two configurations. build.py calls `run_index`, `scatter`, `history`, `panels` and `examples` (they
need the runs and their samples); html.py calls `leaderboard` (presentation only). The page embeds the `explore` part of the report model as
JSON in a `<script type="application/json">` block (Jinja2's `tojson`: `<`, `>`, `&`, `'` escaped) and its
script (templates/report.js.j2) builds the plots and the per-example view with textContent only.

Numbers are formatted here, with the same scale-aware rules as the tables (fmt.fmt_metric), so the page
shows one spelling of each value; the raw values travel beside them for sorting and axes.
"""

from __future__ import annotations

import math

from harness.report.aggregate import Config
from harness.report.compare import SampleCache
from harness.report.fmt import _num, cell_text, fmt, fmt_metric
from harness.report.runs import Run
from harness.run.metric_meta import MetricMeta

MAX_COLUMNS = 12  # above this many leaderboard columns, groups start collapsed (all but the primary metric's)
TIME = ("summary.train_time_s", "summary.tokens_per_s")  # cost columns shown in their own "time" group
EXAMPLE_CONFIGS = 10  # top-ranked trained configurations in the per-example view (plus every base model)
EXAMPLE_ITEMS = 100  # items per suite embedded: those on which the shown configurations disagree most
EXAMPLE_CHARS = 1000  # characters kept of each prompt, output and reference
MAX_CATEGORIES = 30  # a text axis with at most this many values gets a filter menu


def _sort_value(v) -> str:
    """What the page sorts a cell by: the full-precision number, the text, or "" (missing: sorted last)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{float(v):.12g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _r(v: float) -> float:
    """A coordinate for drawing: 6 significant digits are plenty on a screen (the hover shows the formatted value)."""
    return float(f"{v:.6g}")


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None)


# ------------------------------------------------------------------------------ the leaderboard
def _text_of(v) -> str:
    return "—" if v is None else fmt(v) if isinstance(v, float) else str(v)


def _col(key: str, head: str, direction: str | None, kind: str = "num", filter_menu: bool = False) -> dict:
    return {"key": key, "head": head, "dir": direction, "type": kind, "filter": filter_menu}


def leaderboard(m: dict, varying: list[str], cost_headers: dict[str, str]) -> dict:
    """Column groups and rows of report.html's leaderboard.

    {"groups": [{id, title, collapsed, cols: [{key, head, dir, type (num | text), lead, filter}]}],
     "rows": [{label, baseline, n, cells: [{text, ci, v, best, num, g, lead}]}]}
    Groups: the varying axes (a text axis with a filter menu first); one per eval suite (the primary metric's
    first, the primary column first); training (summary.* quality); cost (peak memory first); time. Above
    MAX_COLUMNS columns every group but the primary metric's starts collapsed: it shows its lead (first)
    column only. A cell's text is the mean, its ci "± half-width" (and "(n=k)" when only k of the row's runs
    have the value), v the value the page sorts by."""
    configs: list[Config] = m["configs"]
    dirs, scales = m["directions"], m["scales"]
    groups: list[dict] = []
    if varying:
        cols = []
        for k in varying:
            vals = [c.axes.get(k) for c in configs]
            num, distinct = _numeric(vals), {str(v) for v in vals if v is not None}
            menu = not num and 1 < len(distinct) <= MAX_CATEGORIES
            cols.append(_col(f"axes.{k}", k, None, "num" if num else "text", menu))
        groups.append({"title": "axes", "cols": sorted(cols, key=lambda c: not c["filter"])})
    by_suite: dict[str, list[str]] = {}
    for q in m["quality"]:
        by_suite.setdefault("training" if q.startswith("summary.") else q.split(".", 1)[0], []).append(q)
    for suite, qs in by_suite.items():
        groups.append({"title": suite, "cols": [_col(q, q.split(".", 1)[1], dirs.get(q)) for q in qs]})
    cost = sorted((k for k in m["cost"] if k not in TIME), key=lambda k: k != "summary.peak_memory_mb")
    for title, keys in (("cost", cost), ("time", [k for k in m["cost"] if k in TIME])):
        if keys:
            groups.append({"title": title, "cols": [_col(k, cost_headers.get(k, k), dirs.get(k)) for k in keys]})
    total = 2 + sum(len(g["cols"]) for g in groups)
    for i, g in enumerate(groups):
        keys = [c["key"] for c in g["cols"]]
        g.update(id=f"g{i}", collapsed=total > MAX_COLUMNS and m["primary"] not in keys and len(keys) > 1)
        for j, c in enumerate(g["cols"]):
            c["lead"] = j == 0
    rows = []
    for c in configs:
        n, cells = len(c.runs), []
        for g in groups:
            for col in g["cols"]:
                k, where = col["key"], {"g": g["id"], "lead": col["lead"]}
                if k.startswith("axes."):
                    v = c.axes.get(k[5:])
                    cells.append({"text": _text_of(v), "ci": "", "v": _sort_value(v), "best": False,
                                  "num": col["type"] == "num", **where})
                    continue
                cell = c.cells.get(k)
                best = bool(not c.baseline and k in m["best_marks"] and cell and cell["mean"] == m["best_marks"][k])
                mean, pm, rest = cell_text(cell, n, scales.get(k)).partition(" ± ")
                cells.append({"text": mean, "ci": f"± {rest}" if pm else "", "best": best, "num": True,
                              "v": _sort_value(cell["mean"] if cell else None), **where})
        rows.append({"label": c.label, "baseline": c.baseline, "n": n, "cells": cells})
    return {"groups": groups, "rows": rows}


# -------------------------------------------------------------------------------------- plots
def run_name(r: Run) -> str:
    s = r.summary
    return f"{s.get('name')}/{s.get('run_id')}" if s.get("name") and s.get("run_id") else str(r.path)


def run_index(configs: list[Config], runs: list[Run]) -> tuple[list[dict], list[dict], dict[int, int]]:
    """(configurations, runs, id(run) -> index) as the page's plots refer to them: a configuration's label,
    its axes as text, its runs' names; a run's name, configuration index and seed."""
    cfgs, of = [], {}
    for i, c in enumerate(configs):
        axes = ", ".join(f"{k}={_text_of(v)}" for k, v in sorted(c.axes.items()))
        cfgs.append({"label": c.label, "axes": axes, "n": len(c.runs), "baseline": c.baseline})
        for r in c.runs:
            of[id(r)] = i
    out, index = [], {}
    for r in runs:
        if id(r) in of:
            index[id(r)] = len(out)
            out.append({"name": run_name(r), "c": of[id(r)], "seed": str(r.seed)})
    return cfgs, out, index


def _fmt_for(meta: MetricMeta | None):
    scale = meta.scale if meta else None
    return lambda v: fmt_metric(v, scale)


def scatter(name: str, title: str, configs: list[Config], pts: list[dict], xlabel: str, ylabel: str, front: list[int],
            logx: bool, colors: dict[str, str], ymeta: MetricMeta | None, xmeta: MetricMeta | None) -> dict | None:
    """A configuration-level plot (quality vs a cost): points {x, y, e (CI half-width), c (configuration
    index), g (group), xt, yt (formatted)}, the Pareto front as a step line."""
    fy, fx = _fmt_for(ymeta), _fmt_for(xmeta)
    points = []
    for i, p in enumerate(pts):
        x, y = p["x"], p["y"]
        if not (math.isfinite(x) and math.isfinite(y)) or (logx and x <= 0):
            continue
        cell = configs[i].cells.get(ylabel) or {}
        yt = cell_text(cell, len(configs[i].runs), ymeta.scale if ymeta else None) if cell else fy(y)
        points.append({"x": _r(x), "y": _r(y), "e": _r(p.get("yerr") or 0.0), "c": i, "g": p["group"], "xt": fx(x),
                       "yt": yt})
    if not points:
        return None
    line = sorted((pts[i]["x"], pts[i]["y"]) for i in front
                  if math.isfinite(pts[i]["x"]) and math.isfinite(pts[i]["y"]))
    return {"id": name, "fig": name, "title": title, "x": xlabel, "y": ylabel, "logx": logx, "points": points,
            "line": [[_r(x), _r(y)] for x, y in line], "line_label": "Pareto front", "step": True,
            "colors": {g: colors[g] for g in sorted({p["g"] for p in points}) if g in colors}}


def panels(runs: list[Run], varying: list[str], primary: str, meta: MetricMeta | None, index: dict[int, int],
           colors: dict[str, str]) -> list[dict]:
    """One plot per swept axis: each completed run's value of the axis (x; categories by position) against
    the primary metric (y); hover names the run, its configuration and seed."""
    fy = _fmt_for(meta)
    out = []
    for k in varying:
        rows = [(r.axes.get(k), r.metrics.get(primary, math.nan), r) for r in runs if k in r.axes and id(r) in index]
        rows = [t for t in rows if math.isfinite(t[1])]
        if len({str(x) for x, _, _ in rows}) < 2:
            continue
        num = _numeric([x for x, _, _ in rows])
        cats = [] if num else sorted({str(x) for x, _, _ in rows})
        xs = [float(x) for x, _, _ in rows] if num else [float(cats.index(str(x))) for x, _, _ in rows]
        logx = num and min(xs) > 0 and max(xs) / min(xs) > 20
        points = [{"x": _r(x), "y": _r(y), "r": index[id(r)], "g": str(r.axes.get("method", "")),
                   "xt": fmt(v) if isinstance(v, float) else str(v), "yt": fy(y)} for (v, y, r), x in zip(rows, xs)]
        out.append({"id": f"param-{len(out)}", "fig": "params_vs_objective", "title": k, "x": k, "y": primary,
                    "logx": logx, "cats": cats, "points": points, "line": [], "small": True,
                    "colors": {g: colors[g] for g in sorted({p["g"] for p in points}) if g in colors}})
    return out


def history(trials: list[tuple[int, float, str]], direction: str | None, ylabel: str, meta: MetricMeta | None,
            runs: list[Run], index: dict[int, int], colors: dict[str, str]) -> dict | None:
    """Objective per completed trial and the best value so far (with a direction); hover names the trial's run."""
    fy = _fmt_for(meta)
    by_trial = {r.trial: index[id(r)] for r in runs if r.trial >= 0 and id(r) in index}
    pts = sorted((n, float(v)) for n, v, state in trials
                 if state == "COMPLETE" and isinstance(v, (int, float)) and math.isfinite(v))
    if not pts:
        return None
    points = [{"x": float(n), "y": _r(v), "g": "trial", "xt": f"trial {n}", "yt": fy(v),
               **({"r": by_trial[n]} if n in by_trial else {})} for n, v in pts]
    line, best = [], None
    for n, v in pts:
        if direction in ("max", "min"):
            best = v if best is None or (v > best if direction == "max" else v < best) else best
            line.append([float(n), _r(best)])
    return {"id": "history", "fig": "optimization_history", "title": "Optimisation history", "x": "trial number",
            "y": ylabel, "logx": False, "points": points, "line": line, "line_label": "best so far", "step": True,
            "colors": {"trial": colors.get("trial", "#1f77b4")}}


# ------------------------------------------------------------------------------ per-example view
def _text(v) -> str:
    s = "" if v is None else str(v)
    return s if len(s) <= EXAMPLE_CHARS else s[:EXAMPLE_CHARS] + f"… [{len(s) - EXAMPLE_CHARS:,} more characters]"


def _suite_keys(metas: dict[str, MetricMeta | None], dirs: dict[str, str | None],
                primary: str) -> list[tuple[str, str, MetricMeta]]:
    """(suite, metric, meta) per suite with a per-item metric that has a direction: the primary metric in its
    suite, else a binary one (right or wrong per item), else the first."""
    per_suite: dict[str, list[tuple[str, MetricMeta]]] = {}
    for flat, meta in sorted(metas.items()):
        if meta and meta.per_item and dirs.get(flat) and not flat.startswith("summary."):
            suite, metric = flat.split(".", 1)
            per_suite.setdefault(suite, []).append((metric, meta))
    out = []
    for suite, cands in sorted(per_suite.items()):
        pick = next((c for c in cands if f"{suite}.{c[0]}" == primary), None)
        pick = pick or next((c for c in cands if c[1].scale == "binary"), cands[0])
        out.append((suite, pick[0], pick[1]))
    return sorted(out, key=lambda t: t[2].scale != "binary")  # right-or-wrong tasks first


def examples(configs: list[Config], cache: SampleCache, metas: dict[str, MetricMeta | None],
             dirs: dict[str, str | None], primary: str) -> dict:
    """Per-item outputs and scores of the top-ranked trained configurations and the base models (each one's
    lowest-seed run), for the page's "two configurations, item by item" view: per suite, the EXAMPLE_ITEMS
    items on which they disagree most (binary scores: the most even split of right and wrong; other scores:
    the widest range), and for every pair the number of items on which they disagree over all items."""
    trained = [c for c in configs if not c.baseline]
    shown = trained[:EXAMPLE_CONFIGS] + [c for c in configs if c.baseline]
    out = {"configs": [configs.index(c) for c in shown], "runs": [run_name(c.runs[0]) for c in shown], "suites": [],
           "limits": {"configs": EXAMPLE_CONFIGS, "trained": len(trained), "items": EXAMPLE_ITEMS,
                      "chars": EXAMPLE_CHARS}}
    for suite, metric, meta in _suite_keys(metas, dirs, primary):
        key = meta.per_item
        rows = [{str(x.get("id")): x for x in cache.get(c.runs[0], suite)} for c in shown]
        ids = sorted(set().union(*[set(r) for r in rows]))
        if not ids or sum(1 for r in rows if r) < 2:
            continue
        scores = {i: [_num(r[i].get(key)) if i in r else math.nan for r in rows] for i in ids}
        binary = meta.scale == "binary" and all(v in (0.0, 1.0) for s in scores.values() for v in s if math.isfinite(v))
        spread = {}
        for i, s in scores.items():
            vals = [v for v in s if math.isfinite(v)]
            if len(vals) > 1:
                spread[i] = min(vals.count(1.0), vals.count(0.0)) if binary else max(vals) - min(vals)
        contested = sorted((i for i, d in spread.items() if d > 0), key=lambda i: (-spread[i], i))
        n = len(shown)
        pairs = [[0] * n for _ in range(n)]
        for s in scores.values():
            for a in range(n):
                for b in range(a + 1, n):
                    if math.isfinite(s[a]) and math.isfinite(s[b]) and s[a] != s[b]:
                        pairs[a][b] += 1
                        pairs[b][a] += 1
        items = []
        for i in sorted(contested[:EXAMPLE_ITEMS], key=lambda i: (0, int(i), "") if i.isdigit() else (1, 0, i)):
            first = next(r[i] for r in rows if i in r)
            refs = first.get("references")
            items.append({"id": i, "prompt": _text(first.get("prompt")),
                          "ref": _text(refs[0] if isinstance(refs, list) and refs else first.get("target")),
                          "out": [_text(r[i].get("prediction", r[i].get("pred"))) if i in r else None for r in rows],
                          "s": [v if math.isfinite(v) else None for v in scores[i]],
                          "st": [fmt_metric(v, meta.scale) if math.isfinite(v) else "—" for v in scores[i]]})
        direction = dirs.get(f"{suite}.{metric}")
        out["suites"].append({"name": suite, "metric": metric, "binary": binary, "higher": direction == "max",
                              "scale": meta.scale, "n_items": len(ids), "n_contested": len(contested), "pairs": pairs,
                              "items": items})
    return out
