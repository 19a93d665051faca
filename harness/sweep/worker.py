"""A sweep worker: take the next trial, run it as a child process (`python -m harness train ...`), record
its outcome (COMPLETE / PRUNED / FAIL with a reason), keep its heartbeat, and go on until the study is done.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness import atomic
from harness.run.record import EXIT_CODES, SCHEMA, flat_metrics, now_iso, read_summary, run_dir_for, write_summary
from harness.sweep.plan import bookkeeping_overrides, merge_overrides
from harness.sweep.spec import SweepSpec
from harness.sweep.storage import record_heartbeat
from harness.sweep.study import next_trial, open_study

TRAIN_CMD_ENV = "HARNESS_SWEEP_TRAIN_CMD"  # tests only: replaces `python -m harness train`


EVENT_PREFIX = "@@harness-sweep "  # worker processes report to their driver with these lines


# --------------------------------------------------------------------------------- worker
@dataclass
class WorkerOptions:
    storage_url: str
    runs_root: str = "runs"
    stream: bool = False  # echo the child's output with a prefix (always written to train.log)
    emit: Callable[[dict], None] = print


def _train_command(command: str = "train") -> list[str]:
    env = os.environ.get(TRAIN_CMD_ENV)
    return shlex.split(env) if env else [sys.executable, "-m", "harness", command]


def _die_with_parent() -> None:
    """Child pre-exec: ask Linux to SIGKILL the child if its worker dies (kill -9), so a resumed
    trial never races an orphaned trainer writing the same run directory."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def _tail(lines: list[str], n: int = 3, width: int = 240) -> str:
    """The child's last lines, each cut to `width` characters, for a failure reason."""
    keep = [ln.strip()[:width] for ln in lines if ln.strip()][-n:]
    return " | ".join(keep) or "no output"


def _record_failure(run_dir: Path, fields: dict, status: str = "failed") -> None:
    """A child that died without finishing its record: mark summary.json failed (or interrupted,
    which the trainer resumes from its last checkpoint), with the reason."""
    summary = read_summary(run_dir)
    if summary is not None and summary.get("status") not in ("running", None):
        return
    summary = summary or {"schema": SCHEMA, "name": run_dir.parent.name, "run_id": run_dir.name,
                          "run_dir": str(run_dir), "started_at": fields.get("started_at")}
    summary.update(status=status, reason=fields["reason"], study=fields["study"], trial=fields["trial"],
                   finished_at=now_iso())
    write_summary(run_dir, summary)


