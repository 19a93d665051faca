"""The study side of a sweep: create or reopen it (refusing a changed spec), enqueue the grid exactly once,
and hand the next trial to a worker (a queued grid cell, or a sampled point), after failing the trials of
drivers that died and re-queueing what should run again (harness/sweep/retry.py).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from harness.sweep.params import cell_params, dropped_note, grid_distributions, recorded_distributions
from harness.sweep.plan import cell_key, grid_run_id, trial_overrides
from harness.sweep.retry import due_again, fail_stale, reconcile
from harness.sweep.samplers import build_pruner, build_sampler, worker_seed
from harness.sweep.spec import Dimension, PlannedTrial, SpecError, SweepSpec
from harness.sweep.storage import open_storage, record_heartbeat, study_lock


def _fingerprint(spec: SweepSpec) -> dict:
    """What must not change between runs of one study (budget, retries, heartbeat may; a grid
    study's grid may grow: harness/sweep/params.py keeps its Optuna distributions compatible)."""
    d = dataclasses.asdict(spec)
    keys = ("base", "search", "seeds", "objectives", "sampler", "pruner") + (() if spec.sampler == "grid" else ("grid",))
    return {k: d[k] for k in keys}


def open_study(spec: SweepSpec, url: str, *, create: bool):
    """Create or load the study; on load, check it was made from a compatible spec."""
    import optuna

    storage = open_storage(url, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period)
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


def enqueue_grid(study, storage, url: str, spec: SweepSpec, planned: list[PlannedTrial], notes: list[str] | None = None) -> int:
    """Enqueue each planned cell x seed that the study does not hold yet (idempotent, under the
    study lock, so concurrent drivers neither duplicate nor lose a cell). Returns how many. Each cell is
    queued with its axis values as Optuna params (harness/sweep/params.py); `notes` gets the axes that
    cannot be (a categorical axis that grew after the study started)."""
    import optuna
    from optuna.trial import TrialState

    token = study.user_attrs["harness_token"]
    with study_lock(storage, url, spec.study):
        trials = study.get_trials(deepcopy=False)
        have = {t.user_attrs.get("cell") for t in trials}
        todo = [t for t in planned if t.cell not in have]
        dists = grid_distributions([*spec.declared_grid, *spec.grid], recorded_distributions(trials)) if todo else {}
        dropped: dict[str, list] = {}
        for t in todo:
            # the harness runs user_attrs["params"]; the Optuna params are what dashboards and importances read
            params, distributions = cell_params(t.params, dists)
            for k in t.params.keys() - params.keys():
                dropped.setdefault(k, []).append(t.params[k])
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.WAITING, params=params, distributions=distributions,
                user_attrs={"params": t.params, "cell": t.cell, "seed": t.seed, "run_id": grid_run_id(t, token),
                            "overrides": t.overrides}))
    if notes is not None:
        notes += [dropped_note(k, dists[k], vs) for k, vs in dropped.items()]
    return len(todo)


def _count_sampled(study) -> int:
    """Configurations sampled so far (a retry copies its trial's run_id, so it is not counted again)."""
    return len({t.user_attrs.get("run_id") for t in study.get_trials(deepcopy=False) if t.user_attrs.get("origin") == "sampled"})


@dataclass
class Taker:
    """One worker's side of taking trials: its sampler's seed (set at the first trial it samples) and
    what it re-queued, for the driver to print."""

    sampler_seed: int | None = None
    notes: list[dict] = field(default_factory=list)


def next_trial(study, storage, spec: SweepSpec, url: str, deadline: float | None, taker: Taker | None = None):
    """Under the study lock: fail the trials of drivers that died, re-queue what should run again
    (retry.reconcile), then take a WAITING trial, else (search samplers, budget left) sample a new one
    and queue its other seeds. Returns (trial or None, number of RUNNING trials elsewhere)."""
    from optuna.trial import TrialState

    taker = taker if taker is not None else Taker()
    with study_lock(storage, url, spec.study):
        stale = fail_stale(study, storage, spec)
        for old, new, why in reconcile(study, spec):
            taker.notes.append({"event": "requeue", "trial": old, "new": new, "why": why, "stale": old in stale})
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        running = len(trials) - len(waiting)
        late = deadline is not None and time.time() > deadline
        if late:
            return None, running
        if waiting:
            trial = _ask(study)
            record_heartbeat(storage, trial._trial_id)
        elif spec.sampler != "grid" and (spec.n_trials is None or _count_sampled(study) < spec.n_trials):
            if taker.sampler_seed is None:  # this worker's own seed: from the number of its first sampled trial
                taker.sampler_seed = worker_seed(spec.sampler_seed, len(study.get_trials(deepcopy=False)))
                study.sampler = build_sampler(spec, taker.sampler_seed)
            trial = _ask(study)
            record_heartbeat(storage, trial._trial_id)
            params = {k: _suggest(trial, d) for k, d in spec.dimensions().items()}
            token = study.user_attrs["harness_token"]
            seed = spec.seeds[0]
            for k, v in {"origin": "sampled", "params": params, "cell": cell_key(params, seed), "seed": seed,
                         "run_id": f"t{trial.number:04d}-s{seed}-{token}", "overrides": trial_overrides(spec.base, params, seed),
                         "sampler_seed": taker.sampler_seed}.items():
                trial.set_user_attr(k, v)
            for s in spec.seeds[1:]:  # the same configuration for the other seeds, queued
                study.enqueue_trial(params, user_attrs={"params": params, "cell": cell_key(params, s), "seed": s, "group": trial.number,
                                                        "run_id": f"t{trial.number:04d}-s{s}-{token}",
                                                        "overrides": trial_overrides(spec.base, params, s)})
        else:
            return None, running
    if spec.sampler != "grid":  # register a queued trial's fixed params with the sampler's distributions
        dims = spec.dimensions()
        frozen = storage.get_trial(trial._trial_id)
        for k in frozen.system_attrs.get("fixed_params") or frozen.params:
            if k in dims:
                _suggest(trial, dims[k])
    return trial, running


def nothing_left(study, spec: SweepSpec, deadline: float | None) -> bool:
    """Whether next_trial could only answer (None, 0): nothing WAITING or RUNNING, no failed cell that reconcile
    would queue again, no search budget left, or the deadline passed. Reads only (no lock): a worker asks it
    before waiting for its fork server, so a finished study ends at once instead of after the server's imports."""
    from optuna.trial import TrialState

    if deadline is not None and time.time() > deadline:
        return True
    if study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
        return False
    if spec.sampler != "grid" and (spec.n_trials is None or _count_sampled(study) < spec.n_trials):
        return False
    return not due_again(study, spec)


def _ask(study):
    with warnings.catch_warnings():  # this ask/tell loop keeps the heartbeats itself (Optuna warns outside Study.optimize)
        warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed.*")
        return study.ask()


def _suggest(trial, dim: Dimension) -> Any:
    if dim.type == "float":
        return trial.suggest_float(dim.name, dim.low, dim.high, log=dim.log, step=dim.step)
    if dim.type == "int":
        return trial.suggest_int(dim.name, int(dim.low), int(dim.high), log=dim.log, step=int(dim.step or 1))
    return trial.suggest_categorical(dim.name, dim.choices)


# --------------------------------------------------------------------------------- driver
def study_counts(study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts
