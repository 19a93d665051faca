"""What a person watching `harness train` sees of the Trainer: the train stage of the run's display
(harness/run/progress.py: step/total, loss, tokens/s, the ETA of the whole run), instead of transformers' prints.

    attach_progress(trainer)     # harness/train/fit.py, right after the trainer is built

transformers gives every Trainer a PrinterCallback (it prints each log dict with its numbers formatted as
strings: {'train_runtime': '2.626', 'train_loss': '5.961'}) or, with tqdm on, a ProgressCallback (tqdm bars
and the same dicts). Both are removed here; ProgressReporter feeds the display, which prints lines with
numbers as numbers ("[harness] train step 20/100 loss 1.234 tokens/s 2010 eta 3m12s") or draws it live.
"""

from __future__ import annotations

import time

from harness.run import progress
from harness.run.progress import fmt_number


def attach_progress(trainer, paused=None) -> None:
    """Swap transformers' printing callbacks for ProgressReporter on a built Trainer. `paused.seconds`: time spent
    outside training (benchmarks during training), left out of tokens/s."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(make_progress_reporter(paused))


def make_progress_reporter(paused=None):
    """A TrainerCallback that reports the training loop to the process's display."""
    from transformers import TrainerCallback

    class ProgressReporter(TrainerCallback):
        def __init__(self):
            self.start: tuple[float, int] | None = None  # (time, tokens seen) at the first step of this process

        def tokens_per_s(self, state) -> float | None:
            if self.start is None:
                return None
            dt = time.time() - self.start[0] - (paused.seconds if paused is not None else 0.0)
            return (state.num_input_tokens_seen - self.start[1]) / dt if dt > 0 else None

        def on_train_begin(self, args, state, control, **kw):
            progress.current().begin("train", total=state.max_steps or None, unit="step")

        def on_step_begin(self, args, state, control, **kw):
            if self.start is None:  # after a resume the state is restored by now: count this process's tokens only
                self.start = (time.time(), state.num_input_tokens_seen)

        def on_step_end(self, args, state, control, **kw):
            progress.current().update(done=state.global_step, log=False, tokens_per_s=self.tokens_per_s(state))

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "loss" in logs:  # a logging step (train.log_every)
                progress.current().update(done=state.global_step, loss=float(logs["loss"]),
                                          tokens_per_s=self.tokens_per_s(state), log=True)
            elif "train_loss" in logs:  # the end-of-training summary: its mean loss goes on the stage's last line
                progress.current().update(loss_mean=float(logs["train_loss"]), log=False)

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            loss = (metrics or {}).get("eval_loss")
            if loss is None:
                return
            p = progress.current()
            p.update(val_loss=float(loss), log=False)
            p.note(f"train eval step {state.global_step} val_loss {fmt_number(float(loss))}")

        def on_train_end(self, args, state, control, **kw):
            progress.current().end("train", tokens_per_s=self.tokens_per_s(state))

    return ProgressReporter()
