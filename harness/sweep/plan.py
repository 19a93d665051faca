"""A parsed sweep spec -> its trials: grid expansion (every cell x seed), the override list each trial's
`harness train` gets, axes pinned from the command line, and check_trials, which composes every trial's
config and runs the preflight checks (harness/model/preflight.py: data files, CUDA, a model given by
path) before anything runs. Pure apart from composing configs and those checks.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from typing import Any

import yaml

from harness import config
from harness.model.preflight import preflight
from harness.sweep.spec import PlannedTrial, SweepSpec, _coerce, _override_key


# ----------------------------------------------------------------- grid and overrides (pure)
def expand_grid(grid: list[dict[str, list]]) -> list[dict[str, Any]]:
    """Union of the cartesian products, in order, each cell once (first occurrence wins)."""
    cells, seen = [], set()
    for g in grid:
        keys = list(g)
        for values in itertools.product(*(g[k] for k in keys)):
            cell = dict(zip(keys, values))
            key = json.dumps(cell, sort_keys=True)
            if key not in seen:
                seen.add(key)
                cells.append(cell)
    return cells


def cell_key(params: dict[str, Any], seed: int) -> str:
    return json.dumps({"params": params, "seed": seed}, sort_keys=True)


_BARE = re.compile(r"^[A-Za-z0-9_./:@\-+]+$")
_RESERVED = ("true", "false", "null", "nan", "inf", "+inf", "-inf", "+nan", "-nan")  # Hydra reads these bare words as values


def format_value(v: Any) -> str:
    """A Python value as a Hydra override value that composes back to the same value: quoted where the
    grammar needs it, backslashes doubled only before a quote or the end (Hydra's rule), `${` escaped
    so it is not resolved as an interpolation."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{format_value(x)}" for k, x in v.items()) + "}"
    s = str(v)
    if _BARE.match(s) and s.lower() not in _RESERVED and not re.match(r"^[-+]?[\d.]", s):
        return s
    s = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", s)  # OmegaConf: \${ is a literal ${
    s = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, s).replace("'", "\\'")
    return "'" + s + "'"


def merge_overrides(base: list[str], extra: list[str]) -> list[str]:
    """base then extra, where an extra override replaces a base one with the same key."""
    keys = {_override_key(o) for o in extra}
    return [o for o in base if _override_key(o) not in keys] + list(extra)


def param_overrides(params: dict[str, Any]) -> list[str]:
    return [f"{k}={format_value(v)}" for k, v in params.items()]


def trial_overrides(base: list[str], params: dict[str, Any], seed: int) -> list[str]:
    """The overrides that reproduce one trial with `harness train` (no bookkeeping keys)."""
    return merge_overrides(base, [*param_overrides(params), f"train.seed={seed}"])


def bookkeeping_overrides(*, study: str, trial: int, storage: str, run_id: str, output_dir: str, tags: list[str]) -> list[str]:
    """The driver's keys for one trial (every value quoted as Hydra needs: a study named `a=b` is fine)."""
    return [
        f"name={format_value(study)}", f"output_dir={format_value(output_dir)}", f"run_id={format_value(run_id)}",
        f"study={format_value(study)}", f"trial={trial}", f"storage={format_value(storage)}", f"++tracker.tags={format_value(tags)}",
    ]


def pin_axes(spec: SweepSpec, cli: list[str]) -> tuple[SweepSpec, list[str]]:
    """Command-line overrides that name a grid axis or search dimension pin it to that one value:
    the grid keeps only the cells with that value (or, if no cell has it, every cell gets it).
    The others are appended to the spec's base. Returns (new spec, those other overrides)."""
    spec = dataclasses.replace(spec, grid=[dict(g) for g in spec.grid], search=dict(spec.search),
                               declared_grid=spec.declared_grid or [dict(g) for g in spec.grid])
    rest = []
    for ov in cli:
        key, _, value = ov.partition("=")
        if key in spec.search or any(key in g for g in spec.grid):
            parsed = _coerce(yaml.safe_load(value)) if value else value
            spec.search.pop(key, None)
            if any(parsed in g.get(key, []) for g in spec.grid):
                spec.grid = [dict(g, **{key: [parsed]}) for g in spec.grid if parsed in g.get(key, [parsed])]
            else:
                spec.grid = [dict(g, **{key: [parsed]}) for g in spec.grid] or [{key: [parsed]}]
        else:
            rest.append(ov)
    spec.base = merge_overrides(spec.base, rest)
    return spec, rest


def _slug(params: dict[str, Any]) -> str:
    """Axis values for a run id: only letters, digits and .+- (no `=`, `/` or `..`), cut to 48 characters."""
    s = "-".join(re.sub(r"[^A-Za-z0-9.+-]", "", str(v)) for v in params.values())
    return re.sub(r"\.{2,}", ".", s)[:48].strip(".-")


