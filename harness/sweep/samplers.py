"""Samplers and pruners by name: the spec's `sampler:` and `pruner: {type: ...}` are keys of SAMPLERS and
PRUNERS. A new one is one entry here (harness/sweep/spec.py checks names against these dicts).

Each builder takes the parsed spec (SweepSpec / PrunerSpec, harness/sweep/spec.py) and returns the
Optuna object; Optuna is imported only when a study is opened.
"""

from __future__ import annotations

from typing import Any, Callable


def _grid(spec) -> Any:
    import optuna

    # grid: every trial is enqueued with fixed params, the sampler never samples
    return optuna.samplers.RandomSampler(seed=spec.sampler_seed)


def _random(spec) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=spec.sampler_seed)


def _tpe(spec) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=spec.sampler_seed, multivariate=True, group=True)


def _nsga2(spec) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=spec.sampler_seed)


def _no_pruner(p) -> Any:
    import optuna

    return optuna.pruners.NopPruner()


def _median(p) -> Any:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)


def _hyperband(p) -> Any:
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)


SAMPLERS: dict[str, Callable[[Any], Any]] = {"grid": _grid, "random": _random, "tpe": _tpe, "nsga2": _nsga2}
PRUNERS: dict[str, Callable[[Any], Any]] = {"none": _no_pruner, "median": _median, "hyperband": _hyperband}


def build_sampler(spec) -> Any:
    """The Optuna sampler for a SweepSpec."""
    return SAMPLERS[spec.sampler](spec)


def build_pruner(p) -> Any:
    """The Optuna pruner for a PrunerSpec."""
    return PRUNERS[p.type](p)
