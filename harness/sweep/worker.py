"""A sweep worker: take the next trial, run it as a child process (`python -m harness train ...`: forked from the
worker's fork server, which has the libraries imported, harness/sweep/warm.py; a fresh process with --cold), record
its outcome (COMPLETE / PRUNED / FAIL with a reason and why it ended), keep its heartbeat, and go on until
the study is done. Local worker processes (`--workers N`): harness/sweep/spawn.py.

Ctrl-C and SIGTERM only set a flag (StopFlag) that the worker reads between steps, so a signal never cuts
a storage update in half: the running child is interrupted (its trainer saves its state), the trial is
re-queued with the same run_id, and the worker stops. An exception in the worker itself (a read-only or
full runs root, a storage error) stops its child, records the reason on the trial, re-queues it and raises
DriverError; a trial that cannot run as queued (an invalid run id) is failed with the reason instead.
"""

from __future__ import annotations

import contextlib
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

from harness import atomic, paths
from harness.run.progress import MODE_ENV, child_mode
from harness.run.record import EXIT_CODES, flat_metrics, now_iso, read_summary, run_dir_for
from harness.sweep.launcher import job_id_from_env
from harness.sweep.plan import bookkeeping_overrides, merge_overrides
from harness.sweep.retry import DRIVER_ERROR, INTERRUPTED, NOT_RETRIED, TRIAL_FAILED, reconcile, record_run_status
from harness.sweep.spec import SweepSpec
from harness.sweep.storage import record_heartbeat, study_lock
from harness.sweep.study import Taker, next_trial, nothing_left, open_study
from harness.sweep.warm import Starter, cold_requested, default_train_command

TRAIN_CMD_ENV = "HARNESS_SWEEP_TRAIN_CMD"  # tests only: replaces `python -m harness train`


class DriverError(RuntimeError):
    """The driver itself failed while running a trial (not the trial): the message says which trial, the
    cause, and what became of the trial (re-queued, or failed with the reason)."""


class TrialSetupError(ValueError):
    """A trial that cannot be started as it was queued (e.g. its run id is not a safe name)."""


class TakenOver(RuntimeError):
    """Another driver failed this worker's trial as stale (no heartbeat within the grace period: this
    worker was stalled or cut off) and re-queued it; this worker must drop it."""


# --------------------------------------------------------------------------------- worker
@dataclass
class WorkerOptions:
    storage_url: str
    runs_root: str = "runs"
    stream: bool = False  # echo the child's output with a prefix (always written to train.log)
    emit: Callable[[dict], None] = print
    warm: bool = True  # worker_loop starts trials from a fork server (harness/sweep/warm.py); False: --cold
    starter: Starter | None = None  # a fork server already importing (early_starter), used instead of a new one


class StopFlag:
    """While active (main thread only), SIGINT and SIGTERM set `signum` instead of raising; later signals
    are ignored, so a second Ctrl-C cannot cut the clean-up short."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._set) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _set(self, signum: int, _frame: Any) -> None:
        self.signum = self.signum or signum

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _train_command(command: str = "train") -> list[str]:
    env = os.environ.get(TRAIN_CMD_ENV)
    return shlex.split(env) if env else [sys.executable, "-m", "harness", command]


def _trial_env() -> dict[str, str]:
    """The environment of every trial's child (its output goes to train.log: lines, unbuffered)."""
    return dict(os.environ, PYTHONUNBUFFERED="1", **{MODE_ENV: child_mode()})


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A Popen preexec_fn: Linux sends `sig` to the child when its parent dies (PR_SET_PDEATHSIG), so a
    resumed trial never races an orphaned trainer writing the same run directory, and a worker never
    finishes a study alone after its driver was killed. No-op elsewhere."""
    from harness.run.parent import set_parent_death_signal

    parent = os.getpid()
    return lambda: set_parent_death_signal(sig, parent)


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def _tail(lines: list[str], n: int = 3, width: int = 240) -> str:
    """The child's last lines, each cut to `width` characters, for a failure reason."""
    keep = [ln.strip()[:width] for ln in lines if ln.strip()][-n:]
    return " | ".join(keep) or "no output"


