"""`harness sweep SPEC`: run or resume a study (the sweep stage is harness/sweep/; spec format docs/sweeps.md).

    harness sweep sweeps/quickstart.yaml                       # run or resume the study
    harness sweep sweeps/quickstart.yaml --dry-run             # list the trials, train nothing
    harness sweep sweeps/method_comparison.yaml --workers 2    # two local worker processes
    harness sweep sweeps/lr_search.yaml --storage postgresql://user@host/db   # join from any machine

Every trial's config is composed before anything trains (harness/sweep/plan.py check_trials); the grid
is enqueued exactly once (harness/sweep/study.py); each trial runs in its own child process
(harness/sweep/worker.py). `harness status STUDY` (harness/commands/status.py) lists the trials.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

from harness import paths
from harness.commands.common import add_config_dir, use_config_dirs
from harness.sweep.plan import (
    check_trials,
    expand_grid,
    format_value,
    merge_overrides,
    pin_axes,
    plan_grid,
    validation_points,
)
from harness.sweep.spec import BOOKKEEPING, PlannedTrial, SpecError, SweepSpec, _override_key, load_spec
from harness.sweep.storage import default_storage_url, study_lock
from harness.sweep.study import enqueue_grid, open_study, study_counts
from harness.sweep.worker import WorkerOptions, _emit_json, _spawn_workers, worker_loop


def _fmt_params(params: dict, seed: Any) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) + f" seed={seed}"


class Printer:
    """Study-level progress bar plus one line per trial start / finish."""

    def __init__(self, study: str, total: int | None, done: int):
        from tqdm import tqdm

        self.study = study
        self.bar = tqdm(total=total, initial=done, desc=f"sweep {study}", unit="trial", dynamic_ncols=True, leave=True, disable=None)

    def __call__(self, ev: dict) -> None:
        kind, n = ev.get("event"), ev.get("trial")
        if kind == "start":
            line = f"[{self.study}] trial {n} start   {_fmt_params(ev['params'], ev['seed'])}  -> {ev['run_dir']}"
        elif kind == "finish":
            vals = " ".join(f"{k}={v:.4g}" for k, v in (ev.get("values") or {}).items())
            why = f"  ({ev['reason']})" if ev.get("reason") else ""
            line = f"[{self.study}] trial {n} {ev['state']:<8} {ev['wall_time_s']:.1f}s  {_fmt_params(ev['params'], ev['seed'])}  {vals}{why}"
            if ev.get("state") != "INTERRUPTED":
                self.bar.update(1)
        elif kind == "output":
            line = f"[trial {n}] {ev['line']}"
        elif kind == "wait":
            line = f"[{self.study}] nothing queued; waiting for {ev['running']} running trial(s) (stale ones are retried)"
        else:
            line = f"[{self.study}] {ev}"
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="sweep spec, e.g. sweeps/quickstart.yaml (format: docs/sweeps.md)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every trial; one naming a grid axis pins it (e.g. method=lora)")
    p.add_argument("--storage", default="", help="Optuna storage: sqlite:///PATH, postgresql://user@host/db, journal:PATH "
                   "(default sqlite:///studies/<study>.db)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (other machines join with the same command and --storage)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the trials the spec creates; train nothing")
    p.add_argument("--runs-root", default="runs", help="run directories go to RUNS_ROOT/<study>/<run_id>/ (default runs)")
    p.add_argument("--study", default="", help="study name instead of the spec's `study:`")
    p.add_argument("--stream", action="store_true", help="echo each trial's output (always kept in <run_dir>/train.log)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a process started by --workers N
    add_config_dir(p)  # workers and trials inherit it through HARNESS_CONFIG_PATH


def prepare(args: argparse.Namespace, url: str = "") -> tuple[SweepSpec, list[PlannedTrial], list[str]]:
    """Load the spec, apply the command line, plan and compose every trial (all errors at once)."""
    spec = load_spec(args.spec)
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
    if spec.sampler == "grid":
        planned = plan_grid(spec)
        errs, tags = check_trials(spec, planned, url)
    else:
        planned = []
        errs, tags = check_trials(spec, validation_points(spec), url)
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


def run(args: argparse.Namespace) -> int:
    use_config_dirs(args)
    try:
        study_name = args.study or load_spec(args.spec).study
        url = args.storage or default_storage_url(study_name)
        spec, planned, tags = prepare(args, url)
    except (SpecError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.dry_run:
        _print_plan(spec, planned, url)
        print("dry run: config OK for every trial listed; nothing trained")
        return 0
    if args.worker:
        return worker_loop(spec, WorkerOptions(url, args.runs_root, args.stream, emit=_emit_json))
    try:
        study, storage = open_study(spec, url, create=True)
        if planned:
            added = enqueue_grid(study, storage, url, spec, planned)
            # let workers carry the base tracker tags of the composed config
            if tags:
                with study_lock(storage, url, spec.study):
                    study.set_user_attr("tags", tags)
        else:
            added = 0
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    counts = study_counts(study)
    finished = sum(counts.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL"))
    total = len(planned) if planned else (spec.n_trials * len(spec.seeds) if spec.n_trials else None)
    print(f"study {spec.study} at {url}: {added} trials queued now, existing {counts or 'none'}; runs under {args.runs_root}/{spec.study}/")
    printer = Printer(spec.study, total, min(finished, total) if total else finished)
    t0 = time.time()
    try:
        if args.workers > 1:
            rc = _spawn_workers(args, args.workers, url, printer)
        else:
            rc = worker_loop(spec, WorkerOptions(url, args.runs_root, args.stream, emit=printer), study, storage)
    finally:
        printer.close()
    counts = study_counts(study)
    print(f"study {spec.study}: {counts} after {time.time() - t0:.0f}s. `harness status {spec.study}"
          f"{' --storage ' + shlex.quote(url) if args.storage else ''}` lists the trials.")
    if rc == 130:
        print("interrupted: run the same command again to resume (finished trials are kept; interrupted ones are retried).")
    return rc
