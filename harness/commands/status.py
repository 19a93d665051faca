"""`harness status STUDY`: the trials of a sweep study, read from its Optuna storage.

    harness status quickstart                       # studies/quickstart.db under the harness root
    harness status quickstart --root ~/experiments  # ~/experiments/studies/quickstart.db, from any folder
    harness status lr_search --storage postgresql://user@host/db --verbose

One line per trial: number, state, axis values and seed, objective values, duration, run directory (and
the Slurm job, ARRAYJOB_TASK, of a trial run by --launcher slurm), and the reason for a failed, pruned or interrupted
trial (with the trial that retried it). A running trial also shows where it is: stage, step/total, loss and its ETA,
from the progress.json its run writes (harness/run/progress.py).
--verbose adds the `harness train ...` command that reproduces each trial on its own.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from harness.commands.common import add_root, use_root
from harness.run.progress import describe, read_progress


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study name (the spec's `study:`)")
    p.add_argument("--storage", default="", help="Optuna storage URL (default sqlite:///ROOT/studies/<study>.db)")
    p.add_argument("--verbose", "-v", action="store_true", help="also print each trial's reproduce command")
    p.add_argument("--json", action="store_true", help="print the rows as JSON lines instead of a table")
    add_root(p)


def trial_rows(study) -> list[dict]:
    """Plain rows for every trial of a study (also used by tests and reports)."""
    trials = study.get_trials(deepcopy=False)
    objectives = study.user_attrs.get("objectives") or [f"value{i}" for i in range(len(study.directions))]
    from harness.sweep.retry import NOT_RETRIED, TRIAL_FAILED, ended

    successor: dict[int, int] = {}
    for t in trials:
        origin = t.system_attrs.get("requeued_from")
        history = t.system_attrs.get("retry_history") or []
        if origin is not None:  # re-queued (harness/sweep/retry.py requeue)
            successor[origin] = t.number
        elif history:  # a stale trial retried by Optuna's RetryHeartbeatStaleTrialCallback (studies of older versions)
            successor[history[-1]] = t.number
    rows = []
    for t in trials:
        ua = t.user_attrs
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        reason = ua.get("reason", "")
        if t.state.name == "FAIL" and not reason:
            reason = "interrupted: its driver stopped (no heartbeat within the grace period)"
        if t.number in successor:
            reason += f"; retried as trial {successor[t.number]}"
        elif t.state.name == "FAIL" and ended(t) in (TRIAL_FAILED, NOT_RETRIED):
            used = f"after {ua.get('failures', 0)} retries (max_retries); " if ended(t) == TRIAL_FAILED else ""
            reason += f"; not retried {used}`harness sweep SPEC --retry-failed` queues it again"
        elif t.state.name == "FAIL":
            reason += "; re-queued by the next `harness sweep` run"
        rows.append({
            "number": t.number, "state": t.state.name, "params": ua.get("params", dict(t.params)), "seed": ua.get("seed"),
            "values": dict(zip(objectives, t.values)) if t.values else {}, "duration_s": duration,
            "wall_time_s": ua.get("wall_time_s"), "overhead_s": ua.get("overhead_s"),
            "run_dir": ua.get("run_dir", ""), "host": ua.get("host", ""), "slurm_job": ua.get("slurm_job", ""),
            "reason": reason.lstrip("; "),
            "pruned_at_step": ua.get("pruned_at_step"), "overrides": ua.get("overrides", []),
            "queued_because": ua.get("queued_because", ""),
            "progress": _progress(t, ua.get("run_dir", "")),
        })
    return rows


def _progress(trial, run_dir: str) -> dict | None:
    """A running trial's progress.json (this attempt's: not older than the trial's start), else None."""
    if trial.state.name != "RUNNING" or not run_dir:
        return None
    snap = read_progress(run_dir)
    started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    if snap is None or float(snap.get("updated_at") or 0) < started - 1:
        return None
    return snap


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def run(args: argparse.Namespace) -> int:
    import optuna

    from harness import paths
    from harness.sweep.storage import _sqlite_path, default_storage_url, open_storage

    use_root(args)
    try:
        paths.check_name(args.study, "study")
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    url = args.storage or default_storage_url(args.study)
    db = _sqlite_path(url)
    if db is not None and not db.exists():
        print(f"no study database at {db}. Run `harness sweep sweeps/{args.study}.yaml` first, or pass --root DIR "
              "(the folder that holds studies/; $HARNESS_ROOT) or --storage URL.", file=sys.stderr)
        return 1
    try:
        study = optuna.load_study(study_name=args.study, storage=open_storage(url))
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(url))]
        print(f"no study {args.study!r} in {url}; it holds: {', '.join(names) or 'no studies'}", file=sys.stderr)
        return 1
    rows = trial_rows(study)
    if args.json:
        for r in rows:
            print(json.dumps(r, default=str))
        return 0
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    dirs = ", ".join(f"{o} ({d.name.lower()})" for o, d in zip(study.user_attrs.get("objectives", []), study.directions))
    print(f"study {args.study} ({url}): {len(rows)} trials {counts}; objectives: {dirs}")
    cwd = Path.cwd()
    for r in rows:
        axes = " ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items()) + f" seed={r['seed']}"
        vals = " ".join(f"{k}={_fmt(v)}" for k, v in r["values"].items()) or "-"
        dur = f"{r['duration_s']:.1f}s" if r["duration_s"] is not None else "-"
        run_dir = r["run_dir"]
        try:
            run_dir = str(Path(run_dir).relative_to(cwd)) if run_dir else "-"
        except ValueError:
            pass
        job = f"  slurm {r['slurm_job']}" if r["slurm_job"] else ""  # the array task that ran it (ARRAYJOB_TASK)
        print(f"{r['number']:>4}  {r['state']:<8} {axes:<40} {vals:<30} {dur:>8}  {run_dir}{job}")
        if r["state"] == "RUNNING":
            print(f"{'':>6}progress: {describe(r['progress']) if r['progress'] else 'starting (no progress.json yet)'}")
        if r["reason"]:
            print(f"{'':>6}reason: {r['reason']}")
        if args.verbose and r["queued_because"]:
            print(f"{'':>6}queued: {r['queued_because']}")
        if args.verbose and r["overrides"]:
            print(f"{'':>6}reproduce: harness {study.user_attrs.get('command', 'train')} {shlex.join(r['overrides'])}")
    return 0
