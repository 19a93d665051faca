"""Sweep specs (sweeps/NAME.yaml): schema and parsing, every error at once with its fix. Pure apart from
reading the spec file. Format: docs/sweeps.md. Planning the trials of a parsed spec: harness/sweep/plan.py.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness import config, paths
from harness.sweep.launcher import parse_block as parse_launcher
from harness.sweep.samplers import PRUNERS, SAMPLERS

DIRECTIONS = ("minimize", "maximize")


# Top-level keys the driver sets on every trial; a spec or the command line may not set them.
BOOKKEEPING = ("name", "output_dir", "run_id", "study", "trial", "storage")


# Numeric summary.json fields (docs/run-record.md) an objective may name as summary.<field>.
SUMMARY_METRICS = (
    "trainable_params", "total_params", "trainable_share", "peak_memory_mb", "wall_time_s", "train_time_s",
    "eval_time_s", "train_tokens", "tokens_per_s", "steps", "epochs_done", "final_train_loss",
    "final_val_loss", "best_val_loss", "adapter_bytes",
)


SPEC_KEYS = (
    "study", "description", "base", "grid", "search", "seeds", "objectives", "sampler", "pruner",
    "budget", "max_retries", "heartbeat", "references", "command", "launcher",
)


COMMANDS = ("train", "eval")  # what each trial runs: `harness train` (default) or `harness eval` (no training)


class SpecError(ValueError):
    """A sweep spec that cannot run; `errors` lists every problem with its fix."""

    def __init__(self, source: str, errors: list[str]):
        self.errors = list(errors)
        super().__init__(f"invalid sweep spec {source}:\n" + "\n".join(f"  - {e}" for e in self.errors))


# ------------------------------------------------------------------------------------ schema
@dataclass
class Dimension:
    """One search dimension: float/int in [low, high] (log scale optional) or categorical choices."""

    name: str
    type: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list = field(default_factory=list)

    def distribution(self):
        import optuna.distributions as d

        if self.type == "float":
            return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return d.CategoricalDistribution(self.choices)


@dataclass
class Objective:
    metric: str  # flat metric name: summary.<field> or <suite>.<metric> (docs/run-record.md)
    direction: str  # minimize | maximize


@dataclass
class PrunerSpec:
    type: str = "none"  # none | median | hyperband
    n_startup_trials: int = 2  # median: trials that finish before any pruning
    n_warmup_steps: int = 0  # median: steps before a trial can be pruned
    min_resource: int = 1  # hyperband: steps every trial gets
    reduction_factor: int = 3  # hyperband


@dataclass
class SweepSpec:
    study: str
    source: str = ""
    description: str = ""
    base: list[str] = field(default_factory=list)  # Hydra overrides for every trial
    grid: list[dict[str, list]] = field(default_factory=list)  # union of cartesian products
    declared_grid: list[dict[str, list]] = field(default_factory=list)  # the grid before command-line pins (plan.pin_axes)
    search: dict[str, Dimension] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    objectives: list[Objective] = field(default_factory=list)
    sampler: str = "grid"
    sampler_seed: int = 0
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    n_trials: int | None = None  # search samplers: configurations to sample (each run for every seed)
    timeout_s: float | None = None  # stop starting trials after this long (per invocation)
    max_retries: int = 2  # re-runs of a trial whose worker died (stale heartbeat)
    heartbeat_interval: int = 10
    grace_period: int = 60
    references: list[dict] = field(default_factory=list)
    command: str = "train"
    launcher: dict[str, Any] = field(default_factory=dict)  # `launcher:`, checked (harness/sweep/launcher.py); not part of the study

    def axes(self) -> list[str]:
        names = [k for g in self.grid for k in g]
        return list(dict.fromkeys(names + list(self.search)))

    def dimensions(self) -> dict[str, Dimension]:
        """What a search sampler samples: grid axes as categorical over all their values, then search."""
        values: dict[str, list] = {}
        for g in self.grid:
            for k, vs in g.items():
                values.setdefault(k, [])
                values[k] += [v for v in vs if v not in values[k]]
        return {**{k: Dimension(k, "categorical", choices=vs) for k, vs in values.items()}, **self.search}


@dataclass
class PlannedTrial:
    """One trial a grid spec creates: its axis values, seed, run id and Hydra overrides."""

    index: int  # cell index in grid order
    params: dict[str, Any]
    seed: int
    cell: str  # canonical key of (params, seed): the identity used to enqueue exactly once
    overrides: list[str]  # what `harness train` needs to reproduce it (no bookkeeping keys)


# ---------------------------------------------------------------------------- spec parsing
def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _override_key(ov: str) -> str:
    return ov.lstrip("+~").partition("=")[0].strip()


def _check_axis_key(key: str) -> str | None:
    if key in config.GROUPS:
        return None
    if key == "train.seed":
        return "train.seed: seeds are not an axis; list them under `seeds:` (each configuration runs once per seed)."
    if key in BOOKKEEPING:
        return f"{key}: set by the sweep driver for every trial; remove it from the spec."
    err = config.check_key(key)
    if err and "." not in key:
        return f"{key}: not a config group ({', '.join(config.GROUPS)}) nor a config key like method.r.{_did_you_mean(key, config.GROUPS)}"
    return err


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def _coerce(v: Any) -> Any:
    """YAML 1.1 reads 2e-5 (no dot) as a string; a grid value that spells a float is one."""
    return float(v) if isinstance(v, str) and _FLOAT.match(v) else v


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _parse_dimension(name: str, raw: Any, errs: list[str]) -> Dimension | None:
    where = f"search.{name}"
    if isinstance(raw, list):
        raw = {"type": "categorical", "choices": raw}
    if not isinstance(raw, dict):
        errs.append(f"{where}: expected a mapping like {{type: float, low: 1e-5, high: 1e-3, log: true}}, got {raw!r}")
        return None
    allowed = ("type", "low", "high", "log", "step", "choices")
    for k in raw:
        if k not in allowed:
            errs.append(f"{where}.{k}: unknown key.{_did_you_mean(k, allowed)} Allowed: {', '.join(allowed)}")
    tp = raw.get("type", "categorical" if "choices" in raw else "float")
    if tp not in ("float", "int", "categorical"):
        errs.append(f"{where}.type={tp!r}: use float, int or categorical.{_did_you_mean(tp, ('float', 'int', 'categorical'))}")
        return None
    dim = Dimension(name, tp, log=bool(raw.get("log", False)), step=raw.get("step"), choices=[_coerce(c) for c in raw.get("choices") or []])
    if tp == "categorical":
        if not dim.choices or not all(_scalar(c) for c in dim.choices):
            errs.append(f"{where}.choices: give a non-empty list of plain values (numbers, strings, booleans).")
        return dim
    for k in ("low", "high"):
        v = raw.get(k)
        if isinstance(v, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                v = float(v)
            except ValueError:
                pass
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            errs.append(f"{where}.{k}={v!r}: a number is required for type {tp}.")
            return None
        if tp == "int" and float(v) != int(v):
            errs.append(f"{where}.{k}={v!r}: type int needs whole numbers (or use type: float).")
        setattr(dim, k, int(v) if tp == "int" else float(v))
    if dim.low >= dim.high:
        errs.append(f"{where}: low={dim.low} must be below high={dim.high}.")
    if dim.log and dim.low <= 0:
        errs.append(f"{where}: log=true needs low > 0 (got {dim.low}).")
    if dim.log and dim.step is not None:
        errs.append(f"{where}: step and log=true cannot be combined (Optuna); drop one.")
    return dim


def _parse_pruner(raw: Any, errs: list[str]) -> PrunerSpec:
    if raw is None:
        return PrunerSpec()
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        errs.append(f"pruner: expected none | median | hyperband or a mapping with type:, got {raw!r}")
        return PrunerSpec()
    names = [f.name for f in dataclasses.fields(PrunerSpec)]
    out = PrunerSpec()
    for k, v in raw.items():
        if k not in names:
            errs.append(f"pruner.{k}: unknown key.{_did_you_mean(k, names)} Allowed: {', '.join(names)}")
        elif k == "type":
            if v not in PRUNERS:
                errs.append(f"pruner: {v!r} is not one of {', '.join(PRUNERS)}.{_did_you_mean(v, PRUNERS)}")
            out.type = str(v)
        elif not isinstance(v, int) or isinstance(v, bool) or v < 0:
            errs.append(f"pruner.{k}={v!r}: a non-negative integer is required.")
        else:
            setattr(out, k, v)
    return out


def parse_spec(tree: Any, source: str = "<spec>") -> SweepSpec:
    """A spec mapping (the YAML file's content) -> SweepSpec; raises SpecError with every problem."""
    errs: list[str] = []
    if not isinstance(tree, dict):
        raise SpecError(source, [f"the file must hold a mapping with keys {', '.join(SPEC_KEYS)}; got {type(tree).__name__}"])
    for k in tree:
        if k not in SPEC_KEYS:
            errs.append(f"{k}: unknown key.{_did_you_mean(k, SPEC_KEYS)} Allowed: {', '.join(SPEC_KEYS)}")
    study = tree.get("study")
    if not study:
        errs.append("study: required (the Optuna study name; runs go to <runs-root>/<study>/).")
    else:
        try:
            paths.check_name(str(study), "study")
        except ValueError as exc:
            errs.append(str(exc))
    spec = SweepSpec(study=str(study or ""), source=source, description=str(tree.get("description") or ""))

    base = tree.get("base") or []
    if not isinstance(base, list) or not all(isinstance(x, str) and "=" in x for x in base):
        errs.append(f"base: a list of Hydra overrides like 'data=alpaca-demo' is required, got {base!r}")
        base = []
    for ov in base:
        if _override_key(ov) in (*BOOKKEEPING, "train.seed"):
            errs.append(f"base: {ov!r} is set by the driver (use `seeds:` for train.seed); remove it.")
    spec.base = list(base)

    grid = tree.get("grid") or []
    grid = [grid] if isinstance(grid, dict) else grid
    if not isinstance(grid, list) or not all(isinstance(g, dict) for g in grid):
        errs.append("grid: a mapping of axis -> list of values, or a list of such mappings (their union).")
        grid = []
    for gi, g in enumerate(grid):
        for k, vs in g.items():
            err = _check_axis_key(str(k))
            if err:
                errs.append(f"grid: {err}")
            if not isinstance(vs, list) or not vs:
                errs.append(f"grid.{k}: a non-empty list of values is required, got {vs!r}")
            elif not all(_scalar(v) for v in vs):
                errs.append(f"grid.{k}: values must be plain (numbers, strings, booleans), got {vs!r}")
            elif len(set(map(json.dumps, vs))) != len(vs):
                errs.append(f"grid.{k}: duplicate values in {vs!r}")
    spec.grid = [{str(k): [_coerce(x) for x in v] for k, v in g.items() if isinstance(v, list) and v} for g in grid]

    search = tree.get("search") or {}
    if not isinstance(search, dict):
        errs.append("search: a mapping of dotted key -> {type, low, high, log} is required.")
        search = {}
    for k, raw in search.items():
        err = _check_axis_key(str(k))
        if err:
            errs.append(f"search: {err}")
        dim = _parse_dimension(str(k), raw, errs)
        if dim:
            spec.search[str(k)] = dim
    for k in spec.search:
        if any(k in g for g in spec.grid):
            errs.append(f"{k}: both a grid axis and a search dimension; keep one.")

    seeds = tree.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        errs.append(f"seeds: a non-empty list of integers is required (e.g. [0, 1, 2]), got {seeds!r}")
    elif len(set(seeds)) != len(seeds):
        errs.append(f"seeds: duplicates in {seeds!r}")
    else:
        spec.seeds = list(seeds)

    objectives = tree.get("objectives") or []
    if not isinstance(objectives, list) or not objectives:
        errs.append("objectives: at least one {metric: summary.best_val_loss, direction: minimize} is required.")
        objectives = []
    for i, o in enumerate(objectives):
        if not isinstance(o, dict) or set(o) - {"metric", "direction"} or "metric" not in o:
            errs.append(f"objectives[{i}]: expected {{metric: <suite>.<metric> | summary.<field>, direction: minimize|maximize}}, got {o!r}")
            continue
        metric, direction = str(o["metric"]), o.get("direction", "minimize")
        if direction not in DIRECTIONS:
            errs.append(f"objectives[{i}].direction={direction!r}: use minimize or maximize.{_did_you_mean(direction, DIRECTIONS)}")
        suite, dot, name = metric.partition(".")
        if not dot or not suite or not name:
            errs.append(f"objectives[{i}].metric={metric!r}: use a flat name <suite>.<metric> (e.g. wikitext2.word_perplexity) or summary.<field>.")
        elif suite == "summary" and name not in SUMMARY_METRICS:
            errs.append(f"objectives[{i}].metric={metric!r}: summary.json has no numeric field {name!r}.{_did_you_mean(name, SUMMARY_METRICS)}")
        spec.objectives.append(Objective(metric, str(direction)))
    if len({o.metric for o in spec.objectives}) != len(spec.objectives):
        errs.append("objectives: the same metric is listed twice.")

    sampler = tree.get("sampler", "grid")
    if isinstance(sampler, dict):
        spec.sampler_seed = sampler.get("seed", 0)
        if set(sampler) - {"type", "seed"}:
            errs.append(f"sampler: only type and seed are allowed, got {sorted(sampler)}")
        sampler = sampler.get("type", "grid")
    if sampler not in SAMPLERS:
        errs.append(f"sampler: {sampler!r} is not one of {', '.join(SAMPLERS)}.{_did_you_mean(sampler, SAMPLERS)}")
    spec.sampler = str(sampler)
    spec.pruner = _parse_pruner(tree.get("pruner"), errs)

    budget = tree.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - {"n_trials", "timeout_s"}:
        errs.append(f"budget: a mapping with n_trials and/or timeout_s, got {budget!r}")
        budget = {}
    n_trials, timeout_s = budget.get("n_trials"), budget.get("timeout_s")
    if n_trials is not None and (not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1):
        errs.append(f"budget.n_trials={n_trials!r}: a positive integer is required.")
    if timeout_s is not None and (not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or timeout_s <= 0):
        errs.append(f"budget.timeout_s={timeout_s!r}: a positive number of seconds is required.")
    spec.n_trials, spec.timeout_s = n_trials, (float(timeout_s) if timeout_s else None)

    retries = tree.get("max_retries", 2)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        errs.append(f"max_retries={retries!r}: a non-negative integer is required.")
    else:
        spec.max_retries = retries
    hb = tree.get("heartbeat") or {}
    if not isinstance(hb, dict) or set(hb) - {"interval_s", "grace_period_s"}:
        errs.append(f"heartbeat: a mapping with interval_s and grace_period_s, got {hb!r}")
        hb = {}
    spec.heartbeat_interval = hb.get("interval_s", spec.heartbeat_interval)
    spec.grace_period = hb.get("grace_period_s", max(spec.grace_period, 3 * spec.heartbeat_interval) if "interval_s" not in hb else 3 * spec.heartbeat_interval)
    for k, v in (("interval_s", spec.heartbeat_interval), ("grace_period_s", spec.grace_period)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            errs.append(f"heartbeat.{k}={v!r}: a positive whole number of seconds is required.")
    if not errs and spec.grace_period <= spec.heartbeat_interval:
        errs.append(f"heartbeat: grace_period_s={spec.grace_period} must exceed interval_s={spec.heartbeat_interval} (3x is a good choice).")

    command = tree.get("command", "train")
    if command not in COMMANDS:
        errs.append(f"command={command!r}: each trial runs one of {', '.join(COMMANDS)}.{_did_you_mean(str(command), COMMANDS)}")
    else:
        spec.command = command

    spec.launcher = parse_launcher(tree.get("launcher"), errs)

    refs = tree.get("references") or []
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        errs.append("references: a list of mappings like {metric: ..., value: ..., source: ...}.")
    else:
        spec.references = refs

    # cross-field rules
    if spec.sampler == "grid":
        if not spec.grid:
            errs.append("sampler=grid needs a `grid:` (axis -> values); for one configuration use grid: {method: [lora]}.")
        if spec.search:
            errs.append(f"sampler=grid cannot search {', '.join(spec.search)}; list values under `grid:` or use sampler: tpe | random | nsga2.")
        if spec.n_trials is not None:
            errs.append("budget.n_trials: a grid runs every cell x seed exactly once; remove n_trials (timeout_s is allowed).")
    elif not spec.grid and not spec.search:
        errs.append(f"sampler={spec.sampler} has nothing to sample: add `search:` dimensions or `grid:` choices.")
    elif spec.n_trials is None and spec.timeout_s is None:
        errs.append(f"sampler={spec.sampler}: set budget.n_trials and/or budget.timeout_s, or the study never ends.")
    if spec.pruner.type != "none":
        if len(spec.objectives) > 1:
            errs.append(f"pruner={spec.pruner.type}: Optuna cannot prune multi-objective studies; use pruner: none.")
        elif spec.objectives and spec.objectives[0].direction != "minimize":
            errs.append(
                f"pruner={spec.pruner.type} is fed the validation loss (lower is better) but the objective "
                f"{spec.objectives[0].metric} is maximized; use pruner: none or a minimized loss objective."
            )
    if errs:
        raise SpecError(source, errs)
    return spec


def find_spec(path: str | Path) -> Path | None:
    """A spec file: the path as given, else a shipped spec (paths.shipped("sweeps")) named `NAME`, `NAME.yaml` or
    `sweeps/NAME.yaml`, so that `harness sweep quickstart` works from any folder and from an installed package."""
    p = Path(path)
    if p.is_file():
        return p
    if p.parent in (Path("."), Path("sweeps")):
        shipped = paths.shipped("sweeps") / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
        if shipped.is_file():
            return shipped
    return None


def load_spec(path: str | Path) -> SweepSpec:
    p = find_spec(path)
    if p is None:
        near = sorted(x.stem for x in paths.shipped("sweeps").glob("*.yaml"))
        raise SpecError(str(path), [f"no such file, nor a shipped spec of that name. Shipped specs: {', '.join(near)}"])
    try:
        tree = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_spec(tree, str(path))
