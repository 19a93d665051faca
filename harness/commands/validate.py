"""`harness validate [overrides]`: compose and check a config without training or importing torch.

    harness validate model.source=hub model.path=~/models/mine data.path=~/data/mine.jsonl --config-dir ~/my-conf
    harness validate --cfg job method=qlora       # only the composed config, as YAML (no preflight, no notes)

Composes (harness.config), then runs the preflight checks (harness/model/preflight.py: data files exist,
CUDA is there for train.device=cuda, a model given by path fits train.max_length and has the LoRA
targets named). Prints every problem with its fix and exits 2 (as `harness train` does for a config that cannot run), or prints the resolved config (and which
of your options replace shipped ones) and exits 0. Torch is imported only to list the layers of a model
given by path when LoRA targets are named for it.
"""

from __future__ import annotations

import argparse
import sys

from harness import config
from harness.commands.common import add_cfg, add_config_dir, compose_checked, compose_only, print_cfg
from harness.config.search import shadowed


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. method=qlora train.lr=1e-4")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    add_config_dir(p)
    add_cfg(p)


def run(args: argparse.Namespace) -> int:
    try:
        if args.cfg:
            print_cfg(compose_only(args))
            return 0
        cfg = compose_checked(args)
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not args.quiet:
        print_cfg(cfg)
        for note in shadowed():
            print(f"note: {note}")
        print(f"config OK: {config.default_run_name(cfg)}")
    return 0
