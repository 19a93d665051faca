"""Config composition: Hydra groups in conf/ -> one typed, validated RunConfig.

    cfg = compose(["method=qlora", "train.max_steps=20"])   # raises ConfigError listing every problem
    harness validate method=qlora model=tiny-llama           # the same check from the shell

Composition uses Hydra's compose API on conf/ (groups: model, method, data, train, eval, tracker,
and experiment for pinned recipes) and on the user's config folders searched before it
(HARNESS_CONFIG_PATH / --config-dir: harness.config.search). A model or data set given by path is
named after that path (harness.config.identity). The composed tree is checked against the schema
dataclasses before anything heavy is imported: unknown keys, wrong types, unknown group options, then
the cross-field rules (harness.config.rules). Checks that read the files a run will use (data files,
a user model's layers, CUDA): harness/model/preflight.py, run by `harness validate` and sweeps.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from harness import paths
from harness.config import identity, search
from harness.config.checks import _build, check_structure, did_you_mean
from harness.config.rules import validate
from harness.config.schema import GROUPS, ConfigError, RunConfig


def _upgrade_tracker(tree: dict) -> dict:
    """Records (config.yaml) and tracker options written before several trackers could log a run held one
    `tracker.backend: wandb | none`; it becomes `tracker.backends` (in a copy of the tree)."""
    tr = tree.get("tracker")
    if not (isinstance(tr, dict) and "backend" in tr):
        return tree
    tr = dict(tr)
    backend = tr.pop("backend")
    tr.setdefault("backends", {} if backend in ("none", "", None) else {backend: True})
    return {**tree, "tracker": tr}


def _name_trackers(tree: dict, overrides: list[str]) -> None:
    """tracker=[wandb,tensorboard]: Hydra merged the options, so `name` is the last one's; name them all (wandb+tensorboard)."""
    chosen = [ov.lstrip("+~").partition("=")[2] for ov in overrides if ov.lstrip("+~").partition("=")[0] == "tracker"]
    tr = tree.get("tracker")
    if chosen and chosen[-1].startswith("[") and isinstance(tr, dict) and "tracker.name" not in identity.overridden(overrides):
        names = [c.strip() for c in chosen[-1].strip("[]").split(",") if c.strip()]
        tr["name"] = "+".join(dict.fromkeys(names))


def from_dict(tree: dict) -> RunConfig:
    """A plain dict (e.g. a run's config.yaml) -> RunConfig, with the same checks as compose()."""
    tree = _upgrade_tracker(tree)
    errors = check_structure(tree, RunConfig)
    if errors:
        raise ConfigError(errors)
    cfg = _build(RunConfig, tree)
    errors = validate(cfg)
    if errors:
        raise ConfigError(errors)
    return cfg


# ------------------------------------------------------------------------------- composition
def group_options(group: str) -> list[str]:
    """The options of a group: conf/<group>/*.yaml and the user's config folders' (harness.config.search)."""
    return search.group_options(group)


def check_key(dotted: str) -> str | None:
    """An error for an override key that is not in the schema, with a suggestion."""
    schema: Any = RunConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(schema):
            return None  # inside a dict/list field: free-form
        hints = typing.get_type_hints(schema)
        if part not in hints:
            where = ".".join(parts[:i]) or "the top level"
            return (
                f"{dotted}: unknown key {part!r} under {where}.{did_you_mean(part, hints)}"
                f" Allowed: {', '.join(sorted(hints))}"
            )
        schema = hints[part]
        if typing.get_origin(schema) is typing.Union:
            schema = next((a for a in typing.get_args(schema) if a is not type(None)), schema)
    return None