def _stop_child(proc: subprocess.Popen, signum: int) -> int:
    """Interrupt a running child so its trainer saves its state; returns its exit code."""
    if signum == signal.SIGINT:  # a terminal's Ctrl-C reached the child too: give it time to save
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _outcome(rc: int, run_dir: Path, spec: SweepSpec, tail: list[str]) -> tuple[Any, list | None, str, str]:
    """(state, values, reason, ended) from a child's exit code and run record (docs/sweeps.md)."""
    from optuna.trial import TrialState

    summary = read_summary(run_dir) or {}
    if rc == EXIT_CODES["completed"]:
        flat = flat_metrics(run_dir)
        missing = [o.metric for o in spec.objectives if o.metric not in flat]
        if not missing:
            return TrialState.COMPLETE, [flat[o.metric] for o in spec.objectives], "", ""
        return TrialState.FAIL, None, (f"objective metric(s) {', '.join(missing)} missing or not a finite number in {run_dir} "
                                       f"(summary.json/eval.json); available: {', '.join(sorted(flat)) or 'none'}"), NOT_RETRIED
    if rc == EXIT_CODES["pruned"]:
        return TrialState.PRUNED, None, summary.get("reason") or f"pruned at step {summary.get('pruned_at_step')}", ""
    if rc == EXIT_CODES["diverged"]:
        return TrialState.FAIL, None, "diverged: " + (summary.get("reason") or "non-finite loss"), TRIAL_FAILED
    if rc < 0:
        why = " (out of memory? the kernel's OOM killer sends SIGKILL)" if rc == -signal.SIGKILL else ""
        return TrialState.FAIL, None, f"child killed by {_signal_name(rc)}{why}; last output: {_tail(tail)}", TRIAL_FAILED
    detail = summary.get("reason") if summary.get("status") not in (None, "running") else ""
    return TrialState.FAIL, None, f"child exited with code {rc}: " + (detail or _tail(tail)), TRIAL_FAILED


def run_trial(study, trial, spec: SweepSpec, opts: WorkerOptions, storage, stop: StopFlag | None = None,
              starter: Starter | None = None) -> dict:
    """Run one trial's child process to the end and tell the study its outcome. Returns the event.
    Raises DriverError when the worker itself failed (the trial is re-queued first). `starter` starts the
    child (warm from a fork server, harness/sweep/warm.py); without one it is a fresh process."""
    stop = stop if stop is not None else StopFlag()
    held: dict[str, Any] = {"starter": starter}  # the child, once started, for the clean-up after an error
    try:
        return _run_trial(study, trial, spec, opts, storage, stop, held)
    except Exception as exc:  # noqa: BLE001 - any error of the driver: record it on the trial, never leave it RUNNING
        return _driver_failed(study, trial, spec, opts, storage, exc, held)


