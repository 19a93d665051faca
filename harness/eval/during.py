"""The benchmark that runs while a model trains (eval.during_training): a few of our offline lm-eval tasks on
the first `limit` items, scored on the model in memory at a training step.

    harness train model=smollm2-135m method=lora data=alpaca-demo train.max_steps=200 \
        eval.during_training.tasks=[arc_easy] eval.during_training.every_steps=50 eval.during_training.limit=50

make_benchmark(cfg) is what harness/pipeline.py hands to the trainer (harness/train/benchmarks.py decides when
it runs, keeps the model's mode and the RNG state, and writes metrics.jsonl): a function (model, tokenizer) ->
{task: {metric: value}}. It reuses run_task of harness/eval/lm_eval.py, with no files written (per-step samples
would pile up; the final evaluation writes the full ones). Nothing here touches the run record.
"""

from __future__ import annotations

from typing import Callable

from harness.config import LmEvalConfig, RunConfig

Benchmark = Callable[[object, object], dict[str, dict[str, float]]]


def during_config(cfg: RunConfig) -> LmEvalConfig:
    """eval.during_training as the lm-eval suite config run_task takes."""
    dt = cfg.eval.during_training
    return LmEvalConfig(tasks=list(dt.tasks), limit=dt.limit, num_fewshot=dt.num_fewshot, batch_size=dt.batch_size,
                        seed=dt.seed)


def make_benchmark(cfg: RunConfig) -> Benchmark | None:
    """The during-training benchmark of cfg, or None when eval.during_training has no tasks. lm-eval's model
    wrapper is built on the first call and kept: the trainer's model object stays the same all run long."""
    lm_cfg = during_config(cfg)
    if not lm_cfg.tasks:
        return None
    from harness.eval.lm_eval import build_lm, quietly, run_task, short_name

    held: dict = {}

    def benchmark(model, tokenizer) -> dict[str, dict[str, float]]:
        if held.get("model") is not model:
            held["model"], held["lm"] = model, build_lm(model, tokenizer, lm_cfg.batch_size, model_cfg=cfg.model)
        out = {}
        with quietly():
            for task in lm_cfg.tasks:
                entry = run_task(held["lm"], short_name(task), lm_cfg, None)
                out[short_name(task)] = {**entry["metrics"], "n": entry["n"]}
        return out

    return benchmark
