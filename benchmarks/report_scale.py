"""Scale: `harness report` and `harness status` on a study of 1,000 synthetic runs, and the report page itself:
report.html's size and its load time in headless Chromium, for that study and a quickstart-sized one.

    python -m benchmarks.run --only report [--report-runs 1000]

The study is written by tests/fixtures_runs.py (the report engineer's synthetic run records:
summary, config, manifest, metrics, eval.json, per-item samples, an Optuna SQLite study mirroring
them), then each command runs --reps times in a fresh process with its default options, timed
from the outside; peak memory is that process's peak RSS (kernel rusage). The page is then opened
--reps + 1 times in one Chromium (tests/chromium.py; the first load warms the browser and is not
counted): load_ms is the page's own navigation timing (navigation start to the end of the load
event), ready_ms its "report-ready" mark (the page's script has made the leaderboard sortable and
foldable and built the per-example view), plots_ms the time to draw every plot at once (the page draws
each when it comes near the window; here they are all forced, as before printing, with the layout
that follows). Without chromium the page rows say "not measured".
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from benchmarks import common

STUDY = "benchscale"
GOAL_S = 10.0


def _load(name: str):
    path = common.REPO / "tests" / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing")
    spec = importlib.util.spec_from_file_location(f"harness_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fixtures():
    return _load("fixtures_runs")  # the synthetic run generator


def page_row(label: str, html: Path, runs: int, reps: int, workdir: Path) -> dict:
    """report.html's size and load time in headless Chromium (median of `reps` loads after one warm-up)."""
    row = {"command": label, "runs": runs, "html_kb": html.stat().st_size / 1024 if html.exists() else None}
    try:
        chromium = _load("chromium")
    except FileNotFoundError as exc:
        return {**row, "error": f"not measured: {exc}"}
    if chromium.CHROMIUM is None:
        return {**row, "error": "load time not measured: chromium not installed (scripts/system-deps.sh)"}
    loads = []
    try:
        with chromium.Browser(workdir) as b:
            for i in range(reps + 1):
                t = b.load(html.resolve().as_uri())
                t["plots_ms"] = b.eval("(() => { const t0 = performance.now(); window.dispatchEvent(new Event('beforeprint'));"
                                       " document.body.getBoundingClientRect(); return performance.now() - t0; })()")
                if b.exceptions():
                    return {**row, "error": f"page script error: {b.exceptions()[0]}"}
                if i:
                    loads.append(t)
    except chromium.BrowserError as exc:
        return {**row, "error": f"load time not measured: {exc}"}
    ready = [t["ready_ms"] for t in loads if t.get("ready_ms") is not None]
    return {**row, "reps": len(loads), "load_ms": common.median([t["load_ms"] for t in loads]),
            "ready_ms": common.median(ready) if ready else None, "plots_ms": common.median([t["plots_ms"] for t in loads]),
            "load_1m": common.load_now()}


def child_small_report(root: str) -> dict:
    """Child: a quickstart-sized study (3 configurations x 1 seed, 20 items, the extra failed/diverged/pruned/
    interrupted runs and a baseline) and its report; returns the report.html path and the run count."""
    fx = _fixtures()
    from harness import cli

    dirs = fx.make_study(Path(root) / "runs", study="quickstart", n_configs=3, seeds=1, items=20)
    rc = cli.main(["report", "quickstart", "--runs-root", str(Path(root) / "runs"), "--out", str(Path(root) / "reports"),
                   "--studies-dir", str(Path(root) / "none")])
    return {"runs": len(dirs), "html": str(Path(root) / "reports" / "quickstart" / "report.html"), "rc": rc}


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
    page = work / "reports" / STUDY / "report.html"
    if page.exists():
        rows.append(page_row(f"report.html ({made['runs']:,} runs)", page, made["runs"], opts.reps, work))
    try:
        small = common.run_child("report_scale", "child_small_report", {"root": str(work / "small")}, work, "small-report",
                                 opts.timeout())
        rows.append(page_row(f"report.html (quickstart-sized, {small['runs']} runs)", Path(small["html"]), small["runs"],
                             opts.reps, work))
    except common.ChildError as exc:
        notes.append(f"quickstart-sized report not measured: {exc}")
    rep = next((r for r in rows if r["command"] == "harness report"), {})
    v = rep.get("wall_s")
    goals.append(common.goal(f"harness report of {made['runs']:,} runs", v, f"< {GOAL_S:.0f} s",
                             None if v is None else v < GOAL_S, rep.get("error", "")))
    if (work / "reports" / STUDY / "report.html").exists():
        notes.append(f"report written: {len(list((work / 'reports' / STUDY).rglob('*')))} files under reports/{STUDY}/")
    notes.append(f"synthetic study written in {made['write_s']:.1f} s (fixtures_runs.make_study + make_optuna_storage); "
                 "wall time includes interpreter start and imports, as a user sees it.")
    return common.section("report", f"Scale: report and status on {made['runs']:,} synthetic runs", rows,
                          columns=["command", "runs", "reps", "wall_s", "wall_min_s", "wall_max_s", "peak_rss_mb", "html_kb",
                                   "load_ms", "ready_ms", "plots_ms", "load_1m"],
                          goals=goals, notes=notes, params={"runs": made["runs"], "reps": opts.reps})
