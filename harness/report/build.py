"""The report model: one dict built from the runs (leaderboard, comparisons, verdict, references, contamination,
provenance, samples), rendered by markdown.py and html.py. `build(name, runs, inputs, args) -> (model, figures)`.
What each metric means comes from the records (meta.py); the checks on the runs from checks.py.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from harness import atomic
from harness.report.aggregate import Config, aggregate, best_marks, choose_primary, rank, study_objectives
from harness.report.checks import comparability, contamination, identity_notes, provenance
from harness.report.compare import SampleCache, compare
from harness.report.fmt import _num, fmt, fmt_metric, half_width
from harness.report.meta import directions, metric_metas
from harness.report.runs import Run, find_human, find_inputs, load_optuna, varying_axes
from harness.report.stats import pareto_front
from harness.report.verdict import beaten, primary_verdict
from harness.run.record import read_metrics

COST = (  # (flat metric, header)
    ("summary.trainable_params", "trainable params"), ("summary.trainable_share", "trainable share"),
    ("summary.peak_memory_mb", "peak memory (MB)"), ("summary.train_time_s", "train time (s)"),
    ("summary.tokens_per_s", "tokens/s"), ("summary.adapter_bytes", "adapter size (bytes)"),
)


def gather_references(runs: list[Run], extra_files: list[Path]) -> list[dict]:
    """Published numbers from references files (--references, inputs) and from the runs' config.yaml. A
    number a file gives (same metric and value) replaces the config's copy: the file is the newer word,
    e.g. one that adds `axes` to references older runs carry without them."""
    from_files = []
    for f in extra_files:
        data = atomic.read_json(f)
        for ref in data if isinstance(data, list) else data.get("references", []):
            from_files.append({**ref, "_from": str(f)})
    given = {(str(r.get("metric")), _num(r.get("value"))) for r in from_files}
    refs, seen = [], set()
    for r in runs:
        for ref in r.config.get("references") or []:
            if isinstance(ref, dict):
                k = json.dumps(ref, sort_keys=True, default=str)
                if k not in seen and (str(ref.get("metric")), _num(ref.get("value"))) not in given:
                    seen.add(k)
                    refs.append({**ref, "_from": "config.yaml", "_axes": r.axes})
    return refs + from_files


STDERR_Z = 2.0  # `tolerance: stderr` without a z: two standard errors of the difference (about 95%)


def published_stderr(ref: dict, value: float) -> tuple[float | None, str]:
    """A published number's standard error: `stderr` as given, else from its item count `n` and the value (a mean
    of 0/1 items: sqrt(p (1 - p) / n)), else None. With where it came from, for the report."""
    se, n = _num(ref.get("stderr")), _num(ref.get("n"))
    if math.isfinite(se) and se >= 0:
        return se, f"published SE {fmt(se)} (given)"
    if math.isfinite(n) and n >= 1 and 0 <= value <= 1:
        return math.sqrt(value * (1 - value) / n), f"published SE from n={int(n)}"
    return None, ""


def stderr_tolerance(ref: dict, value: float, se_ours: float) -> tuple[float | None, str]:
    """The tolerance a reference asks for by standard errors (`tolerance: stderr`, or `tolerance_stderr: z`):
    z * sqrt(se_ours^2 + se_published^2), the z-test of "no difference" between two independent estimates.
    (None, why) when a standard error is missing: no status is claimed then. A plain number `tolerance` is
    not this function's (reference_rows uses it as it is)."""
    z = _num(ref.get("tolerance_stderr")) if ref.get("tolerance_stderr") is not None else STDERR_Z
    if not math.isfinite(z) or z <= 0:
        return None, f"tolerance_stderr={ref.get('tolerance_stderr')!r} is not a positive number"
    se_pub, pub_basis = published_stderr(ref, value)
    if se_pub is None:
        return None, "no published standard error (give the reference `stderr` or `n`)"
    if not math.isfinite(se_ours):
        return None, "no standard error measured (eval.json has no <metric>_stderr)"
    tol = z * math.sqrt(se_ours ** 2 + se_pub ** 2)
    return tol, f"{fmt(z, 3)} x sqrt(SE ours^2 + SE published^2): ours {fmt(se_ours)}, {pub_basis}"


def wants_stderr(ref: dict) -> bool:
    return ref.get("tolerance") == "stderr" or ref.get("tolerance_stderr") is not None


