"""Options shared by the commands that compose configs (train, eval, validate, sweep).

    harness train --config-dir ~/my-conf data=my-data       # ~/my-conf/data/my-data.yaml
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


def compose_checked(args: argparse.Namespace):
    """The run config of a command's overrides, composed with the user's config folders and put through the
    preflight checks (harness/model/preflight.py); ConfigError lists every problem."""
    from harness import config
    from harness.model.preflight import preflight

    use_config_dirs(args)
    cfg = config.compose(args.overrides)
    problems = preflight(cfg)
    if problems:
        raise config.ConfigError(problems)
    return cfg
