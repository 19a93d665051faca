"""`harness validate [overrides]`: compose and check a config without training or importing torch.

Prints every problem with its fix and exits 1, or prints the resolved config and exits 0.
"""

from __future__ import annotations

import argparse

import yaml

from harness import config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. method=qlora train.lr=1e-4")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config.compose(args.overrides)
    except config.ConfigError as exc:
        print(exc)
        return 1
    if not args.quiet:
        print(yaml.safe_dump(config.to_dict(cfg), sort_keys=False).rstrip())
        print(f"config OK: {config.default_run_name(cfg)}")
    return 0
