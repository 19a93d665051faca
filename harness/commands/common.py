"""Options shared by the commands: user config folders (train, eval, validate, sweep), the harness root (train,
eval, sweep, status, report), `--cfg job` (train, validate) and the check of the overrides typed.

    harness train --config-dir ~/my-conf data=my-data       # ~/my-conf/data/my-data.yaml
    harness status quickstart --root ~/experiments          # ~/experiments/studies/quickstart.db
    harness train --cfg job method=qlora                    # print the composed config; train nothing
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_config_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-dir", action="append", default=[], metavar="DIR",
                   help="a folder of your own config groups (DIR/data/NAME.yaml, DIR/model/NAME.yaml, ...) searched "
                        "before conf/, so they add options (one with a shipped option's name replaces it); repeatable, "
                        "and added in front of HARNESS_CONFIG_PATH")


def use_config_dirs(args: argparse.Namespace) -> None:
    """Put --config-dir folders in front of HARNESS_CONFIG_PATH, in this process and so in every process
    it starts (a sweep's workers and trials compose with the same folders)."""
    dirs = [str(Path(d).expanduser().resolve()) for d in getattr(args, "config_dir", []) or []]
    if dirs:
        rest = [d for d in os.environ.get("HARNESS_CONFIG_PATH", "").split(os.pathsep) if d.strip()]
        os.environ["HARNESS_CONFIG_PATH"] = os.pathsep.join(dict.fromkeys([*dirs, *rest]))


def add_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=None, metavar="DIR",
                   help="the folder that holds runs/, studies/ and reports/ (default: $HARNESS_ROOT, else the current "
                        "directory); paths you pass yourself stay relative to the current directory")


def use_root(args: argparse.Namespace) -> None:
    """--root DIR becomes HARNESS_ROOT, in this process and every process it starts (a sweep's trials)."""
    if getattr(args, "root", None):
        os.environ["HARNESS_ROOT"] = str(Path(args.root).expanduser().resolve())


def add_cfg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", choices=("job",), default=None,
                   help="Hydra's convention: print the composed, checked config (YAML) and exit 0 without running")


def check_overrides(overrides: list[str], command: str) -> None:
    """ConfigError for a sweep (method=lora,qlora) or a key set twice among the overrides the user typed."""
    from harness.config.overrides import check_command_line

    check_command_line(list(overrides), command)


def compose_only(args: argparse.Namespace):
    """The run config of a command's overrides: checked, composed with the user's config folders (no preflight)."""
    from harness import config

    use_config_dirs(args)
    check_overrides(args.overrides, getattr(args, "command", None) or "train")
    return config.compose(args.overrides)


def print_cfg(cfg) -> None:
    """`--cfg job`: the resolved config as YAML, alone on stdout."""
    import yaml

    from harness import config

    print(yaml.safe_dump(config.to_dict(cfg), sort_keys=False).rstrip())


def compose_checked(args: argparse.Namespace):
    """The run config of a command's overrides, composed with the user's config folders and put through the
    preflight checks (harness/model/preflight.py); ConfigError lists every problem."""
    from harness import config
    from harness.model.preflight import preflight

    cfg = compose_only(args)
    problems = preflight(cfg)
    if problems:
        raise config.ConfigError(problems)
    return cfg
