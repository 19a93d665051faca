"""The common trainer: one flat path for full fine-tuning, LoRA, QLoRA and their variants.

    harness train model=smollm2-135m method=qlora data=alpaca-demo train.max_steps=20

Read top to bottom: run directory -> quantization config -> load -> PEFT -> data -> transformers
Trainer -> train (resuming from the last checkpoint if this run_id was interrupted) -> save -> evaluate ->
record. Method differences come from harness.methods; the run record format is docs/run-record.md.
Exit codes: 0 completed, 1 failed, 3 pruned, 4 diverged, 130 interrupted.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import resource
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness import atomic, config, records
from harness.config import ConfigError, RunConfig

EXIT = {"completed": 0, "failed": 1, "pruned": 3, "diverged": 4, "interrupted": 130}
_NOT_AXES = ("name", "output_dir", "run_id", "study", "trial", "storage", "resume", "tracker.tags")


# ------------------------------------------------------------------------------ small helpers
def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def axes_from_overrides(cfg: RunConfig, overrides: list[str]) -> dict:
    """The config values that identify this configuration in a comparison: every group choice,
    plus each plain value set on the command line (what a sweep varies)."""
    axes: dict = {"model": cfg.model.name, "method": cfg.method.name, "data": cfg.data.name}
    for ov in overrides:
        key, sep, _ = ov.lstrip("+~").partition("=")
        if not sep or key in _NOT_AXES or key in config.GROUPS or key == "experiment":
            continue
        value = cfg
        try:
            for part in key.split("."):
                value = getattr(value, part)
        except AttributeError:
            continue
        axes[key] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return axes


def resolve_precision(cfg: RunConfig, device: str) -> str:
    p = cfg.train.precision
    if p != "auto":
        return p
    import torch

    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # bf16 autocast on CPU is fast only with native bf16 instructions (AVX512-BF16 / AMX): ~2x faster
    # than fp32 there, but ~5x SLOWER on AVX2-only CPUs, where it is emulated (measured on this project's machines).
    return "bf16" if cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(cfg: RunConfig) -> str:
    import torch

    if cfg.train.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(["train.device=cuda but no CUDA device is available; use train.device=cpu or auto."])
    return cfg.train.device


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint. A process killed while saving leaves a checkpoint folder without
    trainer_state.json (the Trainer writes it last): that one is skipped, the previous one is used."""
    ckpts = sorted(
        (p for p in (run_dir / "checkpoints").glob("checkpoint-*")
         if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").exists()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    return ckpts[-1] if ckpts else None


def pad_batch(rows: list[dict], pad_id: int) -> dict:
    """Collate pre-tokenised rows into right-padded tensors: input_ids (pad_id), labels (-100, no loss) and
    attention_mask (1 on real tokens). Rows keep their own labels, so the prompt masking made by data.prepare holds."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.as_tensor(r["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.as_tensor(r["labels"], dtype=torch.long)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def target_positions(labels):
    """Boolean mask over (batch, position): True where the NEXT token is a loss target (labels[:, t+1] != -100).
    Only these positions need logits; prompt, padding and the last position never do."""
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep


def target_only_loss(model, inputs: dict, num_items_in_batch=None, label_smoothing: float = 0.0):
    """Causal-LM loss computed from the logits of target positions only: the same value as the model's own
    shifted cross-entropy (sum over targets / number of targets, label smoothing as transformers' LabelSmoother),
    without projecting prompt and padding positions onto the vocabulary. With completion-only labels that skips
    the LM head (a fifth of SmolLM2's FLOPs) and the vocabulary-wide softmax for every prompt token.
    Returns (loss, outputs); outputs.logits holds the kept positions only, flattened."""
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    keep = target_positions(labels)
    outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                    logits_to_keep=keep, use_cache=False)
    targets = labels[:, 1:][keep[:, :-1]]
    total = F.cross_entropy(outputs.logits.float(), targets, reduction="sum", label_smoothing=label_smoothing)
    n = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    return total / torch.as_tensor(n, device=total.device).clamp(min=1), outputs


def supports_logits_to_keep(model) -> bool:
    """Whether the (PEFT-unwrapped) model's forward takes logits_to_keep (transformers' decoder-only models do)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def make_trainer(label_smoothing: float, **kwargs):
    """transformers' Trainer whose loss comes from target positions only (target_only_loss) where the model
    supports it; the stock loss otherwise."""
    from transformers import Trainer

    target_only = supports_logits_to_keep(kwargs["model"])  # once, not every step

    class TargetOnlyTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if "labels" not in inputs or not target_only:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            if not self.model_accepts_loss_kwargs:
                num_items_in_batch = None  # the Trainer then divides by the accumulation steps itself
            # label smoothing regularises training only: validation loss stays the plain cross-entropy, so
            # runs with and without smoothing compare (and agree with the `val` evaluation suite)
            smoothing = label_smoothing if model.training else 0.0
            loss, outputs = target_only_loss(model, inputs, num_items_in_batch, smoothing)
            return (loss, outputs) if return_outputs else loss

    return TargetOnlyTrainer(**kwargs)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


@dataclass
class Outcome:
    status: str = "running"
    reason: str = ""
    pruned_at_step: int | None = None
    best_val_loss: float | None = None
    final_val_loss: float | None = None
    final_train_loss: float | None = None
    evals_without_improvement: int = 0
    model: object = None  # the trained model, kept for callers that inspect it (tests, benchmarks)


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
                "mem_mb": rss_mb(), "time_s": now - self.t0,
            }
            self.last = (now, tokens)
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
            row = {"step": state.global_step, "val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
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


# --------------------------------------------------------------------------------- the run
def prepare_run_dir(cfg: RunConfig, overrides: list[str]) -> tuple[Path, bool]:
    """Create (or reopen for resume) the run directory; write config.yaml and overrides.yaml."""
    name = config.default_run_name(cfg)
    run_id = cfg.run_id or records.new_run_id()
    run_dir = records.run_dir_for(cfg.output_dir, name, run_id)
    resuming = run_dir.exists() and (run_dir / "config.yaml").exists()
    if resuming:
        old = records.read_summary(run_dir) or {}
        if old.get("status") == "completed":
            return run_dir, True
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.run_id = run_id
    atomic.write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(cfg), sort_keys=False))
    atomic.write_text(run_dir / "overrides.yaml", yaml.safe_dump(list(overrides)))
    return run_dir, resuming


def train(cfg: RunConfig, overrides: list[str] | None = None, outcome: Outcome | None = None) -> tuple[str, Path]:
    """Train one run end to end; returns (status, run_dir). Never raises for a training failure:
    it is recorded in summary.json (status failed / diverged / interrupted) instead. Pass an
    Outcome to get the trained model back in outcome.model."""
    overrides = list(overrides or [])
    started, t_start = records.now_iso(), time.time()
    run_dir, resuming = prepare_run_dir(cfg, overrides)
    prior = records.read_summary(run_dir) or {}
    if prior.get("status") == "completed":
        print(f"[harness] run {run_dir} already completed; nothing to do")
        return "completed", run_dir

    summary = {
        "schema": records.SCHEMA, "status": "running", "reason": "",
        "name": run_dir.parent.name, "run_id": run_dir.name, "run_dir": str(run_dir),
        "study": cfg.study, "trial": cfg.trial, "model": cfg.model.name, "method": cfg.method.name,
        "data": cfg.data.name, "seed": cfg.train.seed, "axes": axes_from_overrides(cfg, overrides),
        "started_at": prior.get("started_at", started), "resumed": bool(resuming and prior),
    }
    atomic.write_json(run_dir / "summary.json", summary)
    outcome = outcome if outcome is not None else Outcome()
    from harness import tracking

    tracker = tracking.start(cfg, run_dir)
    try:
        status = _train_inner(cfg, run_dir, summary, outcome, tracker)
    except KeyboardInterrupt:
        outcome.status, outcome.reason = "interrupted", "interrupted by the user (Ctrl-C); re-run with the same run_id to resume"
        status = "interrupted"
    except ConfigError as exc:
        outcome.status, outcome.reason, status = "failed", str(exc), "failed"
    except Exception as exc:  # recorded, not raised: a failed run is a result
        tb = traceback.format_exc()
        atomic.write_text(run_dir / "error.log", tb)
        reason = f"{type(exc).__name__}: {exc}"
        if "out of memory" in str(exc).lower():
            reason = "out of memory: " + reason
        outcome.status, outcome.reason, status = "failed", reason[:2000], "failed"
    summary.update(
        status=status if outcome.status in ("running", "completed") else outcome.status,
        reason=outcome.reason,
        pruned_at_step=outcome.pruned_at_step,
        final_train_loss=outcome.final_train_loss if outcome.final_train_loss is not None else summary.get("train_loss_mean"),
        final_val_loss=outcome.final_val_loss,
        best_val_loss=outcome.best_val_loss,
        wall_time_s=time.time() - t_start,
        peak_memory_mb=summary.get("peak_memory_mb") or peak_rss_mb(),
        finished_at=records.now_iso(),
    )
    atomic.write_json(run_dir / "summary.json", summary)
    try:
        tracker.finish(summary)
    except Exception as exc:
        print(f"[harness] warning: tracker finish failed: {exc}")
    return summary["status"], run_dir


def _train_inner(cfg: RunConfig, run_dir: Path, summary: dict, outcome: Outcome, tracker) -> str:
    import torch
    from transformers import set_seed

    from harness import datacache, methods, models, pruning

    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = resolve_device(cfg)
    precision = resolve_precision(cfg, device)
    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    set_seed(t.seed)

    # manifest: environment now, data and model identity once known
    manifest = {"schema": records.SCHEMA, **records.environment(), "torch": torch.__version__,
                "cuda": torch.version.cuda if torch.cuda.is_available() else None, "device": device,
                "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
                "precision": precision, "seeds": {"train": t.seed}}

    # 1. quantization config -> 2. load -> 3. PEFT
    quant = methods.build_quant_config(cfg.method, compute_dtype)
    model, tokenizer = models.load_model_and_tokenizer(cfg.model, quantization_config=quant, device=device)
    manifest["model"] = models.identity(cfg.model)
    targets = config.target_modules(cfg)
    if cfg.method.peft != "none":
        present = methods.linear_module_names(model)
        missing = [x for x in targets if x != "all-linear" and x not in present]
        if missing:
            raise ConfigError([f"method.target_modules: {missing} not found in model={cfg.model.name}; its Linear layers are: {', '.join(present)}, or all-linear."])
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.gradient_checkpointing)
    lora = methods.build_peft_config(cfg.method, targets)
    if lora is not None:
        from peft import get_peft_model

        model = get_peft_model(model, lora)
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    summary.update(trainable_params=int(trainable), total_params=int(total), trainable_share=trainable / max(total, 1),
                   precision=precision, device=device)

    # 4. data
    prepared = datacache.prepare(cfg.data, tokenizer, max_length=t.max_length, seed=t.seed, packing=t.packing,
                                 add_bos=cfg.model.add_bos, use_cache=cfg.data.cache)
    st = prepared.stats
    manifest["data"] = {"name": cfg.data.name, **st}
    atomic.write_json(run_dir / "manifest.json", manifest)
    if st.get("n_bad"):
        print(f"[harness] warning: {st['n_bad']} malformed rows skipped (listed in manifest.json data.bad_rows)")
    if st.get("truncated_rows"):
        print(f"[harness] note: {st['truncated_rows']} rows truncated to train.max_length={t.max_length}")
    if not prepared.train:
        raise ConfigError([f"data={cfg.data.name}: no training rows after preparation"])

    # 5. trainer. transformers' Trainer on the pre-tokenised rows (labels already mask the prompt), not TRL's
    # SFTTrainer: SFTTrainer 1.x computes the loss through a chunked "fused LM head" that also derives entropy
    # and token accuracy every step, and adds a second forward pass under label smoothing; on this project's CPU
    # that made LoRA 0.75x and QLoRA 0.52x the speed of a plain PyTorch loop (benchmarks/, docs/benchmarks.md).
    from datasets import Dataset
    from transformers import TrainingArguments

    keep = ("input_ids", "labels")
    train_ds = Dataset.from_list([{k: r[k] for k in keep} for r in prepared.train])
    val_rows = prepared.val
    if t.eval_batches and val_rows:
        val_rows = val_rows[: t.eval_batches * t.batch_size]
    val_ds = Dataset.from_list([{k: r[k] for k in keep} for r in val_rows]) if val_rows else None
    eval_every = t.eval_every if val_ds is not None else 0
    save_steps = t.save_every or eval_every or 100
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.lr, lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_steps or t.warmup_ratio, num_train_epochs=t.epochs, max_steps=t.max_steps,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, optim=t.optimizer,
        label_smoothing_factor=t.label_smoothing, seed=t.seed, data_seed=t.seed,
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device == "cpu",
        gradient_checkpointing=t.gradient_checkpointing and quant is None,
        logging_steps=t.log_every, logging_nan_inf_filter=False, include_num_input_tokens_seen="non_padding",
        eval_strategy="steps" if eval_every else "no", eval_steps=eval_every or None,
        save_strategy="steps", save_steps=save_steps, save_total_limit=1, save_only_model=False,
        report_to=[], dataloader_num_workers=0, remove_unused_columns=False,
        disable_tqdm=not sys.stderr.isatty() and os.environ.get("HARNESS_PROGRESS") != "1",
    )
    reporter = pruning.reporter_for(cfg)
    outcome.model = model
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    trainer = make_trainer(t.label_smoothing, model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                           data_collator=functools.partial(pad_batch, pad_id=pad_id), processing_class=tokenizer,
                           callbacks=[make_callback(cfg, run_dir, outcome, tracker, reporter)])

    if device == "cpu" and precision == "bf16" and not cpu_has_native_bf16():
        # emulated bf16: autograd's input-gradient matmul is ~4x slower than the forward's (harness/bf16cpu.py)
        from harness import bf16cpu

        manifest["bf16_fast_backward_layers"] = bf16cpu.patch_linear_layers(model)
        atomic.write_json(run_dir / "manifest.json", manifest)

    # 6. train (resume from the last checkpoint of this run_id if there is one)
    ckpt = last_checkpoint(run_dir) if cfg.resume else None
    if ckpt is not None:
        step = int(ckpt.name.split("-")[-1])
        kept = [r for r in records.read_metrics(run_dir) if r.get("step", 0) <= step]
        atomic.write_jsonl(run_dir / "metrics.jsonl", kept)
        print(f"[harness] resuming {run_dir.name} from {ckpt.name}")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_train = time.time()
    result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    train_time = time.time() - t_train
    state = trainer.state
    tokens = state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    summary.update(
        steps=state.global_step, epochs_done=state.epoch, train_time_s=train_time,
        train_tokens=int(state.num_input_tokens_seen), tokens_per_s=tokens / max(train_time, 1e-9),
        train_loss_mean=result.training_loss,
    )
    if outcome.status in ("diverged", "pruned"):
        summary["peak_memory_mb"] = peak_rss_mb()
        return outcome.status

    # final validation loss (if not just computed at the last step)
    if val_ds is not None and not (eval_every and state.global_step % eval_every == 0):
        trainer.evaluate()
        if outcome.status == "diverged":
            return "diverged"
    summary["peak_memory_mb"] = (torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else peak_rss_mb()
    summary["peak_memory_kind"] = "cuda_max_allocated" if device == "cuda" else "rss"

    # 7. save: adapter or full weights, as safetensors
    if t.save_model:
        out = run_dir / ("adapter" if lora is not None else "model")
        tmp = run_dir / f".{out.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
        if lora is None:
            tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        summary["adapter_bytes"] = dir_bytes(out)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # finished: the saved weights are the result

    # 8. evaluate
    if cfg.eval.after_train and cfg.eval.name != "none":
        from harness import evaluate

        t_eval = time.time()
        model.eval()
        suites = evaluate.run_suites(model, tokenizer, cfg, run_dir)
        summary["eval_time_s"] = time.time() - t_eval
        tracker.log({f"{s}.{k}": v for s, res in suites.items() for k, v in (res.get("metrics") or {}).items()
                     if isinstance(v, (int, float))})
    outcome.status = "completed"
    return "completed"


# ------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=smollm2-135m method=qlora train.max_steps=20")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config.compose(args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    status, run_dir = train(cfg, args.overrides)
    summary = records.read_summary(run_dir) or {}
    bits = [f"{k}={summary[k]:.4g}" for k in ("best_val_loss", "final_train_loss", "tokens_per_s") if isinstance(summary.get(k), (int, float))]
    reason = f" ({summary.get('reason')})" if summary.get("reason") else ""
    print(f"{status}: {run_dir}  {' '.join(bits)}{reason}")
    return EXIT.get(status, 1)
