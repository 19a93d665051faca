"""The Slurm launcher: a job array whose tasks each run one ordinary sweep worker (spawn.worker_command, the
command `--workers N` starts N times), written as a script you can read (studies/<study>/slurm/*.sbatch) and
submitted with sbatch. The driver queues the study first; the array tasks only take trials from its storage,
so cells run exactly once however many tasks start, fail or are cancelled (harness/sweep/retry.py).

    harness sweep sweeps/lr_search.yaml --launcher slurm --workers 8 --storage postgresql://me@login1/harness \\
        --partition gpu --gpus-per-trial 1 --time 04:00 [--dry-run: print the script, submit nothing]

Options: harness/sweep/launcher.py. Step by step, preemption and GPUs: docs/cluster.md.
"""

from __future__ import annotations

import datetime
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from harness import paths
from harness.sweep.launcher import LauncherSpec

# Exported in the script when set here (the rest of the environment comes with sbatch's default --export=ALL).
EXPORTED = ("HARNESS_CONFIG_PATH", "HARNESS_DATA", "HARNESS_CACHE", "HARNESS_CONF", "PYTHONPATH")


class SubmitError(RuntimeError):
    """sbatch refused the script or could not reach the controller; the message holds its output."""


def sbatch_missing() -> str:
    """Why this machine cannot submit ("" when it can)."""
    if shutil.which("sbatch"):
        return ""
    return ("sbatch is not on PATH: run this command on a login node of the Slurm cluster (or load its module), "
            "or use --launcher external and start the workers yourself")


def storage_notes(url: str, explicit: bool, runs_root: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) about a storage URL and runs root that array tasks on other nodes must reach."""
    errors, warnings = [], []
    fix = ("--storage postgresql://USER@HOST/DB (a server every node reaches; docs/cluster.md), or "
           "--storage journal:/shared/path/STUDY.log on a shared file system")
    if url.startswith("sqlite"):
        if not explicit or url == "sqlite:///:memory:":
            errors.append(f"--launcher slurm needs a storage that every node reaches, not the default SQLite file {url}: "
                          f"use {fix}. SQLite works only on a shared file system whose locks work (often not NFS or "
                          "Lustre); to accept that, pass that file yourself: --storage sqlite:////shared/path/STUDY.db")
        else:
            warnings.append(f"SQLite storage {url}: every node must see this file on a shared file system with working "
                            f"fcntl locks (NFS and Lustre often lack them: lost or doubled trials). Safer: {fix}")
    elif url.startswith("journal:"):
        path = url[len("journal:"):].removeprefix("//")
        if path.startswith("/tmp/"):
            warnings.append(f"journal file {path} is under /tmp, which is local to each node: use a shared file system")
    else:
        host = urlsplit(url).hostname or ""
        if host in ("", "localhost", "127.0.0.1", "::1"):
            warnings.append(f"the storage URL names {host or 'a local socket'}: an array task on another node connects to "
                            "its own machine. Fine on a one-node cluster; elsewhere name the database server's host")
    if runs_root.startswith("/tmp/"):
        warnings.append(f"runs root {runs_root} is under /tmp, which is local to each node: run directories (and the "
                        "checkpoints a re-queued trial resumes from) belong on a shared file system (--runs-root)")
    return errors, warnings


def script_path(study: str, now: datetime.datetime | None = None) -> Path:
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return paths.studies_dir() / study / "slurm" / f"{study}-{stamp}.sbatch"


def render(opts: LauncherSpec, *, study: str, worker: list[str], path: Path, cwd: Path, command_line: str,
           url: str, grace_period_s: int) -> str:
    """The job-array script: #SBATCH lines from the options, the environment harness needs, then `exec` of the
    worker command (exec: the worker itself gets Slurm's signals, not a shell in between)."""
    n = opts.workers or 1
    sb = [f"--job-name=harness-{study}", f"--array=0-{n - 1}", "--nodes=1", "--ntasks=1",
          f"--cpus-per-task={opts.cpus_per_trial}"]
    sb += [f"--gres=gpu:{opts.gpus_per_trial}"] if opts.gpus_per_trial else []
    sb += [f"--{k}={v}" for k, v in (("time", opts.time), ("partition", opts.partition), ("account", opts.account),
                                      ("qos", opts.qos), ("mem", opts.mem)) if v]
    sb += [f"--signal=B:TERM@{opts.stop_before_s}"] if opts.stop_before_s else []
    sb += [f"--output={path.parent}/%x-%A_%a.out", "--open-mode=append", *opts.sbatch_args]
    status = f"harness status {study} --storage {shlex.quote(url)}"
    lines = [
        "#!/bin/bash",
        f"# Sweep workers for study {study}: a Slurm job array of {n} task(s), each running one ordinary sweep worker.",
        f"# Written by: {command_line}",
        f"# at {datetime.datetime.now().isoformat(timespec='seconds')} (preset {opts.preset}; docs/cluster.md).",
        "#",
        "# Each task takes queued trials from the study's storage and runs them one at a time, each as a child process",
        "# (`harness train ...`, output in <run_dir>/train.log), until no trial is queued or running. A cancelled,",
        "# preempted or timed-out task gets SIGTERM (with --signal, before the time limit): its worker interrupts the",
        "# trial, which is re-queued with the same run_id and resumed by another task from its last checkpoint. After a",
        f"# SIGKILL the trial's heartbeat stops and another worker re-queues it after {grace_period_s}s (heartbeat.grace_period_s).",
        f"# Progress: {status}",
        f"# More workers later: sbatch --array=0-3 {path}   Cancel: scancel <job id>",
        *[f"#SBATCH {a}" for a in sb],
        "set -eo pipefail",
        f"cd {shlex.quote(str(cwd))}",
        f"export HARNESS_ROOT={shlex.quote(str(paths.root()))}",
        *[f"export {k}={shlex.quote(os.environ[k])}" for k in EXPORTED if os.environ.get(k)],
        f'export OMP_NUM_THREADS="${{SLURM_CPUS_PER_TASK:-{opts.cpus_per_trial}}}"  # one trainer per task uses its cores',
    ]
    if opts.setup:
        lines += ["# setup (the launcher's `setup:`)", *opts.setup]
    lines += [f"exec {shlex.join(worker)}", ""]
    return "\n".join(lines)


def write_script(path: Path, text: str, secret: bool) -> None:
    """The script, and its log folder; readable by its owner only when it holds a password (in the storage URL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o700 if secret else 0o755)


def has_password(url: str) -> bool:
    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return False


def submit(script: Path) -> str:
    """sbatch the script; returns the job id. SubmitError with sbatch's own message when it fails."""
    try:
        out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SubmitError(f"sbatch {script}: {type(exc).__name__}: {exc}") from None
    if out.returncode != 0:
        msg = (out.stderr or out.stdout).strip().splitlines()
        raise SubmitError(f"sbatch {script} failed (exit {out.returncode}): {' | '.join(msg[-3:]) or 'no output'}")
    return out.stdout.strip().split(";")[0]
