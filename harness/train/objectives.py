"""Training objectives by name (train.objective): what data an objective trains on and which trainer runs it.

    OBJECTIVES["sft"]   supervised fine-tuning: prompt/completion rows, loss on the completion tokens only
    OBJECTIVES["dpo"]   direct preference optimisation on prompt/chosen/rejected pairs (TRL DPOTrainer;
                        harness/train/preference.py), train.beta, train.loss_type
    OBJECTIVES["orpo"]  odds-ratio preference optimisation, reference-free (TRL ORPOTrainer), train.beta = lambda

fit() (harness/train/fit.py) is the same for every objective: it loads the model, applies the method, asks the
objective for its prepared data and its trainer, trains, saves. A new objective (DPO, ORPO, ...) is one
module with its two functions plus one entry here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from harness.config import RunConfig
from harness.train.loss import make_trainer, pad_batch
from harness.train.preference import build_dpo_trainer, build_orpo_trainer, prepare_pairs


@dataclass(frozen=True)
class Objective:
    name: str
    # (cfg, tokenizer) -> harness.data.Prepared: the objective's training and validation rows
    prepare: Callable[[RunConfig, Any], Any]
    # (cfg, model=, tokenizer=, args=, train_rows=, val_rows=, callbacks=) -> a transformers Trainer
    build_trainer: Callable[..., Any]


def prepare_sft(cfg: RunConfig, tokenizer):
    from harness.data.cache import prepare

    # data.format=preference: SFT on each prompt's chosen answer (harness/data/formats.py), e.g. before DPO
    t = cfg.train
    return prepare(cfg.data, tokenizer, max_length=t.max_length, packing=t.packing,
                   add_bos=cfg.model.add_bos, use_cache=cfg.data.cache)


def build_sft_trainer(cfg: RunConfig, *, model, tokenizer, args, train_rows, val_rows, callbacks):
    # transformers' Trainer on the pre-tokenised rows (labels already mask the prompt), not TRL's SFTTrainer:
    # SFTTrainer 1.x computes the loss through a chunked "fused LM head" that also derives entropy and token
    # accuracy every step, and adds a second forward pass under label smoothing; on this project's CPU that made
    # LoRA 0.75x and QLoRA 0.52x the speed of a plain PyTorch loop (benchmarks/, docs/benchmarks.md).
    from datasets import Dataset

    keep = ("input_ids", "labels")
    train_ds = Dataset.from_list([{k: r[k] for k in keep} for r in train_rows])
    val_ds = Dataset.from_list([{k: r[k] for k in keep} for r in val_rows]) if val_rows else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return make_trainer(cfg.train.label_smoothing, model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                        data_collator=functools.partial(pad_batch, pad_id=pad_id), processing_class=tokenizer,
                        callbacks=callbacks)


OBJECTIVES: dict[str, Objective] = {
    "sft": Objective("sft", prepare_sft, build_sft_trainer),
    "dpo": Objective("dpo", prepare_pairs, build_dpo_trainer),
    "orpo": Objective("orpo", prepare_pairs, build_orpo_trainer),
}
