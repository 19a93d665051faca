"""`harness train [overrides]`: train (and evaluate) one run; exit code from its status (harness/run/record.py).

    harness train model=tiny-llama data=alpaca-tiny run_id=try1     # again with the same run_id: resumes it
    harness train ... run_id=try1 train.lr=1e-3 --force             # resume it under a changed config anyway

Exit code 2, before anything loads, for a config that cannot run (compose and preflight) or a run_id
recorded with another config.
"""

from __future__ import annotations

import argparse
import sys

from harness.commands.common import add_config_dir, compose_checked
from harness.config import ConfigError
from harness.pipeline import train_run
from harness.run.record import EXIT_CODES, RunError, read_summary


# ------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=smollm2-135m method=qlora train.max_steps=20")
    p.add_argument("--force", action="store_true",
                   help="resume run_id= even though its recorded config differs (the changes go into its summary.json)")
    add_config_dir(p)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = compose_checked(args)
        status, run_dir = train_run(cfg, args.overrides, force=args.force)
    except (ConfigError, RunError) as exc:
        print(f"harness train: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the run directory could not be set up (a full disk, a read-only runs root)
        print(f"harness train: cannot write the run directory: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_CODES["failed"]
    summary = read_summary(run_dir) or {}
    bits = [f"{k}={summary[k]:.4g}" for k in ("best_val_loss", "final_train_loss", "tokens_per_s") if isinstance(summary.get(k), (int, float))]
    reason = f" ({summary.get('reason')})" if summary.get("reason") else ""
    print(f"{status}: {run_dir}  {' '.join(bits)}{reason}")
    return EXIT_CODES.get(status, 1)
