"""Cross-field rules of a RunConfig: validate(cfg) returns every problem at once, each naming the key,
the value, why it is wrong and what would be right.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from harness import paths
from harness.config.checks import did_you_mean
from harness.config.schema import ALLOWED, EVAL_MODES, PAIR_FORMATS, RunConfig


# ------------------------------------------------------------------------- cross-field rules
def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def non_finite(node: Any, prefix: str = "") -> list[str]:
    """Every float key of the config tree that is nan or +-inf (`train.lr=nan` composes: YAML reads it as a float)."""
    out: list[str] = []
    for f in dataclasses.fields(node):
        v, key = getattr(node, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v):
            out += non_finite(v, key + ".")
        elif isinstance(v, list):
            for i, item in enumerate(v):
                if dataclasses.is_dataclass(item):
                    out += non_finite(item, f"{key}[{i}].")
        elif isinstance(v, float) and not math.isfinite(v):
            out.append(f"{key}={v}: not a finite number; give a number (nan and inf are never valid settings).")
    return out


def target_modules(cfg: RunConfig) -> list[str]:
    """The LoRA targets the method asks for, with the model's default filled in."""
    return list(cfg.method.target_modules) if cfg.method.target_modules else list(cfg.model.lora_target_modules)


def validate(cfg: RunConfig) -> list[str]:
    """All cross-field errors at once; each names the key, the value and what would be right."""
    errs: list[str] = non_finite(cfg)
    for dotted, allowed in ALLOWED.items():
        value = _get(cfg, dotted)
        if isinstance(value, dict):  # a mapping whose keys are the names (tracker.backends)
            errs += [f"{dotted}.{k}: {k!r} is not one of: {', '.join(allowed)}.{did_you_mean(str(k), allowed)}"
                     for k in value if k not in allowed]
        elif value not in allowed:
            errs.append(f"{dotted}={value!r} is not one of: {', '.join(allowed)}.{did_you_mean(str(value), allowed)}")

    m, me, d, t = cfg.model, cfg.method, cfg.data, cfg.train
    if me.quant != "none" and me.peft == "none":
        errs.append(
            f"method={me.name}: full fine-tuning cannot train quantized weights (method.quant={me.quant}). "
            "Use method.quant=none, or a LoRA method (lora, qlora, lora-8bit)."
        )
    if me.quant != "none" and not m.quantizable:
        errs.append(
            f"method={me.name} needs a quantizable model; model={m.name} is not (model.quantizable=false). "
            "Use method=lora or method=full."
        )
    if me.quant in ("fp4", "int8") and me.double_quant:
        if me.quant == "int8":
            errs.append("method.double_quant=true applies to 4-bit (nf4/fp4) only; set it false for int8.")
    if me.peft == "lora":
        if me.r <= 0:
            errs.append(f"method.r={me.r}: LoRA rank must be a positive integer (e.g. 8, 16, 64).")
        if me.alpha <= 0:
            errs.append(f"method.alpha={me.alpha}: must be > 0 (commonly 2 x r).")
        if not 0 <= me.dropout < 1:
            errs.append(f"method.dropout={me.dropout}: must be in [0, 1).")
        targets = target_modules(cfg)
        if not targets:
            errs.append("method.target_modules is empty and the model has no lora_target_modules; name some, or use [all-linear].")
        if m.linear_modules and targets != ["all-linear"]:
            unknown = [x for x in targets if x not in m.linear_modules]
            for x in unknown:
                errs.append(
                    f"method.target_modules: {x!r} is not a Linear layer of model={m.name}."
                    f"{did_you_mean(x, m.linear_modules)} Choose from: {', '.join(m.linear_modules)}, or all-linear."
                )
        if "all-linear" in targets and len(targets) > 1:
            errs.append("method.target_modules: all-linear cannot be combined with other names.")
    if me.use_dora and me.peft != "lora":
        errs.append("method.use_dora=true needs method.peft=lora.")
    if m.source == "hub" and not m.path:
        errs.append(f"model={m.name}: model.path is empty; give a Hub id or a local directory.")
    if m.source == "gguf-package" and not m.package:
        errs.append(f"model={m.name}: model.package is empty; name the Python module that ships the GGUF.")
    if t.lr <= 0:
        errs.append(f"train.lr={t.lr}: the learning rate must be > 0 (e.g. 2e-4 for LoRA, 2e-5 for full).")
    if t.batch_size < 1:
        errs.append(f"train.batch_size={t.batch_size}: must be >= 1.")
    if t.grad_accum < 1:
        errs.append(f"train.grad_accum={t.grad_accum}: must be >= 1.")
    if t.max_steps <= 0 and t.epochs <= 0:
        errs.append(f"train.epochs={t.epochs} with train.max_steps={t.max_steps}: set epochs > 0 or max_steps > 0.")
    if t.max_steps == 0:
        errs.append("train.max_steps=0: use -1 to train by epochs, or a positive number of steps.")
    if t.max_length < 8:
        errs.append(f"train.max_length={t.max_length}: too short to hold a prompt and an answer; use >= 8.")
    if t.max_length > m.context_length:
        errs.append(
            f"train.max_length={t.max_length} is beyond model={m.name}'s context length ({m.context_length}); "
            f"use train.max_length<={m.context_length}."
        )
    if not 0 <= t.warmup_ratio < 1:
        errs.append(f"train.warmup_ratio={t.warmup_ratio}: must be in [0, 1).")
    if t.weight_decay < 0:
        errs.append(f"train.weight_decay={t.weight_decay}: must be >= 0.")
    if not 0 <= t.label_smoothing < 1:
        errs.append(f"train.label_smoothing={t.label_smoothing}: must be in [0, 1).")
    if t.precision == "fp16" and t.device != "cuda":
        errs.append("train.precision=fp16 needs train.device=cuda (fp16 autocast is GPU-only); use bf16 or fp32.")
    if t.eval_every < 0 or t.save_every < 0 or t.log_every < 1:
        errs.append("train.eval_every and train.save_every must be >= 0 and train.log_every >= 1.")
    if d.val_size < 0:
        errs.append(f"data.val_size={d.val_size}: must be >= 0 (a share below 1, or a row count).")
    if not 0 <= d.max_bad_share <= 1:
        errs.append(f"data.max_bad_share={d.max_bad_share}: must be in [0, 1].")
    if not d.path:
        errs.append(f"data={d.name}: data.path is empty; give a file, a dataset directory or a Hub id.")
    # the group names make the default run name (<model>-<method>-<data>), a folder under output_dir
    named = [(f"{g}.name", getattr(cfg, g).name) for g in ("model", "method", "data", "eval", "tracker")]
    for key, value in [("name", cfg.name), ("run_id", cfg.run_id), ("study", cfg.study), *named]:
        if value:
            try:
                paths.check_name(value, key)
            except ValueError as exc:
                errs.append(str(exc))
    tr = cfg.tracker
    if tr.backends.get("wandb") and tr.mode == "online" and not tr.project:
        errs.append("tracker.project is empty; name a W&B project or use tracker=none.")
    errs += [f"tracker.backends.{k}={v!r}: must be true or false." for k, v in tr.backends.items() if not isinstance(v, bool)]
    for i, suite in enumerate(cfg.eval.perplexity):
        if suite.stride <= 0 or suite.stride > suite.max_length:
            errs.append(f"eval.perplexity[{i}].stride={suite.stride}: must be in 1..max_length ({suite.max_length}).")
    ev = cfg.eval
    if ev.mode not in EVAL_MODES:
        errs.append(f"eval.mode={ev.mode!r}: must be one of {', '.join(EVAL_MODES)} (exact: fp32, lm-eval's numbers; "
                    "fast: bf16 where the device runs it natively, its measured deviation recorded).")
    if ev.contamination_n < 4:
        errs.append(f"eval.contamination_n={ev.contamination_n}: n-grams that short match ordinary phrases; "
                    "use >= 4 (13 is the default, as GPT-3's decontamination).")
    if not 0 <= ev.contamination_warn <= 1:
        errs.append(f"eval.contamination_warn={ev.contamination_warn}: a share, must be in [0, 1] (e.g. 0.01).")
    errs += preference_rules(cfg)
    errs += devices_rules(cfg)
    errs += during_training_rules(cfg)
    # the metric registry is read by name (harness.eval.metrics imports no ML library and nothing of harness.config)
    from harness.eval.metrics import METRICS

    for i, suite in enumerate(cfg.eval.generation):
        if suite.max_new_tokens < 1:
            errs.append(f"eval.generation[{i}].max_new_tokens={suite.max_new_tokens}: must be >= 1.")
        for metric in suite.metrics:
            if metric not in METRICS:
                errs.append(
                    f"eval.generation[{i}].metrics: unknown metric {metric!r}.{did_you_mean(metric, METRICS)}"
                    f" Known: {', '.join(sorted(METRICS))}"
                )
    return errs


