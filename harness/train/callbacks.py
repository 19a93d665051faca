"""What the trainer records while it trains: metrics.jsonl rows, divergence, early stopping, pruning.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from harness import atomic
from harness.config import RunConfig
from harness.run.environment import rss_mb

# what TRL's preference trainers log beside the loss (DPO, ORPO): kept in metrics.jsonl as rewards_accuracies, ...
PREFERENCE_LOGS = ("rewards/", "logps/", "nll_loss", "log_odds_ratio", "log_odds_chosen")


def preference_fields(logs: dict, prefix: str = "") -> dict:
    """TRL's preference metrics from a log dict, '/' -> '_' (rewards/accuracies -> rewards_accuracies)."""
    return {k[len(prefix):].replace("/", "_"): v for k, v in logs.items()
            if k.startswith(prefix) and k[len(prefix):].startswith(PREFERENCE_LOGS)}


@dataclass
class Outcome:
    status: str = "running"
    reason: str = ""
    pruned_at_step: int | None = None
    best_val_loss: float | None = None
    final_val_loss: float | None = None
    final_train_loss: float | None = None
    evals_without_improvement: int = 0
    model: object = None  # the trained model, kept for evaluation and for callers that inspect it (tests, benchmarks)
    tokenizer: object = None


# ------------------------------------------------------------------------ trainer callbacks
def make_callback(cfg: RunConfig, run_dir: Path, outcome: Outcome, tracker, reporter):
    """A transformers TrainerCallback that records metrics.jsonl, stops on NaN/inf loss (diverged),
    reports validation loss to the pruner, and applies early stopping."""
    from transformers import TrainerCallback

    metrics_path = run_dir / "metrics.jsonl"

    class RecordCallback(TrainerCallback):
        def __init__(self):
            self.t0 = time.time()
            self.last = (time.time(), 0)

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "loss" not in logs:
                return
            now, tokens = time.time(), state.num_input_tokens_seen
            dt = max(now - self.last[0], 1e-9)
            row = {
                "step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "train_loss": logs["loss"],
                "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                "tokens_seen": tokens, "tokens_per_s": (tokens - self.last[1]) / dt,
                "mem_mb": rss_mb(), "time_s": now - self.t0, **preference_fields(logs),
            }
            self.last = (now, tokens)
            if state.is_world_process_zero:  # one record per run, also over several devices (rank 0 writes it)
                atomic.append_jsonl(metrics_path, row)
                tracker.log({k: v for k, v in row.items() if v is not None}, step=state.global_step)
            outcome.final_train_loss = logs["loss"]
            if not math.isfinite(float(logs["loss"])):
                outcome.status = "diverged"
                outcome.reason = f"train loss {logs['loss']} at step {state.global_step}"
                control.should_training_stop = True

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            loss = (metrics or {}).get("eval_loss")
            if loss is None:
                return
            row = {"step": state.global_step, "val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
                   **{f"val_{k}": v for k, v in preference_fields(metrics, "eval_").items()}}
            if cfg.train.objective != "sft":
                row.pop("val_ppl")  # a DPO / ORPO loss is not a per-token cross-entropy
            if state.is_world_process_zero:
                atomic.append_jsonl(metrics_path, row)
                tracker.log(row, step=state.global_step)
            outcome.final_val_loss = loss
            if not math.isfinite(loss):
                outcome.status, outcome.reason = "diverged", f"validation loss {loss} at step {state.global_step}"
                control.should_training_stop = True
                return
            t = cfg.train
            if outcome.best_val_loss is None or loss < outcome.best_val_loss - t.early_stopping_threshold:
                outcome.best_val_loss, outcome.evals_without_improvement = loss, 0
            else:
                outcome.evals_without_improvement += 1
                if t.early_stopping_patience and outcome.evals_without_improvement >= t.early_stopping_patience:
                    outcome.reason = f"early stopping at step {state.global_step}: no improvement in {t.early_stopping_patience} evaluations"
                    control.should_training_stop = True
            if state.global_step < (state.max_steps or 0) and reporter.report(state.global_step, loss):
                outcome.status, outcome.pruned_at_step = "pruned", state.global_step
                outcome.reason = f"pruned at step {state.global_step} (val_loss {loss:.4f})"
                control.should_training_stop = True

    return RecordCallback()
