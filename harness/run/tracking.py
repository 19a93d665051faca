"""Experiment tracker at the edge: Weights & Biases, offline by default, or nothing.

    tracker = tracking.start(cfg, run_dir)    # tracker=none -> a no-op tracker
    tracker.log({"train_loss": 1.2}, step=10); tracker.finish(summary)

Offline runs keep their files under <run_dir>/wandb (sync later with `wandb sync`); a study's runs
share the W&B group <study>. The run directory stays the source of truth: a tracker failure is
reported and the run goes on.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.config import RunConfig, default_run_name, to_dict


class NullTracker:
    url = None

    def log(self, metrics: dict, step: int | None = None) -> None:
        pass

    def finish(self, summary: dict | None = None) -> None:
        pass


class WandbTracker:
    def __init__(self, cfg: RunConfig, run_dir: Path):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = wandb
        self.run = wandb.init(
            project=cfg.tracker.project,
            entity=cfg.tracker.entity or None,
            mode=cfg.tracker.mode,
            dir=str(run_dir),
            name=f"{default_run_name(cfg)}/{run_dir.name}",
            id=f"{run_dir.parent.name}-{run_dir.name}"[-120:].replace("/", "-"),
            group=cfg.study or None,
            tags=list(cfg.tracker.tags) + ([cfg.study] if cfg.study else []),
            config=to_dict(cfg),
            resume="allow",
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )
        self.url = getattr(self.run, "url", None)

    def log(self, metrics: dict, step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def finish(self, summary: dict | None = None) -> None:
        for k, v in (summary or {}).items():
            if isinstance(v, (int, float, str, bool)):
                self.run.summary[k] = v
        self.run.finish(exit_code=0 if (summary or {}).get("status") in (None, "completed") else 1)


def start(cfg: RunConfig, run_dir: Path):
    if cfg.tracker.backend == "none":
        return NullTracker()
    try:
        return WandbTracker(cfg, run_dir)
    except Exception as exc:  # the run directory is the record; tracking is a copy
        print(f"[harness] warning: W&B tracker could not start ({type(exc).__name__}: {exc}); continuing without it")
        return NullTracker()
