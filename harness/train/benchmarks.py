"""Benchmarks during training (eval.during_training): when they run, and what the training must not notice.

    harness train ... eval.during_training.tasks=[arc_easy] eval.during_training.every_steps=50   # docs/evaluation.md

The benchmark itself is the eval stage's (harness/eval/during.py make_benchmark); harness/pipeline.py hands it to
fit() as a plain function (model, tokenizer) -> {task: {metric: value}}, so this stage never imports the eval
stage. BenchmarkCallback runs it at the end of an optimizer step that is a multiple of every_steps, and/or one the
Trainer is about to checkpoint (at_checkpoints), before that checkpoint is written:

  - one row per run in metrics.jsonl: {"step", "epoch", "bench/<task>.<metric>": value, ..., "bench_time_s"}
    (the same keys go to the trackers). A resume cuts metrics.jsonl back to the checkpoint's step
    (harness/train/fit.py resume_point): a benchmark row of that step stays (the step is not trained again),
    later ones go and are measured again, so no step is recorded twice;
  - it runs the model's own attention kernel (a bf16 run on a CPU trains with the block-causal one:
    harness/train/attention.py own_kernel), as the evaluation after training does;
  - the model goes back to its mode and the Python, NumPy, torch (and CUDA) RNG state to what it was (lm-eval
    seeds them all): the training losses are the same with and without it (tests/test_during_training.py);
  - its wall time is kept in BenchClock, which the trainer's throughput figures leave out (metrics.jsonl
    tokens_per_s, summary.json tokens_per_s and train_time_s; summary.json benchmark_time_s holds it);
  - over several devices (train.devices > 1) rank 0 alone evaluates; the other ranks wait at a barrier after
    it, so nobody sits in a gradient all-reduce meanwhile (the barrier has the process group's 30-minute
    timeout: keep a benchmark shorter than that);
  - the progress display's train stage says it is evaluating, and the ETA's training rate leaves the time out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from harness import atomic
from harness.config import RunConfig
from harness.run import progress
from harness.run.progress import fmt_number
from harness.train import distributed

PREFIX = "bench/"  # metrics.jsonl keys of a benchmark row: bench/<task>.<metric>


@dataclass
class BenchClock:
    """Seconds spent benchmarking since the run started (this process): the training figures subtract them."""

    seconds: float = 0.0
    runs: int = 0


def due(step: int, every_steps: int, at_checkpoints: bool, checkpointing: bool) -> bool:
    """Whether the benchmark runs at the end of optimizer step `step` (checkpointing: the Trainer saves now)."""
    return step > 0 and ((every_steps > 0 and step % every_steps == 0) or (at_checkpoints and checkpointing))


def bench_row(step: int, epoch: float, scores: dict[str, dict[str, float]], seconds: float) -> dict:
    """{task: {metric: value}} -> one flat metrics.jsonl row; item counts as bench/<task>.n."""
    row: dict = {"step": step, "epoch": round(epoch or 0.0, 4)}
    for task in sorted(scores):
        for metric, value in sorted(scores[task].items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[f"{PREFIX}{task}.{metric}"] = value
    row["bench_time_s"] = seconds
    return row


def rng_state() -> dict:
    import random

    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def run_isolated(benchmark, model, tokenizer) -> dict:
    """benchmark(model, tokenizer) with no trace on the training: eval mode and no gradients while it runs, then
    the model's mode and every RNG state as they were, whatever happened."""
    import torch

    from harness.train.attention import own_kernel

    was_training, state = model.training, rng_state()
    model.eval()
    try:
        with torch.no_grad(), own_kernel(model):  # the evaluation's kernel, not training's block-causal one
            return benchmark(model, tokenizer)
    finally:
        model.train(was_training)
        set_rng_state(state)


def make_benchmark_callback(cfg: RunConfig, run_dir: Path, benchmark, tokenizer, tracker, clock: BenchClock):
    """A TrainerCallback that runs `benchmark` on the schedule of cfg.eval.during_training (module docstring)."""
    from transformers import TrainerCallback

    dt = cfg.eval.during_training
    metrics_path = run_dir / "metrics.jsonl"

    class BenchmarkCallback(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            # DefaultFlowCallback (the Trainer's first callback) has decided by now whether this step checkpoints
            if not due(state.global_step, dt.every_steps, dt.at_checkpoints, bool(control.should_save)):
                return
            t0 = time.time()
            if state.is_world_process_zero and benchmark is not None:
                shown = _Showing(state.global_step, dt.tasks, dt.limit)
                try:
                    scores = run_isolated(benchmark, model, tokenizer)
                finally:
                    seconds = time.time() - t0
                    shown.done(seconds)
                row = bench_row(state.global_step, state.epoch, scores, seconds)
                atomic.append_jsonl(metrics_path, row)
                tracker.log({k: v for k, v in row.items() if k != "step"}, step=state.global_step)
                shown.note(row)
            distributed.barrier()  # the other ranks wait here while rank 0 evaluates
            clock.seconds += time.time() - t0
            clock.runs += 1

    return BenchmarkCallback()


class _Showing:
    """The train stage of the progress display while the benchmark runs: its detail says so, lm-eval's bars
    (routed to the running stage) are undone afterwards, and the stage's rate start moves by the time spent."""

    def __init__(self, step: int, tasks: list[str], limit: int):
        self.p = progress.current()
        st = self.p.current
        self.saved = None if st is None else (st.detail, st.total, st.done, st.unit, st.first)
        what = f"{', '.join(tasks)} ({limit or 'all'} items{' each' if len(tasks) > 1 else ''})"
        if st is not None:
            with self.p.lock:
                st.detail = f"evaluating {what} at step {step}"
            self.p.update(log=False)
        self.p.note(f"train step {step}: evaluating {what}")

    def done(self, seconds: float) -> None:
        st = self.p.current
        if st is None or self.saved is None:
            return
        with self.p.lock:
            detail, st.total, done, st.unit, first = self.saved
            st.detail = "" if detail.startswith("evaluating ") else detail
            st.first = None if first is None else (first[0] + seconds, first[1])
        self.p.update(done=done, log=False)

    def note(self, row: dict) -> None:
        scores = " ".join(f"{k[len(PREFIX):]} {fmt_number(v)}" for k, v in row.items()
                          if k.startswith(PREFIX) and not k.endswith(("_stderr", ".n")))
        self.p.note(f"train step {row['step']}: {scores} ({row['bench_time_s']:.1f} s)")