def run_trial(study, trial, spec: SweepSpec, opts: WorkerOptions, storage) -> dict:
    """Run one trial's child process to the end and tell the study its outcome. Returns the event."""
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    run_id, seed, params = attrs["run_id"], attrs["seed"], attrs.get("params", {})
    overrides = attrs["overrides"]
    output_dir = str(Path(opts.runs_root).resolve())
    run_dir = run_dir_for(output_dir, spec.study, run_id)
    tags = list(dict.fromkeys([*study.user_attrs.get("tags", []), spec.study]))  # W&B groups a study by tag
    cmd = [*_train_command(spec.command), *merge_overrides(overrides, bookkeeping_overrides(
        study=spec.study, trial=trial.number, storage=opts.storage_url, run_id=run_id, output_dir=output_dir, tags=tags))]
    run_dir.mkdir(parents=True, exist_ok=True)
    for k, v in {"run_dir": str(run_dir), "host": socket.gethostname(), "worker_pid": os.getpid()}.items():
        trial.set_user_attr(k, v)
    opts.emit({"event": "start", "trial": trial.number, "params": params, "seed": seed, "run_dir": str(run_dir)})
    started_at, t0 = now_iso(), time.time()
    log = open(run_dir / "train.log", "ab")
    log.write(f"\n== trial {trial.number} of study {spec.study} on {socket.gethostname()} at {started_at}: {shlex.join(cmd)}\n".encode())
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
    tail: list[str] = []

    def pump() -> None:
        for line in iter(proc.stdout.readline, b""):
            log.write(line)
            log.flush()
            text = line.decode("utf-8", "replace").rstrip()
            tail.append(text)
            del tail[:-20]
            if opts.stream:
                opts.emit({"event": "output", "trial": trial.number, "line": text})

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    interrupted, ignored = False, {}
    try:
        while True:
            try:
                rc = proc.wait(timeout=spec.heartbeat_interval)
                break
            except subprocess.TimeoutExpired:
                record_heartbeat(storage, trial._trial_id)
    except KeyboardInterrupt:
        interrupted = True
        ignored = _ignore_interrupts()  # a second Ctrl-C must not cut the clean-up short
        try:  # a terminal's Ctrl-C reached the child too; a SIGTERM to this worker did not
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
    pumper.join(timeout=10)
    log.close()
    wall = time.time() - t0
    summary = read_summary(run_dir) or {}
    out = {"event": "finish", "trial": trial.number, "params": params, "seed": seed, "run_dir": str(run_dir),
           "wall_time_s": round(wall, 3), "returncode": rc}
    if isinstance(summary.get("train_time_s"), (int, float)):
        out["overhead_s"] = round(wall - summary["train_time_s"] - (summary.get("eval_time_s") or 0.0), 3)
    for k in ("wall_time_s", "returncode", "overhead_s"):
        if k in out:
            trial.set_user_attr(k, out[k])

    values, state, reason = None, TrialState.FAIL, ""
    interrupted = interrupted or rc == EXIT_CODES["interrupted"]  # the trainer's "interrupted" exit: a Ctrl-C that reached it first
    if interrupted:
        reason = "interrupted: the sweep was stopped (Ctrl-C / SIGTERM); re-queued with the same run_id to resume"
        if rc != EXIT_CODES["interrupted"]:  # the trainer did not get to record it (killed after the grace period)
            reason += f" (child ended by {_signal_name(rc) if rc < 0 else f'exit code {rc}'})"
            _record_failure(run_dir, {"reason": reason, "study": spec.study, "trial": trial.number, "started_at": started_at},
                            status="interrupted")
        trial.set_user_attr("reason", reason)
        _requeue(study, trial)
    elif rc == EXIT_CODES["completed"]:
        flat = flat_metrics(run_dir)
        missing = [o.metric for o in spec.objectives if o.metric not in flat]
        if missing:
            reason = (f"objective metric(s) {', '.join(missing)} missing or not a finite number in {run_dir} "
                      f"(summary.json/eval.json); available: {', '.join(sorted(flat)) or 'none'}")
        else:
            values, state = [flat[o.metric] for o in spec.objectives], TrialState.COMPLETE
    elif rc == EXIT_CODES["pruned"]:
        state = TrialState.PRUNED
        reason = summary.get("reason") or f"pruned at step {summary.get('pruned_at_step')}"
        trial.set_user_attr("pruned_at_step", summary.get("pruned_at_step"))
    elif rc == EXIT_CODES["diverged"]:
        reason = "diverged: " + (summary.get("reason") or "non-finite loss")
    elif rc < 0:
        why = " (out of memory? the kernel's OOM killer sends SIGKILL)" if rc == -signal.SIGKILL else ""
        reason = f"child killed by {_signal_name(rc)}{why}; last output: {_tail(tail)}"
    else:
        detail = summary.get("reason") if summary.get("status") not in (None, "running") else ""
        reason = f"child exited with code {rc}: " + (detail or _tail(tail))
    if reason and not interrupted:
        trial.set_user_attr("reason", reason)
    if rc != 0 and rc not in (3, 4) and not interrupted:
        _record_failure(run_dir, {"reason": reason, "study": spec.study, "trial": trial.number, "started_at": started_at})
    if not interrupted:
        study.tell(trial, values=values, state=state)
    atomic.write_json(run_dir / "trial.json", {
        "study": spec.study, "trial": trial.number, "state": "INTERRUPTED" if interrupted else state.name, "reason": reason,
        "values": dict(zip([o.metric for o in spec.objectives], values or [])), "params": params, "seed": seed,
        "storage": opts.storage_url, "host": socket.gethostname(), "command": cmd, "returncode": rc,
        "wall_time_s": out["wall_time_s"], "overhead_s": out.get("overhead_s"), "started_at": started_at, "finished_at": now_iso(),
    })
    out.update(state="INTERRUPTED" if interrupted else state.name, reason=reason,
               values=dict(zip([o.metric for o in spec.objectives], values or [])))
    if interrupted:
        opts.emit(out)
        _restore(ignored)
        raise KeyboardInterrupt
    return out