def _check_group_choices(overrides: list[str]) -> list[str]:
    errors = []
    user = ", ".join(map(str, paths.user_config_dirs()))

    def where(group: str) -> str:
        if user:
            return f"conf/{group}/ or the config folders {user}"
        return f"conf/{group}/ (for your own: a folder with {group}/NAME.yaml, by --config-dir or HARNESS_CONFIG_PATH)"

    for ov in overrides:
        key, sep, value = ov.lstrip("+~").partition("=")
        if sep and "." in key and not key.startswith("hydra"):
            err = check_key(key)
            if err:
                errors.append(err)
            continue
        if not sep or key not in (*GROUPS, "experiment"):
            continue
        options = group_options(key)
        if value.replace(" ", "") == "[]":
            errors.append(f"{key}=[]: choose at least one option (several: {key}=[a,b]), or {key}=none. Options: {', '.join(options)}")
        for choice in value.strip("[]").split(","):
            choice = choice.strip()
            if choice and choice not in ("null", "none") and choice not in options:
                errors.append(
                    f"{key}={choice}: no such option in {where(key)}.{did_you_mean(choice, options)}"
                    f" Options: {', '.join(options)}"
                )
            elif choice == "none" and "none" not in options:
                errors.append(f"{key}=none: no such option. Options: {', '.join(options)}")
    return errors


def compose_tree(overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Compose conf/config.yaml with Hydra's compose API and return a plain dict (no checks)."""
    return _compose_with_choices(overrides)[0]


def _compose_with_choices(overrides: list[str] | tuple[str, ...]) -> tuple[dict, dict]:
    """The composed tree and the option chosen in each group (Hydra's runtime choices)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    overrides = list(overrides)
    errors = search.check_user_dirs() + _check_group_choices(overrides)
    if errors:
        raise ConfigError(errors)
    search.register_with_hydra()
    # A dotted key that the schema knows (checked above) may be absent from the group's YAML
    # (schema defaults fill it later): `++` sets it whether or not the YAML lists it.
    overrides = [
        f"++{ov}" if "=" in ov and "." in ov.split("=", 1)[0] and not ov.startswith(("+", "~")) else ov
        for ov in overrides
    ]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(paths.conf_dir()), version_base="1.3"):
            try:
                composed = hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
            except Exception as exc:  # Hydra's override grammar / missing key errors
                msg = str(exc).split("\n")[0]
                hint = ""
                if "Could not override" in msg or "Key '" in msg:
                    hint = " (to add a key that is not in the schema, there is none: check the spelling)"
                raise ConfigError([f"cannot compose overrides {overrides}: {msg}{hint}"]) from None
    finally:
        GlobalHydra.instance().clear()
    choices = {k: v for k, v in composed.hydra.runtime.choices.items() if not k.startswith("hydra/")}
    with open_dict(composed):
        del composed["hydra"]
    return OmegaConf.to_container(composed, resolve=True), choices


def compose(overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Compose and check a RunConfig; raises ConfigError with every problem at once."""
    tree, choices = _compose_with_choices(overrides)
    tree = _upgrade_tracker(tree)  # a user's tracker option written for one backend
    _name_trackers(tree, list(overrides))
    errors = check_structure(tree, RunConfig)
    if errors:
        raise ConfigError(errors)
    errors = identity.apply(tree, list(overrides), choices)  # model / data given by path
    cfg = _build(RunConfig, tree)
    errors += validate(cfg)
    if errors:
        raise ConfigError(errors)
    return cfg


def default_run_name(cfg: RunConfig) -> str:
    return cfg.name or f"{cfg.model.name}-{cfg.method.name}-{cfg.data.name}"


def load_run_config(run_dir: str | Path, trust_remote_code: bool = False) -> RunConfig:
    """The resolved config a run directory recorded (config.yaml). model.trust_remote_code is never taken from the
    file (a run directory from someone else would run their code): it is the caller's `trust_remote_code`, which
    only a command-line flag of the person running it sets (`harness eval RUN_DIR --trust-remote-code`)."""
    import sys

    import yaml

    with open(Path(run_dir) / "config.yaml", encoding="utf-8") as f:
        cfg = from_dict(yaml.safe_load(f))
    if cfg.model.trust_remote_code and not trust_remote_code:
        print(f"[harness] {run_dir}/config.yaml sets model.trust_remote_code=true; not taken from a file: pass "
              "--trust-remote-code if you trust this model's code.", file=sys.stderr)
    cfg.model.trust_remote_code = trust_remote_code
    return cfg
