"""Sweep stage: a spec (sweeps/NAME.yaml) -> an Optuna study whose trials are `harness train` runs.

    harness sweep sweeps/quickstart.yaml                       # run or resume the study
    harness sweep sweeps/quickstart.yaml --dry-run             # list the trials, train nothing
    harness sweep sweeps/method_comparison.yaml --workers 2    # two local worker processes
    harness sweep sweeps/lr_search.yaml --storage postgresql://user@host/db   # join from any machine

Data flow: load_spec() (harness/sweepspec.py) parses and checks the spec; plan_grid() expands the grid
(every cell x seed) and check_trials() composes EVERY trial's config before anything trains, reporting
all errors at once. The study lives
in Optuna storage (SQLite studies/<study>.db by default, any SQLAlchemy URL, or journal:PATH for a
shared file system). Grid cells are enqueued exactly once under a storage-level lock and workers
take WAITING trials under the same lock, so concurrent workers (local or on other machines) never
duplicate or lose a cell. Each trial runs `python -m harness train ...` in its own child process;
its exit code and run directory decide the trial's state (COMPLETE / PRUNED / FAIL with a reason).
A worker that dies stops its trial's heartbeat; the next worker to look fails it and re-queues it
(same run_id, so the trainer resumes from its checkpoint) up to max_retries times.
Spec format: docs/sweeps.md. `harness status STUDY` (harness/status.py) lists the trials.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from harness import atomic, paths, records
from harness.sweepspec import (
    BOOKKEEPING, Dimension, PlannedTrial, PrunerSpec, SpecError, SweepSpec, _override_key, _slug,
    bookkeeping_overrides, cell_key, check_trials, expand_grid, format_value, load_spec, merge_overrides,
    pin_axes, plan_grid, trial_overrides, validation_points,
)

# Optuna flags heartbeats and fail_stale_trials as experimental and warns when heartbeats are used
# outside Study.optimize; this driver is the ask/tell loop those warnings have in mind.
warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed.*")
warnings.filterwarnings("ignore", message=".*is experimental.*")
warnings.filterwarnings("ignore", message=".*heartbeat_interval.*")
warnings.filterwarnings("ignore", message=".*is an experimental feature.*")

TRAIN_CMD_ENV = "HARNESS_SWEEP_TRAIN_CMD"  # tests only: replaces `python -m harness train`
EVENT_PREFIX = "@@harness-sweep "  # worker processes report to their driver with these lines

# ------------------------------------------------------------------------------- storage
def default_storage_url(study: str, studies_dir: str | Path = "studies") -> str:
    return "sqlite:///" + str((Path(studies_dir) / f"{study}.db").resolve())


def normalize_url(url: str) -> str:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; the pinned driver is psycopg2, so name it
    when psycopg 3 is not installed (an explicit postgresql+driver:// URL is kept as given)."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def _sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def open_storage(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None, max_retries: int | None = None):
    """Optuna storage for a URL: any SQLAlchemy URL (heartbeat + retry of stale trials when
    heartbeat_interval is given) or journal:PATH (JournalFileBackend, for shared file systems)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = Path(url[len("journal:"):].removeprefix("//")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    kwargs: dict[str, Any] = {}
    sqlite = _sqlite_path(url)
    if sqlite:
        sqlite.parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    elif url.startswith("postgresql"):
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    if heartbeat_interval:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retries)
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period, heartbeat_stale_trial_callback=retry)
    with _creation_lock(url), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # two processes creating the tables at once collide (alembic_version)
        return optuna.storages.RDBStorage(normalize_url(url), **kwargs)


@contextlib.contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    if url.startswith(("postgresql", "mysql")):
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        class _Engine:  # study_lock only needs .engine
            engine = sa.create_engine(normalize_url(url), poolclass=NullPool)

        try:
            with study_lock(_Engine, url, "__create_tables__"):
                yield
        finally:
            _Engine.engine.dispose()
        return
    with study_lock(None, url, "__create_tables__"):
        yield


