"""`harness train [overrides]`: train (and evaluate) one run; exit code from its status (harness/run/record.py).
"""

from __future__ import annotations

import argparse
import sys

from harness import config
from harness.config import ConfigError
from harness.pipeline import train_run
from harness.run.record import EXIT_CODES, read_summary


# ------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=smollm2-135m method=qlora train.max_steps=20")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config.compose(args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    status, run_dir = train_run(cfg, args.overrides)
    summary = read_summary(run_dir) or {}
    bits = [f"{k}={summary[k]:.4g}" for k in ("best_val_loss", "final_train_loss", "tokens_per_s") if isinstance(summary.get(k), (int, float))]
    reason = f" ({summary.get('reason')})" if summary.get("reason") else ""
    print(f"{status}: {run_dir}  {' '.join(bits)}{reason}")
    return EXIT_CODES.get(status, 1)
