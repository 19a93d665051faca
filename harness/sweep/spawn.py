"""`harness sweep SPEC --workers N`: N local worker processes (the same command with --worker), their events
relayed to the driver's printer. Each worker dies with its driver: Linux sends it SIGTERM when the driver
dies (PR_SET_PDEATHSIG, even after kill -9), so it interrupts its trial (re-queued with the same run_id)
and exits instead of finishing the study alone; its trial's child gets SIGKILL if the worker dies too.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading

from harness.run.record import EXIT_CODES
from harness.sweep.worker import die_with_parent

EVENT_PREFIX = "@@harness-sweep "  # worker processes report to their driver with these lines


def emit_json(ev: dict) -> None:
    """A worker's event, for its driver. A driver that is gone (killed) is not a reason to fail a trial."""
    try:
        print(EVENT_PREFIX + json.dumps(ev, default=str), flush=True)
    except (BrokenPipeError, ValueError):  # ValueError: stdout already closed after a broken pipe
        pass


def worker_command(args: argparse.Namespace, url: str, python: str | None = None) -> list[str]:
    """The command of one worker: `--workers N` starts it N times here, a Slurm array task runs it once
    (harness/sweep/slurm.py), and docs/cluster.md runs it in a Kubernetes Job."""
    return [python or sys.executable, "-m", "harness", "sweep", args.spec, *args.overrides, "--storage", url,
            "--runs-root", args.runs_root, "--worker"] + (["--study", args.study] if args.study else []) + (["--stream"] if args.stream else []) + (["--cold"] if getattr(args, "cold", False) else [])


GO = "go"  # the line a worker started with --wait-for-driver reads on its stdin before it looks at the study


def start_workers(args: argparse.Namespace, n: int, url: str) -> list[subprocess.Popen]:
    """N local worker processes, started before the driver composes and queues the trials: each starts its fork
    server at once (its imports run beside the driver's checks) and waits for a GO line on its stdin before it
    opens the study (spawn_workers sends it); end of input instead (stop_workers) makes it stop and exit 0."""
    cmd = worker_command(args, url) + ["--wait-for-driver"]
    # N trainers on one machine: split the cores between them, or their OpenMP threads fight
    # (oversubscribed spin-waiting made training several times slower on a 2-core machine).
    threads_each = str(max(1, (os.cpu_count() or 1) // n))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", threads_each))
    return [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, preexec_fn=die_with_parent(signal.SIGTERM)) for _ in range(n)]


def _tell(procs: list[subprocess.Popen], line: str | None) -> None:
    """Write `line` to each worker's stdin (None: nothing) and close it."""
    for p in procs:
        try:
            if line is not None:
                p.stdin.write(line + "\n")
            p.stdin.close()
        except (BrokenPipeError, OSError, ValueError):  # a worker that has already exited
            pass


def wait_for_driver() -> bool:
    """In a worker started by start_workers: block until the driver has queued the trials. True: go on;
    False: the driver stopped (a bad spec, Ctrl-C) or died, so the worker exits without touching the study."""
    try:
        return sys.stdin.readline().strip() == GO
    except (OSError, ValueError):
        return False


def stop_workers(procs: list[subprocess.Popen], timeout_s: float = 10.0) -> None:
    """Workers from start_workers that were never told GO: close their stdin (they stop their fork servers and
    exit), then make sure they are gone."""
    _tell(procs, None)
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def spawn_workers(procs: list[subprocess.Popen], printer) -> int:
    """The local worker processes of start_workers, told GO now, their events relayed here. Returns 130 if any
    was interrupted, else the highest exit code (1: a worker's driver error)."""
    _tell(procs, GO)
    lock = threading.Lock()

    def relay(i: int, p: subprocess.Popen) -> None:
        for line in p.stdout:
            with lock:
                if line.startswith(EVENT_PREFIX):
                    printer(json.loads(line[len(EVENT_PREFIX):]))
                elif line.strip():
                    printer.write(f"[worker {i}] {line.rstrip()}")

    threads = [threading.Thread(target=relay, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    try:
        rcs = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        rcs = [p.wait() for p in procs]
    for t in threads:
        t.join(timeout=5)
    interrupted = EXIT_CODES["interrupted"]
    return interrupted if interrupted in rcs else max(rcs)
