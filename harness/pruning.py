"""Pruning hook between a trial's child process and its Optuna study.

The sweep driver passes `study`, `trial` and `storage` into the run config; the trainer calls
`reporter_for(cfg)` once and `.report(step, val_loss)` at every evaluation. True means "stop now:
pruned". Outside a sweep the reporter never prunes.
"""

from __future__ import annotations

from harness.config import RunConfig


class NullReporter:
    def report(self, step: int, value: float) -> bool:
        return False


class OptunaReporter:
    def __init__(self, storage: str, study: str, trial_number: int):
        import optuna

        self._study = optuna.load_study(study_name=study, storage=storage)
        trial_id = self._study._storage.get_trial_id_from_study_id_trial_number(self._study._study_id, trial_number)
        self._trial = optuna.trial.Trial(self._study, trial_id)

    def report(self, step: int, value: float) -> bool:
        self._trial.report(float(value), step)
        return bool(self._trial.should_prune())


def reporter_for(cfg: RunConfig):
    if cfg.storage and cfg.study and cfg.trial >= 0:
        return OptunaReporter(cfg.storage, cfg.study, cfg.trial)
    return NullReporter()
