"""`harness train [overrides]`: train (and evaluate) one run; exit code from its status (harness/run/record.py).

    harness train model=tiny-llama data=alpaca-tiny run_id=try1     # again with the same run_id: resumes it
    harness train ... run_id=try1 train.lr=1e-3 --force             # resume it under a changed config anyway
    harness train --cfg job method=qlora                            # print the composed config, train nothing
    harness train --root ~/experiments model=tiny-llama             # -> ~/experiments/runs/<name>/<run_id>/
    harness train model=tiny-llama train.devices=2                  # 2 processes under torchrun (harness/launch.py)

Progress (harness/run/display.py): a live display on a terminal, one line per event otherwise (CI, logs, nohup):
stages (load, train, each eval suite), step/total, loss, tokens/s, the ETA of the whole run; HARNESS_PROGRESS=1
forces the live display, plain the lines, 0 turns it off.

Exit code 2, before anything loads, for a config that cannot run (compose and preflight), a run_id
recorded with another config, a sweep on the command line (method=lora,qlora: the message shows the sweep
spec to write) or a key set twice.
"""

from __future__ import annotations

import argparse
import sys

from harness.commands.common import add_cfg, add_config_dir, add_root, compose_checked, compose_only, print_cfg, use_root
from harness.config import ConfigError
from harness.launch import follow, is_follower, launched, train
from harness.run.display import open_display
from harness.run.record import EXIT_CODES, RunError, read_summary


# ------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=smollm2-135m method=qlora train.max_steps=20")
    p.add_argument("--force", action="store_true",
                   help="resume run_id= even though its recorded config differs (the changes go into its summary.json)")
    add_config_dir(p)
    add_root(p)
    add_cfg(p)


def run(args: argparse.Namespace) -> int:
    use_root(args)
    try:
        if args.cfg:
            print_cfg(compose_only(args))
            return 0
        cfg = compose_checked(args)
        if is_follower():  # ranks 1.. of a run over several devices (train.devices): train, record and say nothing
            return follow(cfg)
        with open_display("train"):
            status, run_dir = train(cfg, args.overrides, force=args.force)
    except (ConfigError, RunError) as exc:
        print(f"harness train: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the run directory could not be set up (a full disk, a read-only runs root)
        print(f"harness train: cannot write the run directory: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_CODES["failed"]
    if launched():  # rank 0 under the launcher of a run over several devices: the launcher reads the status from
        # the record and prints the result. Training that ended together exits 0 (torchrun would report any other
        # code as a crash); a failure exits non-zero, so that torchrun stops the ranks still waiting for this one.
        return 0 if status in ("completed", "pruned", "diverged") else EXIT_CODES.get(status, 1)
    summary = read_summary(run_dir) or {}
    bits = [f"{k}={summary[k]:.4g}" for k in ("best_val_loss", "final_train_loss", "tokens_per_s") if isinstance(summary.get(k), (int, float))]
    reason = f" ({summary.get('reason')})" if summary.get("reason") else ""
    print(f"{status}: {run_dir}  {' '.join(bits)}{reason}")
    return EXIT_CODES.get(status, 1)