@contextlib.contextmanager
def study_lock(storage, url: str, study: str) -> Iterator[None]:
    """A lock shared by every process using this study: PostgreSQL advisory lock, MySQL GET_LOCK,
    or an fcntl lock file beside a SQLite database or journal file."""
    if url.startswith(("postgresql", "mysql")):
        import sqlalchemy as sa

        key = int.from_bytes(hashlib.sha256(f"harness-sweep:{study}".encode()).digest()[:8], "big", signed=True)
        with storage.engine.connect() as conn:
            if url.startswith("postgresql"):
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            else:
                conn.execute(sa.text("SELECT GET_LOCK(:k, 600)"), {"k": str(key)})
            try:
                yield
            finally:
                if url.startswith("postgresql"):
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                else:
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:k)"), {"k": str(key)})
                conn.commit()
        return
    if url.startswith("journal:"):
        target = Path(url[len("journal:"):].removeprefix("//")).expanduser()
    elif url == "sqlite:///:memory:":
        yield
        return
    elif _sqlite_path(url):
        target = _sqlite_path(url)
    else:
        raise ValueError(f"storage {url!r}: supported are sqlite:///PATH, postgresql://..., mysql://... and journal:PATH")
    # not ".lock": Optuna's journal lock uses that name
    with atomic.file_lock(target.with_name(target.name + ".harness-lock")):
        yield


def build_sampler(spec: SweepSpec):
    import optuna

    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=spec.sampler_seed, multivariate=True, group=True)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=spec.sampler_seed)
    # grid: every trial is enqueued with fixed params, the sampler never samples
    return optuna.samplers.RandomSampler(seed=spec.sampler_seed)


def build_pruner(p: PrunerSpec | dict):
    import optuna

    p = PrunerSpec(**p) if isinstance(p, dict) else p
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def _fingerprint(spec: SweepSpec) -> dict:
    """What must not change between runs of one study (budget, retries, heartbeat may; a grid
    study's grid may grow: its cells are kept in user_attrs, not as Optuna distributions)."""
    d = dataclasses.asdict(spec)
    keys = ("base", "search", "seeds", "objectives", "sampler", "pruner") + (() if spec.sampler == "grid" else ("grid",))
    return {k: d[k] for k in keys}


def open_study(spec: SweepSpec, url: str, *, create: bool):
    """Create or load the study; on load, check it was made from a compatible spec."""
    import optuna

    storage = open_storage(url, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period, max_retries=spec.max_retries)
    directions = [o.direction for o in spec.objectives]
    with study_lock(storage, url, spec.study):
        if create:
            study = optuna.create_study(study_name=spec.study, storage=storage, directions=directions,
                                       sampler=build_sampler(spec), pruner=build_pruner(spec.pruner), load_if_exists=True)
        else:
            study = optuna.load_study(study_name=spec.study, storage=storage, sampler=build_sampler(spec), pruner=build_pruner(spec.pruner))
        attrs = study.user_attrs
        if "harness_spec" not in attrs:
            study.set_user_attr("harness_spec", _fingerprint(spec))
            study.set_user_attr("harness_token", secrets.token_hex(3))
            study.set_user_attr("objectives", [o.metric for o in spec.objectives])
            study.set_user_attr("source", spec.source)
            study.set_user_attr("command", spec.command)
        else:
            old, new = attrs["harness_spec"], json.loads(json.dumps(_fingerprint(spec)))
            diff = [k for k in new if old.get(k) != new[k]]
            if diff:
                raise SpecError(spec.source, [
                    f"study {spec.study!r} in {url} was created from a different spec ({', '.join(diff)} differ: "
                    f"was {[old.get(k) for k in diff]}, now {[new[k] for k in diff]}). Give a new study name "
                    "(--study NAME) or delete the old study; the grid may grow, the rest must stay."
                ])
    return study, storage


def enqueue_grid(study, storage, url: str, spec: SweepSpec, planned: list[PlannedTrial]) -> int:
    """Enqueue each planned cell x seed that the study does not hold yet (idempotent, under the
    study lock, so concurrent drivers neither duplicate nor lose a cell). Returns how many."""
    token = study.user_attrs["harness_token"]
    with study_lock(storage, url, spec.study):
        have = {t.user_attrs.get("cell") for t in study.get_trials(deepcopy=False)}
        added = 0
        for t in planned:
            if t.cell in have:
                continue
            run_id = f"c{t.index:03d}-{_slug(t.params)}-s{t.seed}-{token}".replace("--", "-")
            # grid params live in user_attrs: Optuna's categorical distributions cannot grow or be pinned
            study.enqueue_trial({}, user_attrs={"params": t.params, "cell": t.cell, "seed": t.seed, "run_id": run_id,
                                                "overrides": t.overrides})
            added += 1
    return added


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


