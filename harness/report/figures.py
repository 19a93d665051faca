"""Report figures: plain data in, deterministic PNG and SVG bytes out (matplotlib, no pyplot).

Used by `harness report` (harness/report/build.py), which passes numbers it read from run records and
from the Optuna storage; nothing here reads files. Each function returns a `Fig` (name, title,
caption, png, svg). Rendering is deterministic: the Agg backend, a bundled font (DejaVu Sans),
a fixed `svg.hashsalt`, and no dates or software versions in the file metadata, so the same
records give the same bytes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

RC = {
    "svg.hashsalt": "harness-report",
    "svg.fonttype": "none",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "path.simplify": True,
}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


@dataclass
class Fig:
    name: str  # file stem: figures/<name>.png|svg
    title: str
    caption: str
    png: bytes
    svg: bytes | None
    wide: bool = False  # spans the full page width in report.html


KNOWN = {"full": "#1f77b4", "lora": "#ff7f0e", "qlora": "#2ca02c", "dora": "#9467bd", "lora-8bit": "#8c564b",
         "qlora-fp4": "#e377c2", "base": "#7f7f7f"}


def colors(groups: Sequence[str]) -> dict[str, str]:
    """One colour per group: fixed for the shipped method names (the same method has the same colour
    in every figure and every report), the rest of the palette in sorted order for other names."""
    spare = [c for c in PALETTE if c not in KNOWN.values()] + PALETTE
    out, i = {}, 0
    for g in sorted(set(groups)):
        if g in KNOWN:
            out[g] = KNOWN[g]
        else:
            out[g] = spare[i % len(spare)]
            i += 1
    return out


# Names and values from run records are drawn as written: a `$` in a run name or a grid value must not
# start mathtext (which garbles "a$b$c" and stops the report on "$_$"). Every text call that can carry
# one passes **_LITERAL (matplotlib >= 3.5); legends go through _legend.
_LITERAL = {"parse_math": False}


def _legend(ax, **kwargs) -> None:
    """ax.legend with its entries as literal text."""
    for t in ax.legend(**kwargs).get_texts():
        t.set_parse_math(False)


def _finish(fig: Figure, name: str, title: str, caption: str, svg: bool, wide: bool = False) -> Fig:
    with matplotlib.rc_context(RC):
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110, metadata={"Software": None})
        svg_bytes = None
        if svg:
            buf = io.BytesIO()
            fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
            svg_bytes = buf.getvalue()
    return Fig(name, title, caption, png.getvalue(), svg_bytes, wide)


def _new(width: float, height: float, ncols: int = 1, nrows: int = 1, left: float = 0.75, bottom: float = 0.55,
         top: float = 0.35, right: float = 0.2, wspace: float = 0.35, hspace: float = 0.6):
    """A figure with fixed margins in inches (no tight_layout: it costs a full text layout per figure)."""
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(width, height))
        axes = fig.subplots(nrows, ncols, squeeze=False)
        fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                            wspace=wspace, hspace=hspace)
    return fig, [ax for row in axes for ax in row]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


BENCH_PREFIX = "bench/"  # metrics.jsonl keys of eval.during_training rows: bench/<task>.<metric> (harness/train/benchmarks.py)


def benchmark_keys(runs_by_method: dict[str, list[list[dict]]]) -> list[str]:
    """The benchmark metrics measured during training in these runs (bench/<task>.<metric>, no stderr or item
    counts), sorted."""
    return sorted({k for rows in runs_by_method.values() for run in rows for row in run for k in row
                   if k.startswith(BENCH_PREFIX) and not k.endswith(("_stderr", ".n"))})


def loss_curves(runs_by_method: dict[str, list[list[dict]]], svg: bool = True) -> Fig | None:
    """Median train and validation loss per step for each method, with the 25-75% band over runs; beside them one
    panel per benchmark metric measured during training (eval.during_training), over the same steps.

    runs_by_method: method -> one metrics.jsonl row list per run.
    """
    import numpy as np

    panels = [("train_loss", "training loss"), ("val_loss", "validation loss")]
    panels += [(k, f"{k[len(BENCH_PREFIX):]} (during training)") for k in benchmark_keys(runs_by_method)]
    if not any(k in row for rows in runs_by_method.values() for run in rows for row in run for k, _ in panels):
        return None
    col = colors(runs_by_method)
    ncols = 2 if len(panels) <= 2 else min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    with matplotlib.rc_context(RC):
        fig, axes = _new(11 if ncols == 2 else 13, 3.6 * nrows, ncols=ncols, nrows=nrows, hspace=0.45)
        for ax, (key, label) in zip(axes, panels):
            for method in sorted(runs_by_method):
                by_step: dict[float, list[float]] = {}
                for run in runs_by_method[method]:
                    for row in run:
                        v, s = row.get(key), row.get("step")
                        if _finite(v) and _finite(s):
                            by_step.setdefault(float(s), []).append(float(v))
                if not by_step:
                    continue
                steps = sorted(by_step)
                q = np.array([np.percentile(by_step[s], [25, 50, 75]) for s in steps])
                n = len(runs_by_method[method])
                marker = "o" if key.startswith(BENCH_PREFIX) or len(steps) == 1 else None  # few points: show them
                ax.plot(steps, q[:, 1], color=col[method], lw=1.8, marker=marker, ms=3.5, label=f"{method} (n={n})")
                if n > 1:
                    ax.fill_between(steps, q[:, 0], q[:, 2], color=col[method], alpha=0.18, lw=0)
            ax.set_xlabel("step")
            ax.set_ylabel(label, **_LITERAL)
            ax.set_title(label, **_LITERAL)
            if ax.has_data():
                _legend(ax, fontsize=8)
        for ax in axes[len(panels):]:
            ax.set_visible(False)
    bench = len(panels) > 2
    return _finish(fig, "loss_curves", "Loss curves by method" + (" and benchmarks during training" if bench else ""),
                   "Median over runs of each method (line) and 25-75% range (band), from metrics.jsonl. "
                   "Non-finite losses (diverged runs) are not drawn."
                   + (" Benchmark panels: eval.during_training's tasks on their first items (eval.during_training.limit), "
                      "scored at the steps marked; the full evaluation after training is in the tables." if bench else ""),
                   svg, wide=True)


def scatter_front(name: str, title: str, points: list[dict], xlabel: str, ylabel: str, front: list[int],
                  ydir: str | None, xdir: str = "min", logx: bool = False, svg: bool = True) -> Fig | None:
    """Configurations as points (x = cost, y = quality), coloured by group, Pareto front as a step line.

    points: dicts with label, group, x, y (and optional xerr/yerr); front: indices into points.
    """
    pts = [p for p in points if _finite(p.get("x")) and _finite(p.get("y"))]
    if not pts:
        return None
    col = colors(p["group"] for p in pts)
    with matplotlib.rc_context(RC):
        fig, (ax,) = _new(6.4, 4.2)
        for g in sorted(col):
            sel = [p for p in pts if p["group"] == g]
            ax.errorbar([p["x"] for p in sel], [p["y"] for p in sel],
                        yerr=[p.get("yerr") or 0.0 for p in sel], fmt="o", ms=5, color=col[g], alpha=0.8,
                        elinewidth=0.8, label=g)
        fr = sorted((points[i] for i in front if _finite(points[i].get("x")) and _finite(points[i].get("y"))),
                    key=lambda p: (p["x"], p["y"]))
        if fr:
            ax.step([p["x"] for p in fr], [p["y"] for p in fr], where="post", color="black", lw=1.2, ls="--",
                    label="Pareto front")
            _label_front(ax, fr, logx)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(f"{xlabel} ({'lower' if xdir == 'min' else 'higher'} is better)", **_LITERAL)
        ax.set_ylabel(f"{ylabel} ({'higher' if ydir == 'max' else 'lower'} is better)" if ydir else ylabel, **_LITERAL)
        ax.set_title(title, **_LITERAL)
        _legend(ax, fontsize=8)
    caption = (f"Each point is one configuration (mean over seeds, bars: 95% CI). Dashed: the Pareto front "
               f"(no other configuration is better in both {ylabel} and {xlabel}); front points labelled where space allows.")
    return _finish(fig, name, title, caption, svg)


def _label_front(ax, front: list[dict], logx: bool, most: int = 8) -> None:
    """Label Pareto-front points, skipping any too close to one already labelled (no pile-ups)."""
    xs = [math.log10(p["x"]) if logx and p["x"] > 0 else p["x"] for p in front]
    ys = [p["y"] for p in front]
    xr = (max(xs) - min(xs)) or 1.0
    yr = (max(ys) - min(ys)) or 1.0
    done: list[tuple[float, float]] = []
    for p, x, y in zip(front, xs, ys):
        if len(done) >= most or any(abs(x - a) / xr < 0.12 and abs(y - b) / yr < 0.08 for a, b in done):
            continue
        right = (x - min(xs)) / xr > 0.7
        ax.annotate(p["label"], (p["x"], p["y"]), fontsize=7, xytext=(-4 if right else 4, 4), textcoords="offset points",
                    ha="right" if right else "left", **_LITERAL)
        done.append((x, y))


def history(trials: list[tuple[int, float, str]], direction: str, ylabel: str, source: str, svg: bool = True) -> Fig | None:
    """Objective value per trial number (completed trials) and the best value so far."""
    pts = sorted((n, v) for n, v, state in trials if state == "COMPLETE" and _finite(v))
    if not pts:
        return None
    with matplotlib.rc_context(RC):
        fig, (ax,) = _new(6.4, 3.6)
        ax.plot([n for n, _ in pts], [v for _, v in pts], "o", ms=3.5, color=PALETTE[0], alpha=0.7, label="trial")
        best, xs, ys = None, [], []
        for n, v in pts:
            if best is None or (v > best if direction == "maximize" else v < best):
                best = v
            xs.append(n)
            ys.append(best)
        if direction in ("maximize", "minimize"):  # no "best so far" without a direction
            ax.step(xs, ys, where="post", color=PALETTE[3], lw=1.5, label="best so far")
        others = sorted({s for _, _, s in trials if s != "COMPLETE"})
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial number")
        ax.set_ylabel(ylabel, **_LITERAL)
        ax.set_title("Optimisation history")
        _legend(ax, fontsize=8)
    counts = ", ".join(f"{sum(1 for t in trials if t[2] == s)} {s.lower()}" for s in others)
    caption = f"Completed trials ({source}); {direction}. " + (f"Not plotted: {counts}." if counts else "")
    return _finish(fig, "optimization_history", "Optimisation history", caption, svg)


def importances(values: dict[str, float], evaluator: str, svg: bool = True) -> Fig | None:
    if not values:
        return None
    items = sorted(values.items(), key=lambda kv: (kv[1], kv[0]))
    with matplotlib.rc_context(RC):
        fig, (ax,) = _new(6.4, 1.0 + 0.3 * len(items), left=0.3 + 0.075 * max(len(k) for k, _ in items), bottom=0.5)
        ax.barh(range(len(items)), [v for _, v in items], color=PALETTE[0])
        ax.set_yticks(range(len(items)), [k for k, _ in items], **_LITERAL)
        for i, (_, v) in enumerate(items):
            ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
        ax.set_xlabel("importance (share of objective variance)")
        ax.set_title("Hyperparameter importances")
        ax.grid(axis="y", visible=False)
    return _finish(fig, "param_importances", "Hyperparameter importances",
                   f"Optuna get_param_importances with {evaluator} on the completed trials of the study.", svg)


def param_panels(params: dict[str, list[tuple[object, float, str]]], ylabel: str, svg: bool = True) -> Fig | None:
    """One panel per swept hyperparameter: its value (x) against the objective (y) per run, coloured by group.

    params: name -> list of (value, objective, group). Numeric values go on a numeric axis (log
    when they span more than a factor of 20 and are positive), others on a categorical axis.
    """
    params = {k: [t for t in v if _finite(t[1])] for k, v in params.items()}
    params = {k: v for k, v in params.items() if len({str(x) for x, _, _ in v}) > 1}  # swept = 2+ values
    if not params:
        return None
    names = sorted(params)
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    col = colors(g for v in params.values() for _, _, g in v)
    with matplotlib.rc_context(RC):
        fig, axes = _new(3.6 * ncols, 2.9 * nrows, ncols=ncols, nrows=nrows, bottom=0.75, wspace=0.45, hspace=0.75)
        for ax, name in zip(axes, names):
            rows = params[name]
            numeric = all(_finite(x) for x, _, _ in rows)
            if numeric:
                xs = [float(x) for x, _, _ in rows]
                if min(xs) > 0 and max(xs) / min(xs) > 20:
                    ax.set_xscale("log")
                else:
                    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
                    ax.xaxis.set_major_locator(MaxNLocator(5))
                pos = xs
            else:
                cats = sorted({str(x) for x, _, _ in rows})
                idx = {c: i for i, c in enumerate(cats)}
                pos = [idx[str(x)] + 0.15 * (((i * 7919) % 11) / 10 - 0.5) for i, (x, _, _) in enumerate(rows)]
                ax.set_xticks(range(len(cats)), cats, rotation=30 if len(cats) > 4 else 0, ha="right" if len(cats) > 4 else "center",
                              **_LITERAL)
            for g in sorted(col):
                sel = [i for i, r in enumerate(rows) if r[2] == g]
                if sel:
                    ax.plot([pos[i] for i in sel], [rows[i][1] for i in sel], "o", ms=3.5, alpha=0.7, color=col[g], label=g)
            ax.set_title(name, **_LITERAL)
            ax.set_ylabel(ylabel, **_LITERAL)
        for ax in axes[len(names):]:
            ax.set_visible(False)
        _legend(axes[0], fontsize=7)
    return _finish(fig, "params_vs_objective", "Swept hyperparameters against the objective",
                   "Each point is one completed run (every seed), coloured by method.", svg, wide=len(names) > 1)
