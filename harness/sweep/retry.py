"""Why a trial ended and whether its cell runs again. A driver that died (killed, rebooted, preempted: the
trial's heartbeat went stale), a Ctrl-C / SIGTERM and an error in the driver itself are not failures of the
trial: its cell is re-queued without limit, with the same params and run_id so the trainer resumes. A
failure of the trial itself (its child exited non-zero, was killed, diverged) is re-queued up to the spec's
max_retries times. `harness sweep SPEC --retry-failed` queues failed cells once more, and the driver's exit
code says whether cells are left unfinished (`unfinished`).

    harness sweep sweeps/quickstart.yaml                  # picks up what a dead driver left behind
    harness sweep sweeps/quickstart.yaml --retry-failed   # and runs the failed cells again

Every function that queues trials is called under the study lock (harness/sweep/storage.py study_lock),
so a cell is never queued twice: a cell is re-queued only while none of its trials is waiting, running
or finished (COMPLETE / PRUNED).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.run.record import SCHEMA, now_iso, read_summary, write_summary
from harness.sweep.spec import PlannedTrial, SweepSpec
from harness.sweep.storage import stale_trial_ids

# Why an attempt ended: the trial's user attribute `ended` (FAIL trials only).
DRIVER_DIED = "driver-died"  # its heartbeat went stale: the driver was killed, rebooted, preempted
INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM: the trainer saved its state
DRIVER_ERROR = "driver-error"  # an exception in the driver (runs root read-only or full, storage, ...)
TRIAL_FAILED = "trial-failed"  # the child failed: non-zero exit, killed by a signal (OOM), diverged
NOT_RETRIED = "not-retried"  # it cannot succeed as it is (objective missing, invalid run id): --retry-failed only
UNCOUNTED = (DRIVER_DIED, INTERRUPTED, DRIVER_ERROR)  # re-queued without limit

# user attributes a re-queued copy keeps (the rest belongs to one attempt: reason, returncode, host, ...)
CARRIED = ("params", "cell", "seed", "run_id", "overrides", "origin", "group", "run_dir")


def ended(t) -> str:
    """Why a FAIL trial ended; trials recorded before `ended` existed are read from their reason."""
    kind = t.user_attrs.get("ended")
    if kind:
        return kind
    reason = t.user_attrs.get("reason", "")
    if not reason:  # failed by the heartbeat check, which recorded no reason
        return DRIVER_DIED
    if reason.startswith("interrupted"):
        return INTERRUPTED
    if reason.startswith("objective metric"):
        return NOT_RETRIED
    return TRIAL_FAILED


def record_run_status(run_dir: Path, fields: dict, status: str = "failed") -> None:
    """A run whose child did not finish its record: mark summary.json failed (or interrupted, which the
    trainer resumes from its last checkpoint) with the reason. A finished record is left alone."""
    summary = read_summary(run_dir)
    if summary is not None and summary.get("status") not in ("running", None):
        return
    summary = summary or {"schema": SCHEMA, "name": run_dir.parent.name, "run_id": run_dir.name,
                          "run_dir": str(run_dir), "started_at": fields.get("started_at")}
    summary.update(status=status, reason=fields["reason"], study=fields["study"], trial=fields["trial"], finished_at=now_iso())
    write_summary(run_dir, summary)


def _by_cell(trials) -> dict[str, list]:
    cells: dict[str, list] = {}
    for t in trials:
        if t.user_attrs.get("cell") is not None:
            cells.setdefault(t.user_attrs["cell"], []).append(t)
    return cells


def _open(ts) -> bool:
    """A cell with a trial that is waiting, running or finished needs nothing queued."""
    return any(t.state.name in ("WAITING", "RUNNING", "COMPLETE", "PRUNED") for t in ts)


def requeue(study, frozen, why: str, *, failures: int) -> int:
    """Queue a copy of a finished (FAIL) trial: same params, run_id and cell, `failures` of the trial itself
    so far, `queued_because` saying why. Returns the new trial's number. Call under the study lock."""
    import optuna
    from optuna.trial import TrialState

    attrs = {k: v for k, v in frozen.user_attrs.items() if k in CARRIED}
    interruptions = frozen.user_attrs.get("interruptions", 0) + (ended(frozen) in UNCOUNTED)
    attrs.update(failures=failures, interruptions=interruptions, queued_because=why)
    system = {k: v for k, v in frozen.system_attrs.items() if k != "fixed_params"}
    system.update(requeued_from=frozen.number, retry_history=[*system.get("retry_history", []), frozen.number])
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
                                        user_attrs=attrs, system_attrs=system))
    return study.get_trials(deepcopy=False)[-1].number


def _job(t) -> str:
    """", Slurm job 123_4" for a trial a Slurm array task ran (harness/sweep/slurm.py)."""
    return f", Slurm job {t.user_attrs['slurm_job']}" if t.user_attrs.get("slurm_job") else ""