def _count_sampled(study) -> int:
    """Configurations sampled so far (a retry copies its trial's run_id, so it is not counted again)."""
    return len({t.user_attrs.get("run_id") for t in study.get_trials(deepcopy=False) if t.user_attrs.get("origin") == "sampled"})


def next_trial(study, storage, spec: SweepSpec, url: str, deadline: float | None):
    """Under the study lock: fail stale trials (re-queued by the retry callback), then take a
    WAITING trial, else (search samplers, budget left) sample a new one and queue its other seeds.
    Returns (trial or None, number of RUNNING trials elsewhere)."""
    from optuna.trial import TrialState

    with study_lock(storage, url, spec.study):
        fail_stale(study, storage, spec)
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        running = len(trials) - len(waiting)
        late = deadline is not None and time.time() > deadline
        if late:
            return None, running
        if waiting:
            trial = study.ask()
        elif spec.sampler != "grid" and (spec.n_trials is None or _count_sampled(study) < spec.n_trials):
            trial = study.ask()
            params = {k: _suggest(trial, d) for k, d in spec.dimensions().items()}
            token = study.user_attrs["harness_token"]
            seed = spec.seeds[0]
            for k, v in {"origin": "sampled", "params": params, "cell": cell_key(params, seed), "seed": seed,
                         "run_id": f"t{trial.number:04d}-s{seed}-{token}", "overrides": trial_overrides(spec.base, params, seed)}.items():
                trial.set_user_attr(k, v)
            for s in spec.seeds[1:]:  # the same configuration for the other seeds, queued
                study.enqueue_trial(params, user_attrs={"params": params, "cell": cell_key(params, s), "seed": s, "group": trial.number,
                                                        "run_id": f"t{trial.number:04d}-s{s}-{token}",
                                                        "overrides": trial_overrides(spec.base, params, s)})
        else:
            return None, running
        record_heartbeat(storage, trial._trial_id)
    if spec.sampler != "grid":  # register a queued trial's fixed params with the sampler's distributions
        dims = spec.dimensions()
        frozen = storage.get_trial(trial._trial_id)
        for k in frozen.system_attrs.get("fixed_params") or frozen.params:
            if k in dims:
                _suggest(trial, dims[k])
    return trial, running


def _suggest(trial, dim: Dimension) -> Any:
    if dim.type == "float":
        return trial.suggest_float(dim.name, dim.low, dim.high, log=dim.log, step=dim.step)
    if dim.type == "int":
        return trial.suggest_int(dim.name, int(dim.low), int(dim.high), log=dim.log, step=int(dim.step or 1))
    return trial.suggest_categorical(dim.name, dim.choices)


def _heartbeat_enabled(storage) -> bool:
    return getattr(storage, "heartbeat_interval", None) is not None


def record_heartbeat(storage, trial_id: int) -> None:
    """RDBStorage's heartbeat table; elsewhere (journal files) a `heartbeat_at` user attribute."""
    if _heartbeat_enabled(storage):
        storage.record_heartbeat(trial_id)
    else:
        storage.set_trial_user_attr(trial_id, "heartbeat_at", time.time())


def fail_stale(study, storage, spec: SweepSpec) -> None:
    """Fail RUNNING trials whose worker stopped sending heartbeats; the retry callback re-queues
    each (same params and run_id) up to max_retries times. Call under the study lock."""
    import copy

    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    if _heartbeat_enabled(storage):
        optuna.storages.fail_stale_trials(study)
        return
    retry = RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retries)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("heartbeat_at")
        if beat is not None and time.time() - beat > spec.grace_period:  # clocks of the workers must agree
            try:
                if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    retry(study, copy.deepcopy(storage.get_trial(t._trial_id)))
            except optuna.exceptions.UpdateFinishedTrialError:
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
    summary = records.read_summary(run_dir)
    if summary is not None and summary.get("status") not in ("running", None):
        return
    summary = summary or {"schema": records.SCHEMA, "name": run_dir.parent.name, "run_id": run_dir.name,
                          "run_dir": str(run_dir), "started_at": fields.get("started_at")}
    summary.update(status=status, reason=fields["reason"], study=fields["study"], trial=fields["trial"],
                   finished_at=records.now_iso())
    atomic.write_json(run_dir / "summary.json", summary)