def _run_trial(study, trial, spec: SweepSpec, opts: WorkerOptions, storage, stop: StopFlag, held: dict) -> dict:
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    run_id, seed, params = attrs["run_id"], attrs["seed"], attrs.get("params", {})
    output_dir = str(paths.under_root(opts.runs_root).resolve())
    try:
        run_dir = run_dir_for(output_dir, spec.study, run_id)
    except ValueError as exc:
        raise TrialSetupError(f"cannot run as queued: {exc}") from None
    held["run_dir"] = run_dir
    tags = list(dict.fromkeys([*study.user_attrs.get("tags", []), spec.study]))  # W&B groups a study by tag
    cmd = [*_train_command(spec.command), *merge_overrides(attrs["overrides"], bookkeeping_overrides(
        study=spec.study, trial=trial.number, storage=opts.storage_url, run_id=run_id, output_dir=output_dir, tags=tags))]
    where = {"run_dir": str(run_dir), "host": socket.gethostname(), "worker_pid": os.getpid()}
    if job_id_from_env():  # a Slurm array task: `harness status` shows it beside the trial
        where["slurm_job"] = job_id_from_env()
    for k, v in where.items():
        trial.set_user_attr(k, v)
    run_dir.mkdir(parents=True, exist_ok=True)
    opts.emit({"event": "start", "trial": trial.number, "params": params, "seed": seed, "run_dir": str(run_dir)})
    started_at, t0 = now_iso(), time.time()
    tail: list[str] = []
    with open(run_dir / "train.log", "ab") as log:
        log.write(f"\n== trial {trial.number} of study {spec.study} on {socket.gethostname()} at {started_at}: {shlex.join(cmd)}\n".encode())
        recovered = _completed_before(storage, trial, run_dir, spec)  # its driver died after the run completed
        if recovered:
            log.write(b"== the run had completed (its driver died before recording it): result read from its record\n")
            trial.set_user_attr("recovered", True)
            rc, stopped = EXIT_CODES["completed"], False
        else:
            rc, stopped = _run_child(cmd, trial, spec, opts, storage, stop, held, log, tail)
    wall = time.time() - t0
    if rc not in (EXIT_CODES["completed"], EXIT_CODES["pruned"], EXIT_CODES["diverged"]):
        problem = atomic.disk_problem(run_dir)
        if problem:  # the machine, not the trial: a driver error (re-queued, the sweep stops until it is fixed)
            raise OSError(f"{problem}; the trial's child exited {rc}")
    out = {"event": "finish", "trial": trial.number, "params": params, "seed": seed, "run_dir": str(run_dir),
           "wall_time_s": round(wall, 3), "returncode": rc, "start": held.get("start", "none")}
    rc = recorded_exit(rc, run_dir, spec, since=t0)  # a result the child recorded stands, whatever ended it afterwards
    summary = read_summary(run_dir) or {}
    if isinstance(summary.get("train_time_s"), (int, float)) and not recovered:
        out["overhead_s"] = round(wall - summary["train_time_s"] - (summary.get("eval_time_s") or 0.0), 3)
    for k in ("wall_time_s", "returncode", "overhead_s", "start"):
        if k in out:
            trial.set_user_attr(k, out[k])

    # Stopped while the child ran: interrupted, unless the child had finished with a result of its own
    # (a completed record, pruned, diverged: recorded_exit): that result stands.
    interrupted = rc == EXIT_CODES["interrupted"] or ((stopped or stop.signum is not None) and rc not in (0, 3, 4))
    values = None
    if interrupted:
        state, ended = TrialState.FAIL, INTERRUPTED
        reason = "interrupted: the sweep was stopped (Ctrl-C / SIGTERM); re-queued with the same run_id to resume"
        if rc != EXIT_CODES["interrupted"]:  # the trainer did not get to record it
            reason += f" (child ended by {_signal_name(rc) if rc < 0 else f'exit code {rc}'})"
            record_run_status(run_dir, {"reason": reason, "study": spec.study, "trial": trial.number, "started_at": started_at},
                              status="interrupted")
    else:
        state, values, reason, ended = _outcome(rc, run_dir, spec, tail)
        if state == TrialState.PRUNED:
            trial.set_user_attr("pruned_at_step", summary.get("pruned_at_step"))
        if ended == TRIAL_FAILED and rc not in (3, 4):
            record_run_status(run_dir, {"reason": reason, "study": spec.study, "trial": trial.number, "started_at": started_at})
    _tell(study, trial, spec, opts, storage, state, values, reason, ended)
    shown = "INTERRUPTED" if interrupted else state.name
    atomic.write_json(run_dir / "trial.json", {
        "study": spec.study, "trial": trial.number, "state": shown, "reason": reason, "ended": ended,
        "values": dict(zip([o.metric for o in spec.objectives], values or [])), "params": params, "seed": seed,
        "storage": opts.storage_url, "host": socket.gethostname(), "slurm_job": job_id_from_env() or None, "command": cmd, "returncode": out["returncode"],
        "start": out["start"],
        "wall_time_s": out["wall_time_s"], "overhead_s": out.get("overhead_s"), "started_at": started_at, "finished_at": now_iso(),
    })
    out.update(state=shown, reason=reason, values=dict(zip([o.metric for o in spec.objectives], values or [])))
    return out


def recorded_exit(rc: int, run_dir: Path, spec: SweepSpec, since: float) -> int:
    """The exit code of the result a child recorded before its own exit code was lost: a summary.json written
    by this attempt (at or after `since`, when the child started) that says completed (with every objective in
    the record), pruned or diverged is a finished result, whatever ended the process afterwards (the SIGINT of
    a worker told to stop while the child was finishing: exit 130, a KeyboardInterrupt traceback, death by the
    signal; a crash on the way out). Otherwise rc itself; a record left by an earlier attempt never counts."""
    if rc in (EXIT_CODES["completed"], EXIT_CODES["pruned"], EXIT_CODES["diverged"]):
        return rc
    try:
        if (run_dir / "summary.json").stat().st_mtime < since - 0.05:  # file times tick coarser than time.time()
            return rc
    except FileNotFoundError:
        return rc
    status = (read_summary(run_dir) or {}).get("status")
    if status == "completed":
        flat = flat_metrics(run_dir)
        return EXIT_CODES["completed"] if all(o.metric in flat for o in spec.objectives) else rc
    return EXIT_CODES[status] if status in ("pruned", "diverged") else rc


def _completed_before(storage, trial, run_dir: Path, spec: SweepSpec) -> bool:
    """A re-queued trial whose run directory already holds a completed record with every objective."""
    if storage.get_trial(trial._trial_id).system_attrs.get("requeued_from") is None:
        return False
    summary = read_summary(run_dir) or {}
    return summary.get("status") == "completed" and all(o.metric in flat_metrics(run_dir) for o in spec.objectives)