PREFERENCE_OBJECTIVES = ("dpo", "orpo")


def preference_rules(cfg: RunConfig) -> list[str]:
    """train.objective=dpo|orpo needs data.format=preference; the preference keys apply to those objectives only."""
    errs: list[str] = []
    t, d = cfg.train, cfg.data
    pref = t.objective in PREFERENCE_OBJECTIVES
    if pref and d.format not in PAIR_FORMATS:
        errs.append(f"train.objective={t.objective} trains on preference pairs, but data={d.name} has "
                    f"data.format={d.format}. Use a preference data config (e.g. data=dpo-en-demo), or train.objective=sft.")
    # the other way round is allowed: train.objective=sft on preference data learns the chosen answers
    if t.beta <= 0:
        errs.append(f"train.beta={t.beta}: must be > 0 (DPO's beta, commonly 0.05-0.5; ORPO's lambda, commonly 0.1).")
    if t.loss_type != "sigmoid" and t.objective != "dpo":
        errs.append(f"train.loss_type={t.loss_type} is a DPO loss; it applies to train.objective=dpo only "
                    f"(here {t.objective}). Remove it, or set train.objective=dpo.")
    if pref and t.packing:
        errs.append(f"train.packing=true: preference pairs are not packed (train.objective={t.objective}); set train.packing=false.")
    if pref and t.label_smoothing:
        errs.append(f"train.label_smoothing={t.label_smoothing} smooths the SFT cross-entropy only; "
                    f"train.objective={t.objective} does not use it. Set train.label_smoothing=0.")
    for i, suite in enumerate(cfg.eval.preference):
        if suite.batch_size < 1 or suite.limit < 0:
            errs.append(f"eval.preference[{i}]: batch_size={suite.batch_size} must be >= 1 and limit={suite.limit} >= 0.")
    return errs


