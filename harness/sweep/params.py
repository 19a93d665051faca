"""Grid cells as Optuna params, so optuna-dashboard, optuna.visualization and optuna.importance see every study.

    optuna-dashboard sqlite:///studies/<study>.db       # each grid trial shows its cell as params

A grid trial's axis values stay in user_attrs["params"] (what the driver runs); each cell is also queued with
Optuna params (harness/sweep/study.py enqueue_grid): a numeric axis (int or float values) gets an
Int/FloatDistribution over the grid's range, any other axis a CategoricalDistribution over its values, in grid
order, lists and mappings as their override text (`[q_proj,v_proj]`: Optuna's choices are None, bool, int,
float or str). Values pinned on the command line are covered by the declared grid's distributions.
Optuna cannot widen a categorical distribution once a trial uses it: a grid that grows a new value on a
categorical axis queues those cells without that param (user_attrs still hold it), with a note.
"""

from __future__ import annotations

import math
from typing import Any

from harness.sweep.plan import format_value


def optuna_value(v: Any) -> Any:
    """An axis value as an Optuna param value: plain values as they are, others as their override text."""
    if v is None or isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v)):
        return v
    return format_value(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def axis_values(grids: list[dict[str, list]]) -> dict[str, list]:
    """Each axis's values over the grids, as Optuna values, first occurrence first."""
    out: dict[str, list] = {}
    for g in grids:
        for k, vs in g.items():
            seen = out.setdefault(k, [])
            seen += [x for x in map(optuna_value, vs) if not any(x == y and type(x) is type(y) for y in seen)]
    return out


def distribution_for(values: list) -> Any:
    import optuna.distributions as d

    if values and all(_is_number(v) for v in values):
        if all(isinstance(v, int) for v in values):
            return d.IntDistribution(min(values), max(values))
        return d.FloatDistribution(float(min(values)), float(max(values)))
    return d.CategoricalDistribution(values)


def _merge(old: Any, new: Any) -> Any | None:
    """A distribution that holds new's values and that Optuna accepts beside old (None if there is none)."""
    import optuna.distributions as d

    if isinstance(old, d.CategoricalDistribution):
        if isinstance(new, d.CategoricalDistribution) and all(c in old.choices for c in new.choices):
            return old
        return None
    if isinstance(old, d.IntDistribution) and isinstance(new, d.IntDistribution) and not old.log and old.step == 1:
        return d.IntDistribution(min(old.low, new.low), max(old.high, new.high))
    if isinstance(old, d.FloatDistribution) and isinstance(new, (d.IntDistribution, d.FloatDistribution)) and not old.log and old.step is None:
        return d.FloatDistribution(float(min(old.low, new.low)), float(max(old.high, new.high)))
    return None


def recorded_distributions(trials) -> dict[str, Any]:
    """Each param's distribution as a study's trials recorded it (Optuna checks new ones against these)."""
    out: dict[str, Any] = {}
    for t in trials:
        for k, dist in t.distributions.items():
            out.setdefault(k, dist)
    return out


def grid_distributions(grids: list[dict[str, list]], recorded: dict[str, Any]) -> dict[str, Any]:
    """Axis -> the distribution its cells are queued with: over the grids' values, widened from what the study
    recorded where Optuna allows it, else the recorded one (cells with a value outside it go without the param)."""
    out = {}
    for k, values in axis_values(grids).items():
        new = distribution_for(values)
        out[k] = (_merge(recorded[k], new) or recorded[k]) if k in recorded else new
    return out


def dropped_note(axis: str, dist: Any, values: list) -> str:
    """Why cells go without an Optuna param for `axis` (a grid that grew a value Optuna cannot add)."""
    held = f" over {list(dist.choices)}" if hasattr(dist, "choices") else ""
    shown = ", ".join(dict.fromkeys(map(str, map(optuna_value, values))))
    return (f"grid axis {axis}: the study's Optuna param is a {type(dist).__name__}{held}, which Optuna cannot widen to "
            f"{shown}; those cells keep {axis} in their user_attrs only (optuna-dashboard and importances leave it "
            "out for them). A new study (--study NAME) has it for every cell.")


def cell_params(params: dict[str, Any], distributions: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Optuna params, their distributions) of one grid cell: the axes whose value its distribution holds."""
    values, dists = {}, {}
    for k, v in params.items():
        dist, x = distributions.get(k), optuna_value(v)
        try:
            held = dist is not None and dist._contains(dist.to_internal_repr(x))
        except (ValueError, TypeError):  # not one of its choices / not a number
            held = False
        if held:
            values[k], dists[k] = x, dist
    return values, dists
