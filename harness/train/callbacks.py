"""What the trainer records while it trains: metrics.jsonl rows, divergence (a non-finite loss, or a collapse:
CollapseWatch), early stopping, pruning.
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


# ------------------------------------------------------------------------------- collapse
COLLAPSE_LOGS = 3  # consecutive logged steps that make a collapse


@dataclass
class CollapseWatch:
    """A run that died without a NaN (LoRA at lr=1e9: gradient norm 0, every prediction uniform). Fed each
    logged step; `see` returns the reason once the run has shown, for COLLAPSE_LOGS logged steps in a row
    (the run's first logged step left out):
      - a gradient norm of exactly 0, or a non-finite one (not under fp16: its loss scaler skips steps with
        inf gradients by design, nonfinite_grads=False); a norm not logged (max_grad_norm=0) tells nothing;
      - a training loss within `tol` nats of log(vocab_size), the loss of a uniform prediction, after it had
        been clearly below it (under 90% of it). A per-token cross-entropy only: vocab_size None turns it off
        (DPO / ORPO)."""

    vocab_size: int | None = None
    nonfinite_grads: bool = True
    logs: int = COLLAPSE_LOGS
    tol: float = 0.01
    seen: int = 0
    best_loss: float = math.inf
    dead: tuple[int, int] = (0, 0)  # (first step, logged steps in a row) of a dead gradient
    flat: tuple[int, int] = (0, 0)  # ... of a loss at log(vocab_size)

    @staticmethod
    def _run(streak: tuple[int, int], hit: bool, step: int) -> tuple[int, int]:
        return (streak[0] if streak[1] else step, streak[1] + 1) if hit else (0, 0)

    def see(self, step: int, loss: float, grad_norm: float | None) -> str:
        self.seen += 1
        first, loss = self.seen == 1, float(loss)
        grad = None if grad_norm is None else float(grad_norm)
        dead = grad is not None and (grad == 0.0 or (self.nonfinite_grads and not math.isfinite(grad)))
        self.dead = self._run(self.dead, dead and not first, step)
        uniform = math.log(self.vocab_size) if self.vocab_size and self.vocab_size > 1 else None
        flat = (uniform is not None and self.best_loss < 0.9 * uniform and abs(loss - uniform) <= self.tol)
        self.flat = self._run(self.flat, flat and not first, step)
        if math.isfinite(loss):
            self.best_loss = min(self.best_loss, loss)
        if self.dead[1] >= self.logs:
            return f"collapse: grad_norm {grad} for {self.dead[1]} logged steps from step {self.dead[0]}"
        if self.flat[1] >= self.logs:
            return (f"collapse: train loss {loss:.4f} = log(vocab size {self.vocab_size}) = {uniform:.4f} (a uniform "
                    f"prediction) for {self.flat[1]} logged steps from step {self.flat[0]}, after it had reached "
                    f"{self.best_loss:.4f}")
        return ""


# ------------------------------------------------------------------------ trainer callbacks
def make_callback(cfg: RunConfig, run_dir: Path, outcome: Outcome, tracker, reporter, watch: CollapseWatch | None = None,
                  paused=None):
    """A transformers TrainerCallback that records metrics.jsonl, stops on NaN/inf loss or a collapse (`watch`;
    diverged), reports validation loss to the pruner, and applies early stopping. `paused`: an object whose
    `seconds` counts time spent outside training (benchmarks during training, harness/train/benchmarks.py
    BenchClock), left out of each row's tokens_per_s."""
    from transformers import TrainerCallback

    metrics_path = run_dir / "metrics.jsonl"
    watch = watch if watch is not None else CollapseWatch()

    class RecordCallback(TrainerCallback):
        def __init__(self):
            self.t0 = time.time()
            self.last = (time.time(), 0)
            self.paused = 0.0  # paused.seconds at the last logged row

        def _paused_since_last(self) -> float:
            now = paused.seconds if paused is not None else 0.0
            gap, self.paused = now - self.paused, now
            return gap

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "loss" not in logs:
                return
            now, tokens = time.time(), state.num_input_tokens_seen
            dt = max(now - self.last[0] - self._paused_since_last(), 1e-9)
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
            collapse = watch.see(state.global_step, logs["loss"], logs.get("grad_norm"))
            if not math.isfinite(float(logs["loss"])):
                outcome.status = "diverged"
                outcome.reason = f"train loss {logs['loss']} at step {state.global_step}"
                control.should_training_stop = True
            elif collapse:
                outcome.status, outcome.reason = "diverged", collapse
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


def skip_final_checkpoint():
    """A TrainerCallback (last in the list) that cancels the Trainer's checkpoint at the last step: fit() saves the
    trained weights right after training (harness/train/fit.py, step 7) and then deletes every checkpoint, so that
    one was written only to be removed (model, optimizer state: 1.6 GB and 2-3 s for a 135M full fine-tune on the
    2-core machine; three times the weights for any full fine-tune). Callbacks before it still see that the step
    was a checkpoint (benchmarks `at_checkpoints`). A process killed between the last step and that save resumes
    from the checkpoint before it."""
    from transformers import TrainerCallback

    class SkipFinalCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.max_steps and state.global_step >= state.max_steps:
                control.should_save = False

    return SkipFinalCheckpoint()