def _ignore_interrupts() -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}


def _restore(previous: dict) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler)


def _requeue(study, trial) -> None:
    """Fail an interrupted trial and queue a copy (same params, user_attrs, so the same run_id).
    Not counted against max_retries: the user stopped it, nothing went wrong with it."""
    import optuna
    from optuna.trial import TrialState

    frozen = study._storage.get_trial(trial._trial_id)
    study.tell(trial, state=TrialState.FAIL)
    study.add_trial(optuna.create_trial(
        state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
        user_attrs={k: v for k, v in frozen.user_attrs.items() if k not in ("reason", "returncode", "wall_time_s", "overhead_s", "heartbeat_at")},
        system_attrs={**{k: v for k, v in frozen.system_attrs.items() if k != "fixed_params"}, "requeued_from": frozen.number},
    ))


def _raise_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def worker_loop(spec: SweepSpec, opts: WorkerOptions, study=None, storage=None) -> int:
    """Take and run trials until the study is done (nothing queued or running, budget spent).
    RUNNING trials of other workers are waited for: if their worker dies they go stale after the
    grace period and this worker retries them."""
    if study is None:
        study, storage = open_study(spec, opts.storage_url, create=False)
    deadline = time.time() + spec.timeout_s if spec.timeout_s else None
    previous: signal.Handlers | None = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    waited_note = False
    try:
        while True:
            trial, running = next_trial(study, storage, spec, opts.storage_url, deadline)
            if trial is not None:
                waited_note = False
                opts.emit(run_trial(study, trial, spec, opts, storage))
                continue
            if running == 0 or (deadline is not None and time.time() > deadline):
                return 0
            if not waited_note:
                opts.emit({"event": "wait", "running": running})
                waited_note = True
            time.sleep(min(spec.heartbeat_interval, 5))
    except KeyboardInterrupt:
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _emit_json(ev: dict) -> None:
    print(EVENT_PREFIX + json.dumps(ev, default=str), flush=True)


def _spawn_workers(args: argparse.Namespace, n: int, url: str, printer) -> int:
    """N local worker processes (the same command with --worker), their events relayed here."""
    cmd = [sys.executable, "-m", "harness", "sweep", args.spec, *args.overrides, "--storage", url,
           "--runs-root", args.runs_root, "--worker"] + (["--study", args.study] if args.study else []) + (["--stream"] if args.stream else [])
    # N trainers on one machine: split the cores between them, or their OpenMP threads fight
    # (oversubscribed spin-waiting made training several times slower on a 2-core machine).
    threads_each = str(max(1, (os.cpu_count() or 1) // n))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", threads_each))
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for _ in range(n)]
    lock = threading.Lock()

    def relay(i: int, p: subprocess.Popen) -> None:
        for line in p.stdout:
            with lock:
                if line.startswith(EVENT_PREFIX):
                    printer(json.loads(line[len(EVENT_PREFIX):]))
                elif line.strip():
                    printer.bar.write(f"[worker {i}] {line.rstrip()}")

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
    return 130 if 130 in rcs else max(rcs)
