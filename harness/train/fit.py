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
from harness.model.device import resolve_device, resolve_precision
from harness.model.methods import release_4bit_training_layout
from harness.model.scoring import eval_rows
from harness.run.environment import peak_rss_mb, run_environment
from harness.run.record import SCHEMA, now_iso, read_metrics, write_summary
from harness.train import distributed
from harness.train.benchmarks import BenchClock, make_benchmark_callback
from harness.train.callbacks import CollapseWatch, Outcome, make_callback, skip_final_checkpoint
from harness.train.distributed import write_manifest  # rank 0 alone writes the record (train.devices > 1)
from harness.train.objectives import OBJECTIVES
from harness.train.progress import attach_progress


WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json")

# the summary fields a finished training fills (fit below); a rerun that goes straight to evaluation keeps them
TRAINING_FIELDS = ("trainable_params", "total_params", "trainable_share", "precision", "device", "steps", "epochs_done",
                   "train_time_s", "train_tokens", "tokens_per_s", "train_loss_mean", "final_train_loss",
                   "final_val_loss", "best_val_loss", "peak_memory_mb", "peak_memory_kind", "adapter_bytes", "trained_at",
                   "benchmark_time_s")


def checkpointing_argument(arguments_class) -> str:
    """The TrainingArguments field that switches activation checkpointing: `activation_checkpointing` in the
    pinned transformers (5.23; `gradient_checkpointing` is deprecated there), `gradient_checkpointing` in the
    5.x releases before the rename (e.g. 5.17, preinstalled in some GPU images)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(arguments_class)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def _step(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[-1])


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def checkpoint_problem(ckpt: Path) -> str:
    """Why a checkpoint folder cannot be resumed from ("" if it can). The Trainer writes trainer_state.json
    last, so a process killed while saving leaves none, and a full disk leaves it empty or cut short; the
    weights (full, sharded or an adapter) must be there and non-empty too."""
    try:
        state = atomic.read_json(ckpt / "trainer_state.json")
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError) as exc:  # ValueError: empty or truncated JSON
        return f"trainer_state.json unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(state, dict):
        return "trainer_state.json holds no trainer state"
    weights = [ckpt / n for n in WEIGHT_FILES if (ckpt / n).exists()]
    if not weights:
        return f"no weights ({' / '.join(WEIGHT_FILES)})"
    empty = [w.name for w in weights if not _nonempty(w)]
    if empty:
        return f"empty {', '.join(empty)}"
    index = ckpt / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = set(atomic.read_json(index)["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return f"model.safetensors.index.json unreadable ({type(exc).__name__})"
        missing = sorted(n for n in shards if not _nonempty(ckpt / n))
        if missing:
            return f"missing or empty weight shards {', '.join(missing)}"
    return ""


def last_checkpoint(run_dir: Path, problems: dict[str, str] | None = None) -> Path | None:
    """The newest complete checkpoint (checkpoint_problem), or None. Incomplete ones newer than it are skipped,
    each with its problem put into `problems` (folder name -> why) when given."""
    ckpts = sorted((p for p in (run_dir / "checkpoints").glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=_step, reverse=True)
    for ckpt in ckpts:
        why = checkpoint_problem(ckpt)
        if not why:
            return ckpt
        if problems is not None:
            problems[ckpt.name] = why
    return None


def resume_point(run_dir: Path) -> Path | None:
    """The checkpoint to resume from; incomplete newer ones are deleted (each named in a warning), and
    metrics.jsonl keeps only the rows up to its step (up to step 0 without one), rewritten atomically, so
    the steps trained again are never recorded twice."""
    problems: dict[str, str] = {}
    ckpt = last_checkpoint(run_dir, problems)
    if not distributed.is_main():  # ranks 1.. of a run over several devices: the same answer, no side effects
        return ckpt
    for name, why in problems.items():
        print(f"[harness] warning: skipping {name} of {run_dir.name}: {why}; deleting it", file=sys.stderr)
        shutil.rmtree(run_dir / "checkpoints" / name, ignore_errors=True)
    if problems and ckpt is None:
        print(f"[harness] warning: no complete checkpoint left in {run_dir / 'checkpoints'}; training again from step 0",
              file=sys.stderr)
    step = _step(ckpt) if ckpt is not None else 0
    if (run_dir / "metrics.jsonl").exists():
        kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
        atomic.write_jsonl(run_dir / "metrics.jsonl", kept)
    return ckpt


def saved_weights(run_dir: Path) -> Path | None:
    """The final weights a finished training left (adapter/ or model/), or None."""
    for d, marker in (("adapter", "adapter_config.json"), ("model", "config.json")):
        if (run_dir / d / marker).is_file():
            return run_dir / d
    return None


def drop_weights(run_dir: Path) -> None:
    """train.save_model=false: the final weights were kept only so that a rerun could evaluate them without
    training again; the run is complete, so they go."""
    for d in ("adapter", "model"):
        shutil.rmtree(run_dir / d, ignore_errors=True)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def release_training_forward(model) -> None:
    """The model's own forward back for evaluation. accelerate replaced the forward of a bf16/fp16-trained model by
    an autocast-wrapped one (TRL's preference trainers add theirs), and exact mode is fp32: lm-eval calls
    model(...), which would still run under autocast. QLoRA's input-require-grads hook (prepare_model_for_kbit_
    training) goes too: with it, evaluation ran bitsandbytes' training kernel instead of the inference kernel that a
    fresh load of the saved run gets on AVX512-BF16 CPUs; the inference layout that training held off
    (hold_4bit_training_layout) is allowed again for the same reason (fast mode may use it; exact mode holds the fp32
    path again while it evaluates, on a fresh load too: harness/eval/precision.py exact_4bit)."""
    if "_original_forward" in vars(model):
        from accelerate.utils import extract_model_from_parallel

        extract_model_from_parallel(model, keep_fp32_wrapper=False)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "_require_grads_hook", None) is not None:
        base.disable_input_require_grads()
    release_4bit_training_layout(model)


def drop_training_state(trainer, model) -> None:
    """Free what only training needed (the optimizer's moments, the gradients) and give the memory back to the
    kernel before the weights are written: their page cache then reuses those pages (harness/run/memory.py
    give_back_freed_memory; no gc.collect(): the moments go by reference count, and a full collection took 0.3 s
    of a SmolLM2 trial)."""
    from harness.run.memory import give_back_freed_memory

    optimizer = getattr(trainer, "optimizer", None)
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer
    if inner is not None and hasattr(inner, "state"):
        inner.state.clear()
    model.zero_grad(set_to_none=True)
    give_back_freed_memory()


def fit(cfg: RunConfig, run_dir: Path, summary: dict, outcome: Outcome, tracker, reporter, benchmark=None) -> str:
    """Train one run into run_dir; fills `summary` and `manifest.json`, leaves the trained model and its
    tokenizer in `outcome`. Returns "completed" (trained and saved), "diverged" or "pruned"; raises on
    failure (the pipeline records it). `reporter.report(step, val_loss)` -> True stops the run as pruned.
    `benchmark(model, tokenizer) -> {task: {metric: value}}`: eval.during_training's suite (the pipeline builds it,
    harness/eval/during.py), run on its schedule by harness/train/benchmarks.py; its time is not training time."""
    import torch
    from transformers import set_seed

    from harness.model.init_from import load_init_adapter, load_init_weights, merge_init_adapter, resolve_init_from
    from harness.model import preload
    from harness.model.load import identity, load_model_and_tokenizer, own_trainable_parameters
    from harness.model.methods import (build_peft_config, build_quant_config, hold_4bit_training_layout,
                                       linear_module_names)

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
    if taken := preload.taken():  # a warm trial: what its fork server had loaded for it (harness/model/preload.py)
        manifest["kept_by_fork_server"] = taken
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
        manifest["bnb_4bit_layers_held"] = hold_4bit_training_layout(model)  # validation must not cut gradients
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
    # trainable weights still mapped from the checkpoint file: copied now, not one copy-on-write fault per page later
    manifest["trainable_copied_from_file_mb"] = round(own_trainable_parameters(model) / 2**20, 1)

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
        **{checkpointing_argument(TrainingArguments): t.gradient_checkpointing and quant is None},
        logging_steps=t.log_every, logging_nan_inf_filter=False, include_num_input_tokens_seen="non_padding",
        eval_strategy="steps" if eval_every else "no", eval_steps=eval_every or None,
        save_strategy="steps", save_steps=save_steps, save_total_limit=1, save_only_model=False,
        report_to=[], dataloader_num_workers=0, remove_unused_columns=False,
        disable_tqdm=True,  # progress goes to the run's display: harness/train/progress.py
        **distributed.trainer_args(device),  # torchrun ranks (train.devices > 1): gloo or nccl
    )
    outcome.model, outcome.tokenizer = model, tokenizer
    watch = CollapseWatch(vocab_size=getattr(model.config, "vocab_size", None) if t.objective == "sft" else None,
                          nonfinite_grads=precision != "fp16")
    clock = BenchClock()  # seconds spent in benchmarks during training: out of the throughput figures
    callbacks = [make_callback(cfg, run_dir, outcome, tracker, distributed.shared_reporter(reporter), watch=watch,
                               paused=clock)]
    if cfg.eval.during_training.tasks and (benchmark is not None or not distributed.is_main()):
        # every rank gets the callback: rank 0 runs the benchmark, the others (harness/launch.py follow, no
        # benchmark given) wait for it at a barrier
        callbacks.append(make_benchmark_callback(cfg, run_dir, benchmark, tokenizer, tracker, clock))
    callbacks.append(skip_final_checkpoint())  # after the others: the last step still counts as a checkpoint for them
    trainer = objective.build_trainer(cfg, model=model, tokenizer=tokenizer, args=args, train_rows=prepared.train,
                                      val_rows=val_rows, callbacks=callbacks)
    attach_progress(trainer, paused=clock)
    if getattr(trainer, "reference_model_kind", None):  # preference objectives: how the reference policy is held
        manifest["reference_model"] = trainer.reference_model_kind
        write_manifest(run_dir, manifest)

    if precision in ("bf16", "fp16"):  # frozen weights (LoRA's base) cast once, not at every forward: identical numbers
        from harness.train.frozen_cast import keep_casts

        manifest["frozen_casts_kept"] = keep_casts(model)
        write_manifest(run_dir, manifest)
    if device == "cpu" and precision == "bf16":
        # emulated bf16: autograd's input-gradient matmul can be ~4x slower than the forward's; the tn layout
        # (harness/train/bf16cpu.py) is applied only where a one-time measurement at this model's shape says it is faster
        from harness.train.bf16cpu import choose, patch_linear_layers

        mc = model.config
        hidden = getattr(mc, "hidden_size", None) or getattr(mc, "n_embd", 64)
        layout = choose(tokens=t.batch_size * t.max_length, in_features=hidden,
                        out_features=getattr(mc, "intermediate_size", None) or 4 * hidden,
                        weight_grad=cfg.method.peft == "none")
        manifest["bf16_layout"] = layout.record()
        manifest["bf16_fast_backward_layers"] = patch_linear_layers(model) if layout.apply else 0
        # torch's CPU sdpa is slow in bf16, its backward most: the block-causal kernel where it measures faster
        from harness.train import attention as train_attention

        attn = train_attention.choose(model, batch=t.batch_size, positions=t.max_length)
        manifest["train_attention"] = attn.record()
        write_manifest(run_dir, manifest)
    else:
        attn = None
    if device == "cpu" and lora is not None:  # torch's CPU bernoulli_ is slow: LoRA's dropout masks from 15-bit integers
        from harness.train.dropout import replace_lora_dropout

        manifest["lora_dropout"] = replace_lora_dropout(model)
        write_manifest(run_dir, manifest)

    # 6. train (resume from the last complete checkpoint of this run_id if there is one)
    ckpt = resume_point(run_dir) if cfg.resume else None
    if not cfg.resume and (run_dir / "metrics.jsonl").exists() and distributed.is_main():
        atomic.write_jsonl(run_dir / "metrics.jsonl", [])  # resume=false: trained again from step 0
    if ckpt is not None and distributed.is_main():
        print(f"[harness] resuming {run_dir.name} from {ckpt.name}")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_train = time.time()
    result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    train_time = time.time() - t_train - clock.seconds  # training alone: benchmarks during training left out
    if manifest.get("frozen_casts_kept"):
        from harness.train.frozen_cast import drop_casts

        drop_casts(model)  # their memory back before evaluation
    if attn is not None:
        train_attention.restore(model, attn)  # evaluation runs the model's own sdpa (exact mode: lm-eval's kernel)
    swapped = manifest.get("lora_dropout", {})
    if swapped.get("layers") or swapped.get("inputs_kept_in_autocast_dtype"):
        from harness.train.dropout import restore_lora_dropout

        restore_lora_dropout(model)
    distributed.barrier()  # every rank's last checkpoint is written before rank 0 removes checkpoints/
    state = trainer.state
    tokens = state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    summary.update(
        steps=state.global_step, epochs_done=state.epoch, train_time_s=train_time,
        train_tokens=int(state.num_input_tokens_seen), tokens_per_s=tokens / max(train_time, 1e-9),
        train_loss_mean=result.training_loss,
        **({"benchmark_time_s": clock.seconds} if benchmark is not None else {}),
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

    release_training_forward(model)  # the trainer is done with it (the final validation above still used it)
    drop_training_state(trainer, model)

    # 7. save: adapter or full weights, as safetensors. Always: until the run is complete they are what a rerun
    # evaluates instead of training again (trained_at in summary.json); train.save_model=false drops them then.
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
    if t.save_model:
        summary["adapter_bytes"] = dir_bytes(out)
    summary.update(final_train_loss=outcome.final_train_loss if outcome.final_train_loss is not None else result.training_loss,
                   final_val_loss=outcome.final_val_loss, best_val_loss=outcome.best_val_loss, trained_at=now_iso())
    write_summary(run_dir, summary)  # the marker a rerun reads: trained, weights in `out`
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # trained: the saved weights are what a rerun uses

    return "completed"
