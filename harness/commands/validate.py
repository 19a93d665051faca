"""`harness validate [overrides]`: compose and check a config without training or importing torch.

    harness validate model.source=hub model.path=~/models/mine data.path=~/data/mine.jsonl --config-dir ~/my-conf

Composes (harness.config), then runs the preflight checks (harness/model/preflight.py: data files exist,
CUDA is there for train.device=cuda, a model given by path fits train.max_length and has the LoRA
targets named). Prints every problem with its fix and exits 2 (as `harness train` does for a config that cannot run), or prints the resolved config (and which
of your options replace shipped ones) and exits 0. Torch is imported only to list the layers of a model
given by path when LoRA targets are named for it.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from harness import config
from harness.commands.common import add_config_dir, compose_checked
from harness.config.search import shadowed


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. method=qlora train.lr=1e-4")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    add_config_dir(p)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = compose_checked(args)
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not args.quiet:
        print(yaml.safe_dump(config.to_dict(cfg), sort_keys=False).rstrip())
        for note in shadowed():
            print(f"note: {note}")
        print(f"config OK: {config.default_run_name(cfg)}")
    return 0