def devices_rules(cfg: RunConfig) -> list[str]:
    """train.devices: processes that train one run together (docs/multi-device.md). What does not work over
    several processes is refused here, with the reason, before anything starts. The machine's side (GPUs,
    cores) is harness/model/preflight.py's."""
    t = cfg.train
    errs: list[str] = []
    if t.devices < 1:
        errs.append(f"train.devices={t.devices}: must be >= 1 (1 = one process; N = N GPUs, or N CPU processes).")
    if t.strategy == "fsdp":
        errs.append("train.strategy=fsdp is refused: on CPUs accelerate's FSDP does not run at all (it needs a GPU-class "
                    "device: CUDA, XPU, ...), and on GPUs it is not implemented here (FSDP shards the weights over the "
                    "ranks, so saving them and the evaluation after training on rank 0 alone would first have to gather "
                    "them, and every rank would have to run the same number of forward passes in the sharded validation "
                    "loss; none of that is written or tested). Use train.strategy=ddp (each device holds a full replica: "
                    "method=lora or qlora keep that small), or one device.")
    return errs


# the offline lm-eval tasks shipped in harness/eval/tasks/ (harness_<name>.yaml); read from the folder, as the config
# layer does not import the eval stage (harness/eval/lm_eval.py SHORT_NAMES names the same files)
TASK_DIR = Path(__file__).resolve().parents[1] / "eval" / "tasks"


def offline_tasks() -> list[str]:
    return sorted(p.stem.removeprefix("harness_") for p in TASK_DIR.glob("harness_*.yaml"))


def during_training_rules(cfg: RunConfig) -> list[str]:
    """eval.during_training (harness/train/benchmarks.py): a schedule, offline tasks, sane sizes. Off (tasks: [])
    needs no schedule; a schedule without tasks is refused rather than silently doing nothing."""
    dt = cfg.eval.during_training
    key = "eval.during_training"
    errs: list[str] = []
    if dt.every_steps < 0:
        errs.append(f"{key}.every_steps={dt.every_steps}: must be >= 0 (N = every N optimizer steps, 0 = not by "
                    f"step count; {key}.at_checkpoints=true runs at each checkpoint instead).")
    if dt.limit < 0:
        errs.append(f"{key}.limit={dt.limit}: must be >= 0 (items per task; e.g. 50; 0 = the whole split).")
    if dt.batch_size < 1:
        errs.append(f"{key}.batch_size={dt.batch_size}: must be >= 1.")
    if dt.num_fewshot < 0:
        errs.append(f"{key}.num_fewshot={dt.num_fewshot}: must be >= 0.")
    known = offline_tasks()
    for name in dt.tasks:
        if name.removeprefix("harness_") not in known:
            errs.append(f"{key}.tasks: {name!r} is not an offline task.{did_you_mean(name, known)} During training "
                        f"only the tasks shipped in harness/eval/tasks/ run (no download mid-run): {', '.join(known)}.")
    dupes = sorted({n for n in dt.tasks if dt.tasks.count(n) > 1})
    if dupes:
        errs.append(f"{key}.tasks: {', '.join(dupes)} listed twice; name each task once.")
    scheduled = dt.every_steps > 0 or dt.at_checkpoints
    if dt.tasks and not scheduled and dt.every_steps >= 0:
        errs.append(f"{key}.tasks={dt.tasks} but no schedule: set {key}.every_steps=N (every N optimizer steps) "
                    f"and/or {key}.at_checkpoints=true, or {key}.tasks=[] to turn it off.")
    if scheduled and not dt.tasks:
        errs.append(f"{key}: every_steps={dt.every_steps}, at_checkpoints={str(dt.at_checkpoints).lower()} but no "
                    f"tasks; name some, e.g. {key}.tasks=[arc_easy], or set every_steps=0 and at_checkpoints=false.")
    return errs