def grid_run_id(t: PlannedTrial, token: str) -> str:
    """The run id a grid cell x seed gets when it is queued (kept across retries): c003-lora-16-s1-<token>."""
    return re.sub(r"-{2,}", "-", f"c{t.index:03d}-{_slug(t.params)}-s{t.seed}-{token}")


def plan_grid(spec: SweepSpec) -> list[PlannedTrial]:
    """Every grid cell x seed, in order, with its overrides."""
    out = []
    for i, params in enumerate(expand_grid(spec.grid)):
        for seed in spec.seeds:
            out.append(PlannedTrial(i, params, seed, cell_key(params, seed), trial_overrides(spec.base, params, seed)))
    return out


def validation_points(spec: SweepSpec) -> list[PlannedTrial]:
    """Configurations to compose before a search starts: every grid cell (categorical choices) with
    the numeric search dimensions at their low and at their high ends; categorical search
    dimensions are crossed in full. Trials are sampled inside these bounds."""
    cats = [{**g, **{k: d.choices for k, d in spec.search.items() if d.type == "categorical"}} for g in (spec.grid or [{}])]
    nums = {k: d for k, d in spec.search.items() if d.type != "categorical"}
    ends = [{k: (int(d.low) if d.type == "int" else d.low) for k, d in nums.items()},
            {k: (int(d.high) if d.type == "int" else d.high) for k, d in nums.items()}]
    out, i = [], 0
    for cell in expand_grid(cats):
        for end in ends if nums else [{}]:
            params = {**cell, **end}
            out.append(PlannedTrial(i, params, spec.seeds[0], cell_key(params, spec.seeds[0]), trial_overrides(spec.base, params, spec.seeds[0])))
            i += 1
    return out


def _suites(cfg: config.RunConfig) -> set[str]:
    """The eval.json suites a trial with this config will write (none when it does not evaluate)."""
    from harness.eval.suites import suite_names  # light: the suite kinds import no ML library at module level

    return set(suite_names(cfg)) if cfg.eval.after_train else set()


def _arrived(cfg: Any, key: str) -> Any:
    """The value a dotted key has in a composed RunConfig (_ABSENT for a group choice or an unknown key)."""
    if key in config.GROUPS:
        return _ABSENT
    node = cfg
    for part in key.split("."):
        if not hasattr(node, part):
            return _ABSENT
        node = getattr(node, part)
    return node


_ABSENT = object()


def check_trials(spec: SweepSpec, planned: list[PlannedTrial], storage: str = "", runs_root: str = "runs",
                 token: str = "000000", device_here: bool = True) -> tuple[list[str], list[str]]:
    """Compose every planned trial's config (config.compose) with the driver's bookkeeping overrides
    exactly as its child will get them (its real run id, with `token` for the study's token), and check
    that each axis value and each bookkeeping value arrives in the config unchanged (quoting, `=`,
    `${`, backslashes), and run the preflight checks on it (without the CUDA check when the trials run on other
    machines: device_here=False). Returns (errors, the base tracker tags)."""
    errs: list[str] = []
    tags: list[str] = []
    for t in planned:
        label = f"trial {t.index} ({', '.join(f'{k}={v}' for k, v in t.params.items()) or 'base'}, seed {t.seed})"
        run_id = grid_run_id(t, token) if spec.sampler == "grid" else f"t{t.index:04d}-s{t.seed}-{token}"
        keep = {"name": spec.study, "study": spec.study, "run_id": run_id, "output_dir": runs_root, "storage": storage}
        extra = bookkeeping_overrides(study=spec.study, trial=0, storage=storage, run_id=run_id, output_dir=runs_root, tags=[spec.study])
        try:
            if t is planned[0]:  # the tags the base config already has (the study's tag is added to them)
                tags = list(dict.fromkeys(config.compose(t.overrides).tracker.tags))
            cfg = config.compose(merge_overrides(t.overrides, extra))
        except config.ConfigError as exc:
            errs += [f"{label}: {e}" for e in exc.errors]
            continue
        errs += [f"{label}: {e}" for e in preflight(cfg, device=device_here)]
        for k, want in {**t.params, **keep}.items():
            got = _arrived(cfg, k)
            if isinstance(want, str) and isinstance(got, str) and got != want:  # numbers cannot be mis-quoted
                errs.append(f"{label}: {k}={want!r} reaches the trial's config as {got!r} (override {k}={format_value(want)}); "
                            "use a plainer value")
        suites = _suites(cfg)
        for o in spec.objectives:
            suite = o.metric.split(".")[0]
            if suite != "summary" and suite not in suites:
                errs.append(
                    f"{label}: objective {o.metric} needs eval suite {suite!r}, but eval={cfg.eval.name} runs "
                    f"{', '.join(sorted(suites)) or 'no suites'}; choose another eval= in base, or a summary.* metric."
                )
    # one message per distinct problem is enough when many trials share it
    return list(dict.fromkeys(errs)), tags
