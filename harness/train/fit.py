"""The common trainer: one flat path for full fine-tuning, LoRA, QLoRA and their variants.

Read top to bottom: quantization config -> load -> PEFT -> data -> transformers Trainer -> train (resuming
from the last checkpoint if this run_id was interrupted) -> save. Method differences come from
harness/model/methods.py; the objective's trainer from harness/train/objectives.py. Evaluation is not
here: harness/pipeline.py runs it on the model fit() leaves in the Outcome.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from harness import atomic, config
from harness.config import ConfigError, RunConfig
from harness.model.device import cpu_has_native_bf16, resolve_device, resolve_precision
from harness.model.scoring import eval_rows
from harness.run.environment import peak_rss_mb, run_environment
from harness.run.record import SCHEMA, read_metrics
from harness.train import distributed
from harness.train.callbacks import Outcome, make_callback
from harness.train.distributed import write_manifest  # rank 0 alone writes the record (train.devices > 1)
from harness.train.objectives import OBJECTIVES


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint. A process killed while saving leaves a checkpoint folder without
    trainer_state.json (the Trainer writes it last): that one is skipped, the previous one is used."""
    ckpts = sorted(
        (p for p in (run_dir / "checkpoints").glob("checkpoint-*")
         if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").exists()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    return ckpts[-1] if ckpts else None


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def fit(cfg: RunConfig, run_dir: Path, summary: dict, outcome: Outcome, tracker, reporter) -> str:
    """Train one run into run_dir; fills `summary` and `manifest.json`, leaves the trained model and its
    tokenizer in `outcome`. Returns "completed" (trained and saved), "diverged" or "pruned"; raises on
    failure (the pipeline records it). `reporter.report(step, val_loss)` -> True stops the run as pruned."""
    import torch
    from transformers import set_seed

    from harness.model.init_from import load_init_adapter, load_init_weights, merge_init_adapter, resolve_init_from
    from harness.model.load import identity, load_model_and_tokenizer
    from harness.model.methods import build_peft_config, build_quant_config, linear_module_names

    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = resolve_device(cfg)
    precision = resolve_precision(cfg, device)
    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    set_seed(t.seed)

    # manifest: environment now, data and model identity once known
    manifest = {"schema": SCHEMA, **run_environment(device), "precision": precision, "seeds": {"train": t.seed},
                **distributed.manifest_fields(device)}

    # 1. quantization config -> 2. load -> 3. PEFT
    quant = build_quant_config(cfg.method, compute_dtype)
    init = resolve_init_from(cfg) if t.init_from else None  # train.init_from: a finished run's weights to start from
    if init is not None and init.kind == "full":
        model, tokenizer = load_init_weights(init, cfg.model, quant, device)
    else:
        model, tokenizer = load_model_and_tokenizer(cfg.model, quantization_config=quant, device=device)
    if init is not None and init.kind == "adapter" and cfg.method.peft == "none":
        model = merge_init_adapter(model, init)
    manifest["model"] = identity(cfg.model)
    if init is not None:
        manifest["init_from"] = init.record
    targets = config.target_modules(cfg)
    if cfg.method.peft != "none":
        present = linear_module_names(model)
        missing = [x for x in targets if x != "all-linear" and x not in present]
        if missing:
            raise ConfigError([f"method.target_modules: {missing} not found in model={cfg.model.name}; its Linear layers are: {', '.join(present)}, or all-linear."])
    if quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.gradient_checkpointing)
    lora = build_peft_config(cfg.method, targets)
    if lora is not None:
        from peft import get_peft_model

        model = load_init_adapter(model, init) if init is not None and init.kind == "adapter" else get_peft_model(model, lora)
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    summary.update(trainable_params=int(trainable), total_params=int(total), trainable_share=trainable / max(total, 1),
                   precision=precision, device=device)

    # 4. data (what the objective trains on)
    objective = OBJECTIVES[t.objective]
    prepared = objective.prepare(cfg, tokenizer)
    st = prepared.stats
    manifest["data"] = {"name": cfg.data.name, **st}
    write_manifest(run_dir, manifest)
    if st.get("n_bad"):
        from harness.data.badrows import describe_bad_rows

        print(f"[harness] warning: data={cfg.data.name}: {describe_bad_rows(st)}\n"
              f"  (manifest.json data.bad_rows lists the first {len(st.get('bad_rows', []))})")
    if st.get("truncated_rows"):
        print(f"[harness] note: {st['truncated_rows']} rows truncated to train.max_length={t.max_length}")
    if not prepared.train:
        raise ConfigError([f"data={cfg.data.name}: no training rows after preparation"])

    # 5. trainer (the objective's: harness/train/objectives.py)
    from transformers import TrainingArguments

    val_rows = eval_rows(prepared.val, t.eval_batches, t.batch_size)  # the rows the `val` suite scores too
    eval_every = t.eval_every if val_rows else 0
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
        **distributed.trainer_args(device),  # torchrun ranks (train.devices > 1): gloo or nccl
    )
    outcome.model, outcome.tokenizer = model, tokenizer
    trainer = objective.build_trainer(cfg, model=model, tokenizer=tokenizer, args=args, train_rows=prepared.train,
                                      val_rows=val_rows, callbacks=[make_callback(cfg, run_dir, outcome, tracker,
                                                                                 distributed.shared_reporter(reporter))])
    if getattr(trainer, "reference_model_kind", None):  # preference objectives: how the reference policy is held
        manifest["reference_model"] = trainer.reference_model_kind
        write_manifest(run_dir, manifest)

    if device == "cpu" and precision == "bf16" and not cpu_has_native_bf16():
        # emulated bf16: autograd's input-gradient matmul is ~4x slower than the forward's (harness/bf16cpu.py)
        from harness.train.bf16cpu import patch_linear_layers

        manifest["bf16_fast_backward_layers"] = patch_linear_layers(model)
        write_manifest(run_dir, manifest)

    # 6. train (resume from the last checkpoint of this run_id if there is one)
    ckpt = last_checkpoint(run_dir) if cfg.resume else None
    if ckpt is not None:
        step = int(ckpt.name.split("-")[-1])
        kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
        if distributed.is_main():
            atomic.write_jsonl(run_dir / "metrics.jsonl", kept)
            print(f"[harness] resuming {run_dir.name} from {ckpt.name}")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_train = time.time()
    result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    train_time = time.time() - t_train
    distributed.barrier()  # every rank's last checkpoint is written before rank 0 removes checkpoints/
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
    if val_rows and not (eval_every and state.global_step % eval_every == 0):
        trainer.evaluate()
        if outcome.status == "diverged":
            return "diverged"
    if not distributed.is_main():
        return "completed"  # the other ranks of a run over several devices: rank 0 saves and records
    summary["peak_memory_mb"] = (torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else peak_rss_mb()
    summary["peak_memory_kind"] = "cuda_max_allocated" if device == "cuda" else "rss"

    # 7. save: adapter or full weights, as safetensors
    if t.save_model:
        out = run_dir / ("adapter" if lora is not None else "model")
        tmp = run_dir / f".{out.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        # the trained adapter only (a DPO run from an adapter also holds its frozen reference copy, "ref")
        model.save_pretrained(str(tmp), safe_serialization=True,
                              **({"selected_adapters": ["default"]} if lora is not None else {}))
        if lora is None:
            tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        summary["adapter_bytes"] = dir_bytes(out)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # finished: the saved weights are the result

    return "completed"