def _stderr_of(target: Config | None, metric: str) -> float:
    """The measured standard error of `metric` for a configuration: its runs' `<metric>_stderr` (mean over the
    runs; seeds of one configuration score the same items)."""
    vals = [r.metrics.get(f"{metric}_stderr", math.nan) for r in (target.runs if target else [])]
    vals = [v for v in vals if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def tolerance_basis(row: dict) -> str:
    """What a reference row's tolerance is made of, as " (...)" after the number; "" for a fixed one."""
    basis = row.get("tolerance_basis") or ""
    return f" ({basis})" if basis and basis != "fixed" else ""


def reference_rows(refs: list[dict], configs: list[Config], best: Config | None) -> list[dict]:
    """One row per published number: the configuration it describes, ours, the tolerance and its basis (a fixed
    number, or standard errors: stderr_tolerance), and whether ours is within it."""
    rows = []
    for ref in refs:
        metric = str(ref.get("metric", ""))
        target = best
        if isinstance(ref.get("axes"), dict):  # the reference names the configuration it describes
            target = next((c for c in configs if all(c.axes.get(k) == v for k, v in ref["axes"].items())), None)
        elif ref.get("_axes"):  # the run that carried it: its trained configuration, else its base-model one
            same = [c for c in configs if c.axes == ref["_axes"]]
            target = next((c for c in same if not c.baseline), same[0] if same else best)
        cell = (target.cells.get(metric) if target else None) or {}
        value, tol, measured = _num(ref.get("value")), ref.get("tolerance"), cell.get("mean", math.nan)
        basis = "fixed" if tol is not None else ""
        if wants_stderr(ref):
            tol, basis = stderr_tolerance(ref, value, _stderr_of(target, metric)) if math.isfinite(measured) else (None, "")
        if not math.isfinite(measured):
            status = "not measured"
        elif tol is None:
            status = "reference only" if not basis else "no tolerance: " + basis
        else:
            status = "within tolerance" if abs(measured - value) <= float(tol) else "outside tolerance"
        rows.append({"metric": metric, "config": target.label if target else "—", "measured": measured,
                     "published": value, "tolerance": tol, "tolerance_basis": basis if tol is not None else "",
                     "status": status, "source": str(ref.get("source", "")), "note": str(ref.get("note", ""))})
    return rows


# ------------------------------------------------------------------------------------ the model
def build(name: str, runs: list[Run], inputs: list[str], args) -> tuple[dict, list]:
    from harness.report import explore
    from harness.report.figures import colors, history, importances, loss_curves, param_panels, scatter_front

    t0 = time.perf_counter()
    ok_runs = [r for r in runs if r.status in ("completed", "baseline")]

    def quality_of(rs):
        return sorted({m for r in rs for m in r.metrics if not m.startswith("summary.") and not m.endswith("_stderr")})

    quality = quality_of(ok_runs)
    if any("summary.best_val_loss" in r.metrics for r in ok_runs):
        quality.append("summary.best_val_loss")  # every trained run has it, evaluated or not
    cost = [m for m, _ in COST if any(m in r.metrics for r in ok_runs)]
    study = name
    storage = args.storage or f"sqlite:///{Path(args.studies_dir) / study}.db"
    optuna_info, optuna_note = load_optuna(storage, study) if not args.no_optuna else (None, "Optuna storage not read (--no-optuna).")
    trained_quality = quality_of([r for r in ok_runs if r.status == "completed"])  # rank by what trained runs have
    trained_quality += [m for m in quality if m.startswith("summary.")]
    primary = choose_primary(trained_quality if not args.metric else quality, args.metric, optuna_info)
    quality = [primary] + [m for m in quality if m != primary]
    metas, meta_notes = metric_metas(ok_runs, quality + cost)
    dirs = directions(metas)
    objs, study_dirs = study_objectives(optuna_info), (optuna_info or {}).get("directions") or []
    study_dir = ({"maximize": "max", "minimize": "min"}.get(study_dirs[objs.index(primary)])
                 if primary in objs[: len(study_dirs)] else None)
    direction = args.direction or study_dir or dirs.get(primary)
    dirs[primary] = direction
    configs = rank(aggregate(runs, quality + cost), primary, direction)
    trained = [c for c in configs if not c.baseline]
    top = trained[0] if trained and primary in trained[0].cells else None
    cache = SampleCache()
    comparisons, cmp_notes = compare(configs, cache, args, metas, dirs)
    verdict = primary_verdict(trained, primary, direction, metas.get(primary), comparisons, args.max_compare)
    best = next((c for c in trained if c.label == verdict["best"]), None)
    marks = best_marks(configs, quality + cost, dirs)
    marks.pop(primary, None)  # the primary column's star is the verdict's: a tie is not starred
    if best is not None:
        marks[primary] = best.cells[primary]["mean"]
    contam, contam_warnings = contamination(configs)
    warnings = contam_warnings + comparability(runs) + identity_notes(configs) + meta_notes + cmp_notes
    for r in runs:
        if r.status == "baseline" and r.summary.get("study") != name:
            warnings.append(f"Base-model reference {r.path} was evaluated outside this study (added as the baseline row).")
    if optuna_note:
        warnings.append(optuna_note)
    if optuna_info and optuna_info.get("importance_note"):
        warnings.append(optuna_info["importance_note"])
    failed = sorted((r for r in runs if r.status not in ("completed", "baseline")), key=lambda r: str(r.path))
    refs = reference_rows(gather_references(runs, find_inputs(inputs, runs, "references.json", args.references)), configs, top)
    human = find_human(runs, inputs, args)

    # figures
    figs = []
    by_method: dict[str, list] = {}
    for r in sorted(runs, key=lambda r: str(r.path)):
        if r.status in ("completed", "diverged", "pruned", "interrupted", "failed"):
            by_method.setdefault(str(r.summary.get("method") or r.axes.get("method", "?")), []).append(
                read_metrics(r.path))  # non-finite values ("nan" strings) are skipped when drawn
    groups = {c.key: str(c.axes.get("method", c.label)) for c in configs}
    pts_src = [c for c in configs]
    completed = [r for r in runs if r.status == "completed"]
    varying = varying_axes([c.axes for c in trained])
    palette = colors(list(groups.values()) + [str(r.axes.get("method", "")) for r in completed])
    page_configs, page_runs, index = explore.run_index(configs, sorted(completed, key=lambda r: str(r.path)))
    plots = []
    for xm, xl, logx, fname in (("summary.peak_memory_mb", "peak memory (MB)", False, "quality_vs_memory"),
                                ("summary.trainable_params", "trainable parameters", True, "quality_vs_params")):
        pts = [{"label": c.label, "group": groups[c.key], "x": c.cells.get(xm, {}).get("mean", math.nan),
                "y": c.cells.get(primary, {}).get("mean", math.nan),
                "yerr": (c.cells.get(primary, {}).get("hi", math.nan) - c.cells.get(primary, {}).get("mean", math.nan))}
               for c in pts_src]
        for p in pts:
            p["yerr"] = p["yerr"] if math.isfinite(p["yerr"]) else 0.0
            if logx and p["x"] == 0:
                p["x"] = math.nan  # the base model trains nothing: no point on a log axis
        front = pareto_front([(p["y"], p["x"]) for p in pts], (direction, "min")) if direction else []
        figs.append(scatter_front(fname, f"{primary} vs {xl}", pts, xl, primary, front, direction, logx=logx, svg=not args.no_svg))
        plots.append(explore.scatter(fname, f"{primary} vs {xl}", configs, pts, xl, primary, front, logx, palette,
                                     metas.get(primary), metas.get(xm)))
    figs.insert(0, loss_curves(by_method, svg=not args.no_svg))
    if optuna_info:
        objective = (study_objectives(optuna_info) or ["objective"])[0]
        study_direction = optuna_info["directions"][0]
        trials = optuna_info["trials"]
        figs.append(history(trials, study_direction, objective, f"Optuna storage {storage}", svg=not args.no_svg))
        figs.append(importances(optuna_info["importances"], "fANOVA (32 trees, seed 0)", svg=not args.no_svg))
    else:
        objective, study_direction = primary, {"max": "maximize", "min": "minimize"}.get(direction, "direction unknown")
        trials = [(r.trial, r.metrics.get(primary, math.nan), "COMPLETE") for r in completed if r.trial >= 0]
        trials += [(r.trial, math.nan, r.status.upper()) for r in failed if r.trial >= 0]
        figs.append(history(trials, study_direction, primary, "run records", svg=not args.no_svg))
    plots.append(explore.history(trials, {"maximize": "max", "minimize": "min"}.get(study_direction), objective,
                                 metas.get(objective), completed, index, palette))
    panels = {k: [(r.axes.get(k), r.metrics.get(primary, math.nan), str(r.axes.get("method", "")))
                  for r in completed if k in r.axes] for k in varying}
    figs.append(param_panels(panels, primary, svg=not args.no_svg))
    plots += explore.panels(completed, varying, primary, metas.get(primary), index, palette)
    figs = [f for f in figs if f is not None]

    findings = key_findings(configs, top, primary, comparisons, verdict, direction,
                            metas[primary].scale if metas.get(primary) else None)
    status_counts: dict[str, int] = {}
    for r in runs:
        status_counts[r.status] = status_counts.get(r.status, 0) + 1
    model = {
        "name": name, "primary": primary, "direction": direction, "quality": quality, "cost": cost,
        "status_counts": dict(sorted(status_counts.items())), "n_runs": len(runs),
        "best": best.label if best else None, "top": top.label if top else None, "verdict": verdict,
        "configs": configs, "best_marks": marks, "directions": dirs,
        "metric_meta": {k: (v.to_record() if v else None) for k, v in metas.items()},
        "comparisons": comparisons, "warnings": warnings, "failed": failed, "references": refs, "human": human,
        "contamination": contam, "provenance": provenance(runs), "samples": sample_rows(configs, top, cache),
        "optuna": optuna_info, "paired_test": args.paired_test, "findings": findings, "build_s": time.perf_counter() - t0,
        "scales": {k: (v.scale if v else None) for k, v in metas.items()}, "varying": varying,
        "explore": {"configs": page_configs, "runs": page_runs, "plots": [p for p in plots if p],
                    "examples": explore.examples(configs, cache, metas, dirs, primary)},
    }
    return model, figs


def key_findings(configs: list[Config], top: Config | None, primary: str, comparisons: list[dict], verdict: dict,
                 direction: str | None, scale: str | None = None) -> list[str]:
    """What a reader wants after the verdict: the top configuration's number, the win over the base model,
    and the cheapest configuration (by peak memory) not significantly worse than the top one."""
    if top is None:
        return []
    cell = top.cells[primary]
    ci = f" ± {half_width(cell, scale)}" if half_width(cell, scale) else ""
    out = [f"Top-ranked on {primary}: {top.label} ({fmt_metric(cell['mean'], scale)}{ci}, {cell['n']} run{'s' if cell['n'] != 1 else ''})."]
    vs_base = [c for c in comparisons if c["flat_metric"] == primary and c["kind"] == "vs baseline" and c["a"] == top.label]
    out += [f"Against the base model: {c['verdict']}." for c in vs_base[:1]]
    tests = verdict.get("tests") or []
    worse = {t["label"] for t in tests if direction and beaten(t, direction)}
    tested = {t["label"] for t in tests} | {top.label}
    mem = "summary.peak_memory_mb"
    ok = [c for c in configs if not c.baseline and c.label in tested and c.label not in worse and mem in c.cells]
    if tests and ok and mem in top.cells:
        cheap = min(ok, key=lambda c: (c.cells[mem]["mean"], c.label))
        if cheap is not top:
            out.append(f"Lowest peak memory not significantly worse than the top-ranked: {cheap.label} "
                       f"({fmt(cheap.cells[mem]['mean'])} MB vs {fmt(top.cells[mem]['mean'])} MB).")
        else:
            out.append(f"No configuration that is not significantly worse than the top-ranked uses less peak memory "
                       f"({fmt(top.cells[mem]['mean'])} MB).")
    return out


def sample_rows(configs: list[Config], top: Config | None, cache: SampleCache, k: int = 3) -> list[dict]:
    """The first k items (by id) of each generation suite: prompt, reference, and the outputs of the
    top-ranked configuration and of each baseline (their lowest-seed run)."""
    shown = ([top] if top else []) + [c for c in configs if c.baseline]
    out = []
    suites = sorted({s for c in shown for s, res in (c.runs[0].eval.get("suites") or {}).items() if res.get("kind") == "generation"})
    for s in suites:
        by_cfg = {c.label: {str(x.get("id")): x for x in cache.get(c.runs[0], s)} for c in shown}
        ids = sorted(set().union(*[set(v) for v in by_cfg.values()]))[:k]
        for i in ids:
            first = next(v[i] for v in by_cfg.values() if i in v)
            out.append({"suite": s, "id": i, "prompt": str(first.get("prompt", "")),
                        "reference": str((first.get("references") or [""])[0]),
                        "outputs": [(lbl, str(v[i].get("prediction", "")) if i in v else "—") for lbl, v in by_cfg.items()]})
    return out


# ----------------------------------------------------------------------------------- the files
def run_rows(runs: list[Run]) -> tuple[list[str], list[dict]]:
    axes = sorted({k for r in runs for k in (r.summary.get("axes") or {})})
    mets = sorted({m for r in runs for m in r.metrics})
    head = ["run_dir", "name", "run_id", "study", "trial", "seed", "status", "reason", "pruned_at_step"]
    rows = []
    for r in sorted(runs, key=lambda r: str(r.path)):
        s = r.summary
        row = {"run_dir": str(r.path), "name": s.get("name"), "run_id": s.get("run_id"), "study": s.get("study"),
               "trial": s.get("trial"), "seed": s.get("seed"), "status": r.status, "reason": r.error or s.get("reason", ""),
               "pruned_at_step": s.get("pruned_at_step")}
        row.update({f"axes.{k}": (s.get("axes") or {}).get(k) for k in axes})
        row.update({m: r.metrics.get(m) for m in mets})
        rows.append(row)
    return head + [f"axes.{k}" for k in axes] + mets, rows
