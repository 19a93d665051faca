"""Samplers and pruners by name: the spec's `sampler:` and `pruner: {type: ...}` are keys of SAMPLERS and
PRUNERS. A new one is one entry here (harness/sweep/spec.py checks names against these dicts).

Each sampler builder takes the parsed spec (SweepSpec, harness/sweep/spec.py) and the seed to use, each
pruner builder a PrunerSpec; they return the Optuna object (Optuna is imported only when a study is opened).
Several workers share one study, so each worker seeds its sampler differently (worker_seed) and TPE
counts the points other workers are running as bad ones (constant_liar) instead of sampling them again.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable


def _grid(spec, seed: int) -> Any:
    import optuna

    # grid: every trial is enqueued with fixed params, the sampler never samples
    return optuna.samplers.RandomSampler(seed=seed)


def _random(spec, seed: int) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _tpe(spec, seed: int) -> Any:
    import optuna

    # constant_liar: trials running in other workers count as bad results, so parallel workers spread out
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def _nsga2(spec, seed: int) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed)


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


def worker_seed(sampler_seed: int, first_trial: int) -> int:
    """The seed of one worker's sampler: derived from the spec's seed and the number of the first trial
    the worker samples (unique across processes and machines, because trials are numbered under the
    study lock), so no two workers draw the same sequence; one worker on a new study is reproducible."""
    return int.from_bytes(hashlib.sha256(f"{sampler_seed}:{first_trial}".encode()).digest()[:4], "big")


def build_sampler(spec, seed: int | None = None) -> Any:
    """The Optuna sampler for a SweepSpec (seeded with `seed`, default the spec's sampler seed)."""
    return SAMPLERS[spec.sampler](spec, spec.sampler_seed if seed is None else seed)


def build_pruner(p) -> Any:
    """The Optuna pruner for a PrunerSpec."""
    return PRUNERS[p.type](p)