def fail_stale(study, storage, spec: SweepSpec) -> list[int]:
    """Fail the RUNNING trials whose driver died (no heartbeat for grace_period), recording why on the trial
    and marking its run `interrupted` (not `running` for good). Returns their numbers; `reconcile`
    re-queues them. Call under the study lock."""
    import optuna
    from optuna.trial import TrialState

    out = []
    for trial_id in stale_trial_ids(study, storage, spec.grace_period):
        frozen = storage.get_trial(trial_id)
        reason = (f"interrupted: its driver stopped (no heartbeat for {spec.grace_period}s: killed, rebooted or "
                  f"preempted; pid {frozen.user_attrs.get('worker_pid', '?')} on {frozen.user_attrs.get('host', '?')}{_job(frozen)}); "
                  "re-queued with the same run_id to resume")
        try:  # attributes first: a finished trial cannot take them
            storage.set_trial_user_attr(trial_id, "reason", reason)
            storage.set_trial_user_attr(trial_id, "ended", DRIVER_DIED)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # its driver was alive after all and finished it
            continue
        out.append(frozen.number)
        run_dir = frozen.user_attrs.get("run_dir")
        if run_dir and Path(run_dir).is_dir():  # on this machine (or a shared file system)
            try:
                record_run_status(Path(run_dir), {"reason": reason, "study": spec.study, "trial": frozen.number}, status="interrupted")
            except OSError:
                pass  # the record stays as it is; the trial's reason says what happened
    return out


def reconcile(study, spec: SweepSpec) -> list[tuple[int, int, str]]:
    """Re-queue every cell whose last trial FAILed and that should run again: driver deaths, interruptions and
    driver errors always, failures of the trial itself while they number at most max_retries. Idempotent
    (also after a driver died between failing a trial and re-queueing it). Returns (old, new, why) for each.
    Call under the study lock."""
    out = []
    for last, failures, why in due_again(study, spec):
        out.append((last.number, requeue(study, last, why[:1000], failures=failures), why))
    return out


def due_again(study, spec: SweepSpec) -> list[tuple[Any, int, str]]:
    """(last trial, failure count, why) of every cell reconcile would re-queue; reads only."""
    out = []
    for ts in _by_cell(study.get_trials(deepcopy=False)).values():
        if _open(ts):
            continue
        last = max(ts, key=lambda t: t.number)
        kind = ended(last)
        failures = last.user_attrs.get("failures", 0) + (kind == TRIAL_FAILED)
        if kind in UNCOUNTED:
            why = f"trial {last.number} {kind.replace('-', ' ')} (not counted as a retry): {last.user_attrs.get('reason', '')}"
        elif kind == TRIAL_FAILED and failures <= spec.max_retries:
            why = f"retry {failures} of max_retries={spec.max_retries}: trial {last.number} failed: {last.user_attrs.get('reason', '')}"
        else:
            continue
        out.append((last, failures, why))
    return out


def retry_failed(study, cells: set[str] | None = None) -> list[tuple[int, int, str]]:
    """`--retry-failed`: queue again every cell (of `cells`, default all) whose trials all FAILed, with
    its failure count reset, so it gets max_retries retries again. Returns (old, new, why). Under the lock."""
    out = []
    for cell, ts in _by_cell(study.get_trials(deepcopy=False)).items():
        if _open(ts) or (cells is not None and cell not in cells):
            continue
        last = max(ts, key=lambda t: t.number)
        when = datetime.datetime.now().isoformat(timespec="seconds")
        why = f"--retry-failed at {when}: trial {last.number} had failed: {last.user_attrs.get('reason', '')}"
        out.append((last.number, requeue(study, last, why[:1000], failures=0), why))
    return out


@dataclass
class Unfinished:
    """A cell that has no COMPLETE or PRUNED trial, and why."""

    params: dict[str, Any]
    seed: Any
    trial: int | None  # its last trial, None if it was never queued
    state: str  # FAIL | WAITING | RUNNING | NOT QUEUED
    reason: str


def unfinished(study, planned: list[PlannedTrial] | None) -> list[Unfinished]:
    """The cells without a COMPLETE or PRUNED trial: of the planned grid, or (search samplers, planned
    None) of every configuration sampled so far."""
    cells = _by_cell(study.get_trials(deepcopy=False))
    if planned is None:
        wanted = [(c, ts[0].user_attrs.get("params", {}), ts[0].user_attrs.get("seed")) for c, ts in cells.items()]
    else:
        wanted = [(t.cell, t.params, t.seed) for t in planned]
    out = []
    for cell, params, seed in wanted:
        ts = cells.get(cell, [])
        if any(t.state.name in ("COMPLETE", "PRUNED") for t in ts):
            continue
        if not ts:
            out.append(Unfinished(params, seed, None, "NOT QUEUED", "not run: not queued yet"))
            continue
        last = max(ts, key=lambda t: t.number)
        if last.state.name == "WAITING":
            reason = "not run: still queued (budget.timeout_s reached, or the driver stopped)"
        elif last.state.name == "RUNNING":
            reason = f"running in another driver (pid {last.user_attrs.get('worker_pid', '?')} on {last.user_attrs.get('host', '?')}{_job(last)})"
        else:
            reason = last.user_attrs.get("reason") or "its driver stopped"
            if ended(last) == TRIAL_FAILED:
                reason += f" (after {last.user_attrs.get('failures', 0)} retries)"
        out.append(Unfinished(params, seed, last.number, last.state.name, reason))
    return out
