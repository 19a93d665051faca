"""`harness sweep SPEC`: run or resume a study (the sweep stage is harness/sweep/; spec format docs/sweeps.md).

    harness sweep sweeps/quickstart.yaml                       # run or resume the study
    harness sweep sweeps/quickstart.yaml --dry-run             # list the trials, train nothing
    harness sweep sweeps/quickstart.yaml --retry-failed        # queue the failed cells again, then run
    harness sweep sweeps/method_comparison.yaml --workers 2    # two local worker processes
    harness sweep sweeps/lr_search.yaml --storage postgresql://user@host/db   # join from any machine
    harness sweep quickstart --root ~/experiments              # a shipped spec by name, from any folder

Runs go to runs/<study>/ and the SQLite study to studies/<study>.db under the harness root (--root DIR /
$HARNESS_ROOT, default the current directory). A spec is a file, or the name of a shipped one (sweeps/NAME.yaml
in the repository or the installed package).

Data flow: load_spec() (harness/sweep/spec.py) parses and checks the spec; plan_grid() expands the grid
(every cell x seed) and check_trials() composes EVERY trial's config, with its real run id, before anything
trains, reporting all errors at once (exit code 2). The study lives in Optuna storage; grid cells are
enqueued exactly once under a storage-level lock and workers take WAITING trials under the same lock.
Each trial runs `python -m harness train ...` in its own child process (harness/sweep/worker.py). A driver
that dies (kill -9, reboot) is not a failure of its trial: the trial is re-queued (same run_id, so the
trainer resumes) without limit; failures of the trial itself are retried up to max_retries times
(harness/sweep/retry.py). Exit codes: 0 every cell finished (COMPLETE or PRUNED), 1 cells left unfinished
(each listed with its trial, params and reason) or the driver failed (one message, no traceback),
2 a bad spec or command line, 130 interrupted. Spec format: docs/sweeps.md.

Progress (harness/sweep/progress.py): trials finished / running / failed / pruned and each running trial's stage,
step and ETA (read from the progress.json its child writes), live on a terminal, as lines on stderr elsewhere.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from pathlib import Path

from harness import paths
from harness.commands import launch
from harness.commands.common import add_config_dir, add_root, check_overrides, use_config_dirs, use_root
from harness.run.record import EXIT_CODES
from harness.sweep.plan import (
    check_trials,
    expand_grid,
    format_value,
    merge_overrides,
    pin_axes,
    plan_grid,
    validation_points,
)
from harness.sweep.progress import SweepProgress, fmt_params
from harness.sweep.retry import retry_failed, unfinished
from harness.sweep.spawn import emit_json, spawn_workers, start_workers, stop_workers, wait_for_driver
from harness.sweep.spec import BOOKKEEPING, PlannedTrial, SpecError, SweepSpec, _override_key, load_spec
from harness.sweep.storage import default_storage_url, study_lock
from harness.sweep.study import enqueue_grid, open_study, study_counts
from harness.sweep.worker import DriverError, WorkerOptions, early_starter, worker_loop


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="sweep spec, e.g. sweeps/quickstart.yaml, or a shipped spec's name (quickstart); format: docs/sweeps.md")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every trial; one naming a grid axis pins it (e.g. method=lora)")
    p.add_argument("--storage", default="", help="Optuna storage: sqlite:///PATH, postgresql://user@host/db, journal:PATH "
                   "(default sqlite:///ROOT/studies/<study>.db)")
    p.add_argument("--workers", type=int, default=None, help="worker processes here, or Slurm array tasks with --launcher slurm "
                   "(default 1; other machines join with the same command and --storage)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the trials the spec creates; train nothing")
    p.add_argument("--runs-root", default=None, help="run directories go to RUNS_ROOT/<study>/<run_id>/ (default ROOT/runs)")
    p.add_argument("--study", default="", help="study name instead of the spec's `study:`")
    p.add_argument("--stream", action="store_true", help="echo each trial's output (always kept in <run_dir>/train.log)")
    p.add_argument("--retry-failed", action="store_true", help="queue the failed cells again (same params and run_id) before running")
    p.add_argument("--cold", action="store_true", help="start every trial in a fresh process (default: forked from a warm "
                   "server that has the libraries imported, harness/sweep/warm.py; also HARNESS_SWEEP_COLD=1)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a process started by --workers N
    p.add_argument("--wait-for-driver", action="store_true", help=argparse.SUPPRESS)  # ... before its driver queued the trials
    add_config_dir(p)  # workers and trials inherit it through HARNESS_CONFIG_PATH
    add_root(p)  # and HARNESS_ROOT
    launch.add_arguments(p)  # --launcher slurm|external and its options (harness/commands/launch.py, docs/cluster.md)


def prepare(args: argparse.Namespace, url: str = "") -> tuple[SweepSpec, list[PlannedTrial], list[str]]:
    """Load the spec, apply the command line, plan and compose every trial (all errors at once)."""
    spec = load_spec(args.spec)
    check_overrides(args.overrides, "sweep")
    if args.study:
        paths.check_name(args.study, "--study")
        spec.study = args.study
    bad = [o for o in args.overrides if _override_key(o) in (*BOOKKEEPING, "train.seed")]
    if bad:
        raise SpecError(args.spec, [f"{o}: set by the driver; use `seeds:` in the spec for train.seed" for o in bad])
    spec, _ = pin_axes(spec, list(args.overrides))
    if spec.references:  # published numbers travel in each run's config, for reports
        spec.base = merge_overrides(spec.base, [f"references={format_value(spec.references)}"])
    if args.worker:  # started by a driver that has checked everything already
        return spec, plan_grid(spec) if spec.sampler == "grid" else [], []
    runs_root = args.runs_root  # absolute (run() resolves it), as the workers pass it to each trial
    if spec.sampler == "grid":
        planned = plan_grid(spec)
        errs, tags = check_trials(spec, planned, url, runs_root, device_here=args.trials_here)
    else:
        planned = []
        errs, tags = check_trials(spec, validation_points(spec), url, runs_root, device_here=args.trials_here)
    if errs:
        raise SpecError(args.spec, errs)
    return spec, planned, tags


def _print_plan(spec: SweepSpec, planned: list[PlannedTrial], url: str) -> None:
    print(f"study {spec.study} ({spec.source}): sampler={spec.sampler} pruner={spec.pruner.type} "
          f"objectives={', '.join(f'{o.metric} ({o.direction})' for o in spec.objectives)} storage={url}")
    if planned:
        print(f"{len(planned)} trials ({len(expand_grid(spec.grid))} cells x {len(spec.seeds)} seeds), each reproducible alone:")
        for i, t in enumerate(planned):
            print(f"  {i:>3}  cell {t.index:<3} seed {t.seed}:  harness {spec.command} {shlex.join(t.overrides)}")
    else:
        print(f"trials are sampled at run time: n_trials={spec.n_trials} timeout_s={spec.timeout_s}, each run for seeds {spec.seeds}")
        for k, d in spec.dimensions().items():
            what = f"one of {d.choices}" if d.type == "categorical" else f"{d.type} in [{d.low:g}, {d.high:g}]{' log' if d.log else ''}"
            print(f"  {k}: {what}")
        print(f"  base: harness {spec.command} {shlex.join(merge_overrides(spec.base, [f'train.seed={spec.seeds[0]}']))}")
        print(f"  {len(validation_points(spec))} corner configurations composed and checked")


def _driver_error(exc: Exception) -> str:
    """One line for an error of the driver: the message, and where an unexpected one was raised."""
    if isinstance(exc, DriverError):
        return f"sweep stopped: {exc}"
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"sweep stopped by an error in the driver: {type(exc).__name__}: {exc}{where}. Trials it was running are re-queued by the next run."


def _report_unfinished(spec: SweepSpec, study, planned: list[PlannedTrial], source: str) -> int:
    """List the cells without a COMPLETE or PRUNED trial (trial, params, reason); 1 if there are any."""
    left = unfinished(study, planned if spec.sampler == "grid" else None)
    if not left:
        return 0
    print(f"study {spec.study}: {len(left)} cell(s) unfinished:", file=sys.stderr)
    for u in left:
        trial = f"trial {u.trial}" if u.trial is not None else "no trial"
        print(f"  {trial:<10} {u.state:<10} {fmt_params(u.params, u.seed)}: {u.reason}", file=sys.stderr)
    print(f"`harness sweep {source} --retry-failed` queues the failed ones again; `harness status {spec.study}` lists every trial.",
          file=sys.stderr)
    return 1


class EarlyStart:
    """What a sweep starts before it composes and queues the trials, so the fork servers' library imports (8-9 s
    on 2 cores, harness/sweep/warm.py) overlap that work: this process's fork server when it runs the trials
    itself (one local worker, or a --worker), the worker processes of --workers N (each starts its own server
    and waits for the driver's GO, harness/sweep/spawn.py). Whatever is not handed on is stopped by close()."""

    def __init__(self, args: argparse.Namespace, kind: str, spec: SweepSpec, url: str) -> None:
        self.starter, self.workers = None, []
        if args.dry_run or not (args.worker or kind == "local"):
            return
        if args.workers > 1 and not args.worker:
            self.workers = start_workers(args, args.workers, url)
        else:
            self.starter = early_starter(spec, warm=not args.cold)

    def take_starter(self):
        starter, self.starter = self.starter, None
        return starter

    def take_workers(self) -> list:
        workers, self.workers = self.workers, []
        return workers

    def close(self) -> None:
        if self.starter is not None:
            self.take_starter().close()
        if self.workers:
            stop_workers(self.take_workers())


def run(args: argparse.Namespace) -> int:
    use_config_dirs(args)
    use_root(args)
    args.runs_root = str(Path(args.runs_root).expanduser().resolve() if args.runs_root else paths.runs_root())
    try:
        first = load_spec(args.spec)
        url = args.storage or default_storage_url(args.study or first.study)
        launcher = launch.resolve(args, first, url)  # sets args.workers; bad options: exit 2
    except (SpecError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    early = EarlyStart(args, launcher.kind, first, url)
    try:
        return _run(args, url, launcher, early)
    finally:
        early.close()


def _run(args: argparse.Namespace, url: str, launcher, early: EarlyStart) -> int:
    try:
        spec, planned, tags = prepare(args, url)
    except (SpecError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.dry_run:
        _print_plan(spec, planned, url)
        launch.dry_run(args, spec, launcher, url)  # the Slurm script, or the worker command
        print("dry run: config OK for every trial listed; nothing trained")
        return 0
    if args.worker:
        if args.wait_for_driver and not wait_for_driver():
            return 0  # the driver stopped before queueing (its own message says why)
        try:
            return worker_loop(spec, WorkerOptions(url, args.runs_root, args.stream, emit=emit_json, warm=not args.cold,
                                                   starter=early.take_starter()))
        except Exception as exc:  # noqa: BLE001 - one message, no traceback; the trial is re-queued
            print(_driver_error(exc), file=sys.stderr)
            return 1
    try:
        study, storage = open_study(spec, url, create=True)
        notes: list[str] = []
        added = enqueue_grid(study, storage, url, spec, planned, notes) if planned else 0
        with study_lock(storage, url, spec.study):
            if tags:  # let workers carry the base tracker tags of the composed config
                study.set_user_attr("tags", tags)
            retried = retry_failed(study, {t.cell for t in planned} if planned else None) if args.retry_failed else []
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - storage unreachable, read-only studies dir, ...
        print(_driver_error(exc), file=sys.stderr)
        return 1
    counts = study_counts(study)
    total = len(planned) if planned else (spec.n_trials * len(spec.seeds) if spec.n_trials else None)
    print(f"study {spec.study} at {url}: {added} trials queued now, existing {counts or 'none'}; runs under {args.runs_root}/{spec.study}/")
    for old, new, why in retried:
        print(f"  --retry-failed: trial {old} re-queued as trial {new} ({why.split(': ', 1)[-1][:200]})")
    for note in notes:
        print(f"  note: {note}")
    if launcher.kind != "local":  # the workers run elsewhere: submit them (or print their command) and return
        return launch.submit(args, spec, launcher, url)
    printer = SweepProgress(spec.study, total, counts)  # harness/sweep/progress.py: live on a terminal, else lines
    t0 = time.time()
    try:
        if args.workers > 1:
            rc = spawn_workers(early.take_workers() or start_workers(args, args.workers, url), printer)
        else:
            rc = worker_loop(spec, WorkerOptions(url, args.runs_root, args.stream, emit=printer, warm=not args.cold,
                                                 starter=early.take_starter()), study, storage)
    except Exception as exc:  # noqa: BLE001 - one message, no traceback; the trial is re-queued
        printer.close()
        print(_driver_error(exc), file=sys.stderr)
        return 1
    finally:
        printer.close()
    counts = study_counts(study)
    print(f"study {spec.study}: {counts} after {time.time() - t0:.0f}s. `harness status {spec.study}"
          f"{' --storage ' + shlex.quote(url) if args.storage else ''}` lists the trials.")
    if rc == EXIT_CODES["interrupted"]:
        print("interrupted: run the same command again to resume (finished trials are kept; interrupted ones are retried).")
        return rc
    left = _report_unfinished(spec, study, planned, args.spec)
    return rc or left
