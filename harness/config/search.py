"""Where group options come from: the shipped conf/ plus the user's own config folders, which ADD options.

    HARNESS_CONFIG_PATH=~/my-conf harness train data=my-data      # ~/my-conf/data/my-data.yaml
    harness validate --config-dir ~/my-conf data=my-data model=my-model

A user folder holds group folders (data/, model/, method/, train/, eval/, tracker/, experiment/) of YAML
files shaped like the shipped ones (a user YAML may start from a shipped one with `defaults: [alpaca-tiny,
_self_]`). Folders are searched in order, before conf/: a user option with the same name as a shipped
one REPLACES it, and `harness validate` says so. A user folder may not hold config.yaml: the defaults
list (conf/config.yaml) stays ours.

Hydra learns of the folders through a SearchPathPlugin that puts them before conf/ (Hydra's own
`hydra.searchpath` appends them after it, where the shipped file would win).
"""
from __future__ import annotations

from pathlib import Path

from harness import paths
from harness.config.checks import did_you_mean
from harness.config.schema import GROUPS

SEARCHED = (*GROUPS, "experiment", "launcher")  # the folders a config folder may hold (launcher/: harness/sweep/launcher.py)


def config_dirs() -> list[Path]:
    """Every config folder, in search order: the user's (HARNESS_CONFIG_PATH) first, then conf/."""
    return [*paths.user_config_dirs(), paths.conf_dir()]


def option_files(group: str) -> dict[str, Path]:
    """Option name -> the YAML file it composes from (the first folder that has it wins)."""
    out: dict[str, Path] = {}
    for d in reversed(config_dirs()):
        if (d / group).is_dir():
            out.update({p.stem: p for p in sorted((d / group).glob("*.yaml"))})
    return dict(sorted(out.items()))


def group_options(group: str) -> list[str]:
    """The options of a group, shipped and the user's, sorted."""
    return list(option_files(group))


def shadowed() -> list[str]:
    """One line per user option that replaces a shipped one of the same name."""
    conf, notes = paths.conf_dir(), []
    for group in SEARCHED:
        for name, p in option_files(group).items():
            shipped = conf / group / f"{name}.yaml"
            if shipped.exists() and p != shipped:
                notes.append(f"{group}={name} comes from {p}, which replaces the shipped {shipped}")
    return notes


def check_user_dirs() -> list[str]:
    """Problems with the user's config folders, each with its fix."""
    errors = []
    for d in paths.user_config_dirs():
        where = f"config folder {d} (HARNESS_CONFIG_PATH / --config-dir)"
        if not d.is_dir():
            errors.append(f"{where} does not exist; create it or fix the path.")
            continue
        if (d / "config.yaml").exists():
            errors.append(
                f"{d / 'config.yaml'}: a config folder adds group options and cannot replace conf/config.yaml; "
                "remove it (set top-level keys as overrides, or in an experiment/ YAML)."
            )
        for sub in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if sub.name not in SEARCHED:
                errors.append(
                    f"{sub}: {sub.name!r} is not a config group, so nothing in it is used.{did_you_mean(sub.name, SEARCHED)}"
                    f" Groups: {', '.join(SEARCHED)}"
                )
    return errors


def register_with_hydra() -> None:
    """Tell Hydra to search the user's folders before conf/ (idempotent; read from the environment on
    every compose, so a changed HARNESS_CONFIG_PATH takes effect at the next one)."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(_user_folders_plugin())


_PLUGIN = None


def _user_folders_plugin():
    global _PLUGIN
    if _PLUGIN is None:
        from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
        from hydra.plugins.search_path_plugin import SearchPathPlugin

        class HarnessUserConfig(SearchPathPlugin):
            """The user's config folders, before conf/ ("main"), the first folder first."""

            def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
                main = SearchPathQuery(provider="main", path=None)
                if search_path.find_first_match(main) == -1:
                    return
                for d in paths.user_config_dirs():
                    search_path.prepend(provider="harness-user", path=f"file://{d}", anchor=main)

        _PLUGIN = HarnessUserConfig
    return _PLUGIN
