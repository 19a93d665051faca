"""`harness sweep SPEC --launcher NAME ...`: where the sweep's workers run (options: harness/sweep/launcher.py;
step by step: docs/cluster.md). Used by harness/commands/sweep.py, which queues the study as always and then,
for a launcher other than `local`, hands over here instead of running workers itself.

    harness sweep SPEC --workers 4                                        # local: 4 worker processes (default)
    harness sweep SPEC --launcher slurm --workers 8 --storage URL --partition gpu --gpus-per-trial 1 --time 04:00
    harness sweep SPEC --launcher slurm --workers 8 --storage URL --dry-run   # print the sbatch script, submit nothing
    harness sweep SPEC --launcher external --workers 8 --storage URL          # queue; print the worker command

Bad options exit 2 before anything is queued, all at once (a --time that is not HH:MM, --workers 0, Slurm
without sbatch on PATH, the default SQLite file for workers on other nodes, ...).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from harness.sweep import slurm
from harness.sweep.launcher import LauncherError, LauncherSpec, resolve as resolve_options
from harness.sweep.spawn import worker_command
from harness.sweep.spec import SweepSpec, find_spec


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the workers run (docs/cluster.md); flags override the spec's `launcher:`")
    g.add_argument("--launcher", default=None, metavar="NAME",
                   help="local (default: --workers processes here), slurm (a job array through sbatch), external (queue "
                        "and print the worker command), or a preset in launcher/ of a --config-dir")
    g.add_argument("--partition", default=None, help="Slurm partition of the array tasks")
    g.add_argument("--account", default=None, help="Slurm account to charge")
    g.add_argument("--qos", default=None, help="Slurm quality of service")
    g.add_argument("--time", default=None, metavar="HH:MM", help="time limit of each array task: HH:MM, HH:MM:SS or D-HH:MM")
    g.add_argument("--mem", default=None, help="memory of each array task, e.g. 16G")
    g.add_argument("--cpus-per-trial", default=None, metavar="C", help="CPUs of each array task (one trial at a time each)")
    g.add_argument("--gpus-per-trial", default=None, metavar="G", help="GPUs of each array task (--gres=gpu:G)")


def resolve(args: argparse.Namespace, spec: SweepSpec, url: str) -> LauncherSpec:
    """The launcher for this command: preset < the spec's `launcher:` < flags. Sets args.workers. A worker process
    (--worker) never launches. Raises LauncherError (exit 2) with every problem; prints warnings."""
    if args.worker:
        args.workers, args.trials_here = 1, True
        return LauncherSpec()
    flags = {"kind": args.launcher, "workers": args.workers, "partition": args.partition, "account": args.account,
             "qos": args.qos, "time": args.time, "mem": args.mem, "cpus_per_trial": args.cpus_per_trial,
             "gpus_per_trial": args.gpus_per_trial}
    opts = resolve_options(spec.launcher, flags)
    args.workers = opts.workers or 1
    args.trials_here = opts.kind == "local"  # else train.device=cuda is checked where the trials run, not here
    if opts.kind == "local":
        return opts
    errors, warnings = slurm.storage_notes(url, bool(args.storage), args.runs_root)
    if opts.kind == "external":
        errors = [e.replace("--launcher slurm", "--launcher external") for e in errors]
    elif not args.dry_run and slurm.sbatch_missing():
        errors.append(slurm.sbatch_missing())
    if errors:
        raise LauncherError("command line", errors)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    return opts


def _worker(args: argparse.Namespace, url: str) -> list[str]:
    """The worker command with the spec's absolute path (array tasks may start in another folder)."""
    found = find_spec(args.spec)
    absolute = argparse.Namespace(**{**vars(args), "spec": str(found.resolve()) if found else args.spec})
    return worker_command(absolute, url)


def _script(args: argparse.Namespace, spec: SweepSpec, opts: LauncherSpec, url: str, path: Path) -> str:
    return slurm.render(opts, study=spec.study, worker=_worker(args, url), path=path, cwd=Path.cwd(),
                        command_line=shlex.join(["harness", *sys.argv[1:]]), url=url, grace_period_s=spec.grace_period)


def dry_run(args: argparse.Namespace, spec: SweepSpec, opts: LauncherSpec, url: str) -> None:
    """What the launcher would do: the Slurm script, or the worker command."""
    if opts.kind == "slurm":
        path = slurm.script_path(spec.study)
        print(f"\n--launcher {opts.preset}: a real run writes this script to {path} and submits it with sbatch:\n")
        print(_script(args, spec, opts, url, path))
        if slurm.sbatch_missing():
            print(f"note: {slurm.sbatch_missing()}", file=sys.stderr)
    elif opts.kind == "external":
        print(f"\n--launcher {opts.preset}: a real run queues the trials and prints the worker command to start "
              f"{args.workers} time(s):\n  {shlex.join(['harness', *_worker(args, url)[3:]])}")


def submit(args: argparse.Namespace, spec: SweepSpec, opts: LauncherSpec, url: str) -> int:
    """After the study is queued: write and submit the Slurm script (or print the worker command). 0 once
    submitted, 1 when sbatch fails (the queued trials wait for the next submission)."""
    status = f"harness status {spec.study} --storage {shlex.quote(url)}"
    if opts.kind == "external":
        print(f"queued. Start {args.workers} worker(s), each with this command, wherever they reach the storage and "
              f"the runs root (a Kubernetes indexed Job: docs/cluster.md):\n  {shlex.join(['harness', *_worker(args, url)[3:]])}\n"
              f"progress: {status}")
        return 0
    path = slurm.script_path(spec.study)
    slurm.write_script(path, _script(args, spec, opts, url, path), secret=slurm.has_password(url))
    print(f"wrote {path}")
    try:
        job = slurm.submit(path)
    except slurm.SubmitError as exc:
        print(f"sweep not submitted: {exc}. The trials stay queued: fix the cause and run `sbatch {path}` or the "
              "same command again.", file=sys.stderr)
        return 1
    (path.parent / f"{path.stem}.job").write_text(job + "\n", encoding="utf-8")
    print(f"submitted Slurm job {job}: {args.workers} array task(s) {job}_0..{job}_{args.workers - 1}, one worker each; "
          f"logs {path.parent}/harness-{spec.study}-{job}_<task>.out\n  squeue -j {job}    {status}    scancel {job}")
    return 0