def run_trial(study, trial, spec: SweepSpec, opts: WorkerOptions, storage) -> dict:
    """Run one trial's child process to the end and tell the study its outcome. Returns the event."""
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    run_id, seed, params = attrs["run_id"], attrs["seed"], attrs.get("params", {})
    overrides = attrs["overrides"]
    output_dir = str(Path(opts.runs_root).resolve())
    run_dir = records.run_dir_for(output_dir, spec.study, run_id)
    tags = list(dict.fromkeys([*study.user_attrs.get("tags", []), spec.study]))  # W&B groups a study by tag
    cmd = [*_train_command(spec.command), *merge_overrides(overrides, bookkeeping_overrides(
        study=spec.study, trial=trial.number, storage=opts.storage_url, run_id=run_id, output_dir=output_dir, tags=tags))]
    run_dir.mkdir(parents=True, exist_ok=True)
    for k, v in {"run_dir": str(run_dir), "host": socket.gethostname(), "worker_pid": os.getpid()}.items():
        trial.set_user_attr(k, v)
    opts.emit({"event": "start", "trial": trial.number, "params": params, "seed": seed, "run_dir": str(run_dir)})
    started_at, t0 = records.now_iso(), time.time()
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
    summary = records.read_summary(run_dir) or {}
    out = {"event": "finish", "trial": trial.number, "params": params, "seed": seed, "run_dir": str(run_dir),
           "wall_time_s": round(wall, 3), "returncode": rc}
    if isinstance(summary.get("train_time_s"), (int, float)):
        out["overhead_s"] = round(wall - summary["train_time_s"] - (summary.get("eval_time_s") or 0.0), 3)
    for k in ("wall_time_s", "returncode", "overhead_s"):
        if k in out:
            trial.set_user_attr(k, out[k])

    values, state, reason = None, TrialState.FAIL, ""
    interrupted = interrupted or rc == 130  # the trainer's "interrupted" exit: a Ctrl-C that reached it first
    if interrupted:
        reason = "interrupted: the sweep was stopped (Ctrl-C / SIGTERM); re-queued with the same run_id to resume"
        if rc != 130:  # the trainer did not get to record it (killed after the grace period)
            reason += f" (child ended by {_signal_name(rc) if rc < 0 else f'exit code {rc}'})"
            _record_failure(run_dir, {"reason": reason, "study": spec.study, "trial": trial.number, "started_at": started_at},
                            status="interrupted")
        trial.set_user_attr("reason", reason)
        _requeue(study, trial)
    elif rc == 0:
        flat = records.flat_metrics(run_dir)
        missing = [o.metric for o in spec.objectives if o.metric not in flat]
        if missing:
            reason = (f"objective metric(s) {', '.join(missing)} missing or not a finite number in {run_dir} "
                      f"(summary.json/eval.json); available: {', '.join(sorted(flat)) or 'none'}")
        else:
            values, state = [flat[o.metric] for o in spec.objectives], TrialState.COMPLETE
    elif rc == 3:
        state = TrialState.PRUNED
        reason = summary.get("reason") or f"pruned at step {summary.get('pruned_at_step')}"
        trial.set_user_attr("pruned_at_step", summary.get("pruned_at_step"))
    elif rc == 4:
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
        "wall_time_s": out["wall_time_s"], "overhead_s": out.get("overhead_s"), "started_at": started_at, "finished_at": records.now_iso(),
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


# --------------------------------------------------------------------------------- driver
def study_counts(study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


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


def _emit_json(ev: dict) -> None:
    print(EVENT_PREFIX + json.dumps(ev, default=str), flush=True)


def _spawn_workers(args: argparse.Namespace, n: int, url: str, printer: Printer) -> int:
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