def _run_child(cmd: list[str], trial, spec: SweepSpec, opts: WorkerOptions, storage, stop: StopFlag, held: dict,
               log, tail: list[str]) -> tuple[int, bool]:
    """Start the child, relay its output, keep the trial's heartbeat, interrupt it when the worker is
    asked to stop. Returns (exit code, whether the worker stopped it)."""
    if stop.signum is not None:  # asked to stop between taking the trial and starting it
        return EXIT_CODES["interrupted"], True
    env = _trial_env()
    starter = held.get("starter")
    if starter is not None:  # warm (a fork of the worker's fork server) when it can, else a fresh process
        proc = starter.popen(cmd, env)
    else:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent())
    held["proc"], held["start"] = proc, "cold" if isinstance(proc, subprocess.Popen) else "warm"
    if held["start"] == "warm":
        log.write(f"== started warm: forked from the worker's fork server (pid {starter.server.proc.pid})\n".encode())
        log.flush()

    def pump() -> None:
        logging = True
        for line in iter(proc.stdout.readline, b""):  # keep draining the pipe whatever happens to the log
            if logging:
                try:
                    log.write(line)
                    log.flush()
                except OSError as exc:  # a full or read-only disk: the output still reaches the tail and the stream
                    logging = False
                    tail.append(f"[harness] train.log: {exc.strerror or exc}; its output is no longer logged")
            text = line.decode("utf-8", "replace").rstrip()
            tail.append(text)
            del tail[:-20]
            if opts.stream:
                opts.emit({"event": "output", "trial": trial.number, "line": text})

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    beat, stopped = time.time(), False
    while True:
        try:
            rc = proc.wait(timeout=min(1.0, spec.heartbeat_interval))  # short: a stop request is seen within a second
            break
        except subprocess.TimeoutExpired:
            if stop.signum is not None:
                rc, stopped = _stop_child(proc, stop.signum), True
                break
            if time.time() - beat >= spec.heartbeat_interval:
                if storage.get_trial(trial._trial_id).state.name != "RUNNING":  # its copy may already be training
                    raise TakenOver("another driver failed it as stale (no heartbeat for grace_period_s) and re-queued it")
                record_heartbeat(storage, trial._trial_id)
                beat = time.time()
    pumper.join(timeout=10)
    if getattr(proc, "note", ""):  # a warm child that died with its fork server
        tail.append(proc.note)
        try:
            log.write((proc.note + "\n").encode())
        except OSError:
            pass
    return rc, stopped


def _tell(study, trial, spec: SweepSpec, opts: WorkerOptions, storage, state, values, reason: str, ended: str) -> None:
    """Record the outcome; a trial that should run again (interrupted, driver error) is re-queued at once."""
    if reason:
        trial.set_user_attr("reason", reason)
    if ended:
        trial.set_user_attr("ended", ended)
    study.tell(trial, values=values, state=state)
    if ended in (INTERRUPTED, DRIVER_ERROR):
        with study_lock(storage, opts.storage_url, spec.study):
            reconcile(study, spec)


def _driver_failed(study, trial, spec: SweepSpec, opts: WorkerOptions, storage, exc: Exception, held: dict) -> dict:
    """The worker failed while running a trial: stop its child, record the real reason on the trial and
    re-queue it (or fail it, if it cannot run as queued). Returns the event of a failed trial; raises
    DriverError when the worker should stop."""
    import optuna
    from optuna.trial import TrialState

    proc = held.get("proc")
    if proc is not None and proc.poll() is None:  # never leave a trainer running on a run dir that is re-queued
        _stop_child(proc, signal.SIGTERM)
    params = trial.user_attrs.get("params", {})
    event = {"event": "finish", "trial": trial.number, "params": params, "seed": trial.user_attrs.get("seed"),
             "run_dir": str(held.get("run_dir", "")), "wall_time_s": 0.0, "state": "FAIL", "values": {}}
    try:
        state = storage.get_trial(trial._trial_id).state
    except Exception:  # noqa: BLE001 - the storage itself failed
        state = None
    if isinstance(exc, (TakenOver, optuna.exceptions.UpdateFinishedTrialError)) and state not in (None, TrialState.RUNNING):
        return {**event, "state": "TAKEN OVER", "reason": f"dropped: {exc}"}  # the study goes on without this attempt
    setup = isinstance(exc, TrialSetupError)
    what = f"trial {trial.number} ({' '.join(f'{k}={v}' for k, v in params.items())} seed {trial.user_attrs.get('seed')})"
    reason = str(exc) if setup else f"driver error: {type(exc).__name__}: {exc}"
    try:
        if state != TrialState.RUNNING:  # recorded already (e.g. writing trial.json failed)
            fate = "Its outcome had been recorded."
        else:
            _tell(study, trial, spec, opts, storage, TrialState.FAIL, None, reason, NOT_RETRIED if setup else DRIVER_ERROR)
            fate = "It was re-queued with the same run_id (not counted as a retry)."
            if held.get("run_dir") is not None and not setup:
                try:
                    record_run_status(held["run_dir"], {"reason": reason, "study": spec.study, "trial": trial.number}, status="interrupted")
                except OSError:
                    pass
    except Exception as again:  # noqa: BLE001 - the storage failed too: its heartbeat goes stale and a rerun re-queues it
        fate = f"It could not be recorded ({type(again).__name__}: {again}); a rerun re-queues it once its heartbeat is stale."
    if setup:
        return {**event, "reason": reason}
    raise DriverError(f"{what}: {reason}. {fate} Fix the cause and run the same command again.") from exc


def wait_interval(waits: int, cap: float) -> float:
    """Seconds before a worker with nothing to take looks at the study again, after `waits` looks: 0.25 s, doubling
    up to cap. Other workers' last trials usually end soon after this worker's (the sweep ends when the last
    worker sees none running: a fixed 5 s wait cost up to 5 s at the end of every multi-worker sweep), while a
    long wait for a trial that runs for minutes costs one storage query every `cap` seconds."""
    return min(cap, 0.25 * 2 ** min(waits, 16))


def worker_loop(spec: SweepSpec, opts: WorkerOptions, study=None, storage=None) -> int:
    """Take and run trials until the study is done (nothing queued or running, budget spent). Returns 0,
    or 130 when stopped by Ctrl-C / SIGTERM. RUNNING trials of other workers are waited for: if their
    driver dies they go stale after the grace period and this worker re-queues and runs them."""
    if study is None:
        study, storage = open_study(spec, opts.storage_url, create=False)
    deadline = time.time() + spec.timeout_s if spec.timeout_s else None
    taker = Taker()
    waits = 0  # looks at the study since this worker last had a trial to take
    with StopFlag() as stop, _starter(spec, opts) as starter:
        if starter is not None:  # the imports finish before a trial is taken, so its heartbeat never waits on them
            if nothing_left(study, spec, deadline):
                return 0  # a finished study: no wait for the server's imports (its context closes it)
            starter.wait_ready(stop=lambda: stop.signum is not None)
        while stop.signum is None:
            trial, running = next_trial(study, storage, spec, opts.storage_url, deadline, taker)
            for note in taker.notes:
                opts.emit(note)
            taker.notes.clear()
            if trial is not None:
                waits = 0
                opts.emit(run_trial(study, trial, spec, opts, storage, stop, starter))
                continue
            if running == 0 or (deadline is not None and time.time() > deadline):
                return 0
            if waits == 0:
                opts.emit({"event": "wait", "running": running})
            until = time.time() + wait_interval(waits, min(spec.heartbeat_interval, 5))
            waits += 1
            while stop.signum is None and time.time() < until:
                time.sleep(0.2)
    return EXIT_CODES["interrupted"]


def early_starter(spec: SweepSpec, warm: bool = True) -> Starter | None:
    """The worker's trial starter, started now: a fork server (harness/sweep/warm.py) unless --cold /
    HARNESS_SWEEP_COLD=1 or the trials are not `python -m harness train` (HARNESS_SWEEP_TRAIN_CMD in tests); None
    starts them cold. `harness sweep` calls it before composing and queueing the trials, so the server's imports
    (8-9 s on 2 cores) run beside that work instead of after it; give it to worker_loop as WorkerOptions.starter."""
    if not warm or cold_requested() or _train_command(spec.command) != default_train_command():
        return None
    return Starter(_trial_env(), note=print, preexec=die_with_parent())


@contextlib.contextmanager
def _starter(spec: SweepSpec, opts: WorkerOptions):
    """The worker's trial starter: opts.starter when one was started early, else early_starter now; closed when
    the worker ends."""
    starter = opts.starter if opts.starter is not None else early_starter(spec, opts.warm)
    if starter is None:
        yield None
        return
    starter.note = lambda text: opts.emit({"event": "note", "note": text})
    try:
        yield starter
    finally:
        starter.close()
