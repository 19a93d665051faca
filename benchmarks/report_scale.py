"""Scale: `harness report` and `harness status` on a study of 1,000 synthetic runs.

    python -m benchmarks.run --only report [--report-runs 1000]

The study is written by tests/fixtures_runs.py (the report engineer's synthetic run records:
summary, config, manifest, metrics, eval.json, per-item samples, an Optuna SQLite study mirroring
them), then each command runs --reps times in a fresh process with its default options, timed
from the outside; peak memory is that process's peak RSS (kernel rusage).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from benchmarks import common

STUDY = "benchscale"
GOAL_S = 10.0


def _fixtures():
    path = common.REPO / "tests" / "fixtures_runs.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing (the synthetic run generator)")
    spec = importlib.util.spec_from_file_location("harness_bench_fixtures_runs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def child_make_study(root: str, runs: int, seeds: int = 5, items: int = 100) -> dict:
    """Child: write ~`runs` synthetic completed runs (+ failed/diverged/pruned/interrupted/baseline) and
    their Optuna study; returns the run count and the storage URL."""
    fx = _fixtures()
    t0 = time.perf_counter()
    configs = max(1, runs // seeds)
    dirs = fx.make_study(Path(root) / "runs", study=STUDY, n_configs=configs, seeds=seeds, items=items)
    url = fx.make_optuna_storage(Path(root) / f"{STUDY}.db", STUDY, [d for d in dirs if "baseline" not in str(d)])
    return {"runs": len(dirs), "storage": url, "write_s": time.perf_counter() - t0}


def run(opts: common.Options) -> dict:
    work = opts.workdir / "report"
    try:
        made = common.run_child("report_scale", "child_make_study", {"root": str(work), "runs": opts.report_runs},
                                work, "make-study", opts.timeout())
    except common.ChildError as exc:
        return common.section("report", "Report scale", notes=[f"not measured: synthetic study: {exc}"])
    commands = {
        "harness report": [sys.executable, "-m", "harness", "report", STUDY, "--runs-root", str(work / "runs"),
                           "--storage", made["storage"], "--out", str(work / "reports")],
        "harness status": [sys.executable, "-m", "harness", "status", STUDY, "--storage", made["storage"]],
    }
    rows, notes, goals = [], [], []
    for name, cmd in commands.items():
        if common.missing_modules(f"harness.commands.{name.split()[1]}"):
            rows.append({"command": name, "error": f"not measured: harness.commands.{name.split()[1]} missing"})
            continue
        walls, peaks, err = [], [], ""
        for i in range(opts.reps):
            res = common.run_command(cmd, work / f"{name.replace(' ', '-')}-{i}.log", opts.timeout())
            if res["returncode"] != 0:
                err = f"exit {res['returncode']}: {common.log_tail(res['log'])}"
                break
            walls.append(res["wall_s"])
            peaks.append(res["peak_rss_mb"])
        row = {"command": name, "runs": made["runs"], "reps": len(walls), "wall_s": common.median(walls),
               "wall_min_s": min(walls) if walls else None, "wall_max_s": max(walls) if walls else None,
               "peak_rss_mb": common.median(peaks), "load_1m": common.load_now()}
        if err:
            row["error"] = err
            notes.append(f"{name}: {err}")
        rows.append(row)
    rep = next((r for r in rows if r["command"] == "harness report"), {})
    v = rep.get("wall_s")
    goals.append(common.goal(f"harness report of {made['runs']:,} runs", v, f"< {GOAL_S:.0f} s",
                             None if v is None else v < GOAL_S, rep.get("error", "")))
    if (work / "reports" / STUDY / "report.html").exists():
        notes.append(f"report written: {len(list((work / 'reports' / STUDY).rglob('*')))} files under reports/{STUDY}/")
    notes.append(f"synthetic study written in {made['write_s']:.1f} s (fixtures_runs.make_study + make_optuna_storage); "
                 "wall time includes interpreter start and imports, as a user sees it.")
    return common.section("report", f"Scale: report and status on {made['runs']:,} synthetic runs", rows,
                          columns=["command", "runs", "reps", "wall_s", "wall_min_s", "wall_max_s", "peak_rss_mb", "load_1m"],
                          goals=goals, notes=notes, params={"runs": made["runs"], "reps": opts.reps})
