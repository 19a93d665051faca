"""Pruning hook between a trial's child process and its Optuna study.

The sweep worker (harness/sweep/worker.py) passes `study`, `trial` and `storage` into the run config; the
pipeline calls `reporter_for(cfg)` once and hands it to the trainer, which calls `.report(step, val_loss)`
at every evaluation. True means "stop now: pruned" (the trainer then exits with code 3). Outside a sweep the reporter never prunes.
The pruner is the one the sweep spec names (stored with the study), so a child process prunes
exactly as the driver would. Used by `harness train` inside `harness sweep`.
"""

from __future__ import annotations

import math

from harness.config import RunConfig


class NullReporter:
    def report(self, step: int, value: float) -> bool:
        return False


class OptunaReporter:
    def __init__(self, storage: str, study: str, trial_number: int):
        import optuna

        from harness.sweep.samplers import build_pruner
        from harness.sweep.spec import PrunerSpec
        from harness.sweep.storage import open_storage

        store = open_storage(storage, set_up=True)  # by the sweep driver that started this trial
        spec = optuna.load_study(study_name=study, storage=store).user_attrs.get("harness_spec") or {}
        pruner = build_pruner(PrunerSpec(**(spec.get("pruner") or {"type": "none"})))
        self._study = optuna.load_study(study_name=study, storage=store, pruner=pruner)
        # Optuna prunes single-objective studies only (Trial.report raises for several objectives),
        # and a study without a pruner has nothing to ask: then this reporter never prunes.
        self.active = len(self._study.directions) == 1 and (spec.get("pruner") or {}).get("type", "none") != "none"
        trial_id = store.get_trial_id_from_study_id_trial_number(self._study._study_id, trial_number)
        self._trial = optuna.trial.Trial(self._study, trial_id)

    def report(self, step: int, value: float) -> bool:
        if not self.active:
            return False
        value = float(value)
        if not math.isfinite(value):
            return False  # a diverged loss is the trainer's to record (status diverged), not a pruning signal
        self._trial.report(value, int(step))
        return bool(self._trial.should_prune())


def reporter_for(cfg: RunConfig):
    if cfg.storage and cfg.study and cfg.trial >= 0:
        return OptunaReporter(cfg.storage, cfg.study, cfg.trial)
    return NullReporter()
