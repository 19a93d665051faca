"""Preference objectives: DPO and ORPO through TRL's trainers, on pairs tokenised by harness/data/preference.py.

    harness train data=dpo-en-demo train.objective=dpo method=lora train.beta=0.1       # OBJECTIVES["dpo"]
    harness train data=dpo-en-demo train.objective=orpo method=qlora train.beta=0.1     # OBJECTIVES["orpo"]

fit() (harness/train/fit.py) loads the model, applies the method and builds the TrainingArguments exactly as for
SFT; this module turns those arguments into TRL's DPOConfig / ORPOConfig (adding train.beta and train.loss_type) and
builds the trainer. Run record, resume, pruning (fed the DPO / ORPO validation loss), divergence and exit codes are
fit()'s, unchanged.

The reference policy (DPO), recorded as manifest.json `reference_model`:
  "adapter disabled"  LoRA / QLoRA / DoRA with a fresh adapter: the base model with the adapter switched off,
                      no second copy in memory. TRL 1.16 given an already wrapped PeftModel adds a frozen "ref"
                      adapter copied from the trainable one; while its lora_B is all zero (a fresh adapter) that
                      copy computes exactly the base model, so it is dropped and TRL disables the adapter instead.
  "adapter copy"      LoRA from train.init_from's adapter (SFT -> DPO): the frozen copy of the starting adapter is
                      the reference (the SFT policy, as DPO intends); one extra adapter in memory.
  "copy"              full fine-tuning: TRL loads a second full model from the same weights (2x weight memory).
  "none"              ORPO: reference-free.
"""

from __future__ import annotations

import dataclasses

from harness.config import RunConfig

PAIR_KEYS = ("prompt_ids", "chosen_ids", "rejected_ids")


def prepare_pairs(cfg: RunConfig, tokenizer):
    """Tokenised preference pairs (harness.data.preference), cached across trials like SFT data."""
    from harness.data.preference import prepare_preference

    t = cfg.train
    return prepare_preference(cfg.data, tokenizer, max_length=t.max_length, seed=t.seed, add_bos=cfg.model.add_bos,
                              use_cache=cfg.data.cache)


def trl_config(args, config_cls, **extra):
    """fit()'s TrainingArguments as a TRL config class: every TrainingArguments field carried over as set (TRL's own
    defaults such as gradient_checkpointing=True and bf16=True never apply), plus the objective's fields."""
    from transformers import TrainingArguments

    own = {f.name for f in dataclasses.fields(config_cls) if f.init}
    kwargs = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments)
              if f.init and f.name in own}
    # validation needs the loss only: without this, TRL's prediction_step runs a second forward pass per batch
    # and the Trainer gathers every batch's full-vocabulary logits (GBs for a 49k vocabulary)
    kwargs["prediction_loss_only"] = True
    return config_cls(**{**kwargs, **extra})


def _datasets(train_rows, val_rows):
    from datasets import Dataset

    def ds(rows):
        return Dataset.from_list([{k: r[k] for k in PAIR_KEYS} for r in rows]) if rows else None

    return ds(train_rows), ds(val_rows)


def _trainable_dtypes(model) -> dict:
    return {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}


def _restore_dtypes(model, dtypes: dict) -> None:
    """TRL casts a quantized model's adapter weights to bf16 (the QLoRA paper's choice); SFT here keeps peft's
    default (fp32 adapters, bf16 compute only under train.precision=bf16), so DPO vs SFT compare on the same
    adapter precision. Emulated bf16 adapters were also ~5x slower on CPUs without native bf16."""
    for n, p in model.named_parameters():
        if n in dtypes and p.dtype != dtypes[n]:
            p.data = p.data.to(dtypes[n])


def _fresh_adapter(model) -> bool:
    """True when every lora_B of the trainable adapter is zero: the adapter adds nothing yet, so the model with the
    adapter disabled is exactly the starting policy."""
    bs = [p for n, p in model.named_parameters() if "lora_B" in n and ".default" in n]
    return bool(bs) and all(not p.detach().any() for p in bs)


def build_dpo_trainer(cfg: RunConfig, *, model, tokenizer, args, train_rows, val_rows, callbacks):
    from accelerate.utils import is_peft_model
    from trl import DPOConfig, DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        # One method overridden: the pairs arrive tokenised by harness.data.preference (the prompt string SFT and
        # generation use, BOS once, EOS after each answer, long pairs cut and counted), so TRL's re-tokenisation
        # from strings is skipped; its collator, loss, reference handling and logging are used as they are.
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    t = cfg.train
    dpo_args = trl_config(args, DPOConfig, beta=t.beta, loss_type=[t.loss_type], max_length=None,
                          precompute_ref_log_probs=False, disable_dropout=True)
    train_ds, val_ds = _datasets(train_rows, val_rows)
    dtypes = _trainable_dtypes(model)
    peft = is_peft_model(model)
    fresh = peft and _fresh_adapter(model)
    trainer = PretokenizedDPOTrainer(model=model, ref_model=None, args=dpo_args, train_dataset=train_ds,
                                     eval_dataset=val_ds, processing_class=tokenizer, callbacks=callbacks)
    _restore_dtypes(model, dtypes)
    if peft:
        if fresh and "ref" in model.peft_config:
            model.delete_adapter("ref")  # identical to the base (lora_B == 0): TRL then disables the adapter instead
        trainer.reference_model_kind = "adapter copy" if "ref" in model.peft_config else "adapter disabled"
    else:
        trainer.reference_model_kind = "copy"
    return trainer


def build_orpo_trainer(cfg: RunConfig, *, model, tokenizer, args, train_rows, val_rows, callbacks):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    class PretokenizedORPOTrainer(ORPOTrainer):
        # One method overridden, for the same reason as DPO's: rows are already tokenised pairs; this lays them out
        # as ORPO's collator expects (prompt + answer ids, labels -100 on the prompt).
        def tokenize_row(self, feature, model=None):
            p = list(feature["prompt_ids"])
            out = {"prompt_input_ids": p, "prompt_attention_mask": [1] * len(p)}
            for side in ("chosen", "rejected"):
                ids = list(feature[f"{side}_ids"])
                out[f"{side}_input_ids"] = p + ids
                out[f"{side}_attention_mask"] = [1] * (len(p) + len(ids))
                out[f"{side}_labels"] = [-100] * len(p) + ids
            return out

    orpo_args = trl_config(args, ORPOConfig, beta=cfg.train.beta, max_length=cfg.train.max_length,
                           disable_dropout=True)
    train_ds, val_ds = _datasets(train_rows, val_rows)
    dtypes = _trainable_dtypes(model)
    trainer = PretokenizedORPOTrainer(model=model, args=orpo_args, train_dataset=train_ds, eval_dataset=val_ds,
                                      processing_class=tokenizer, callbacks=callbacks)
    _restore_dtypes(model, dtypes)
    trainer.data_collator = _counting(trainer.data_collator)
    trainer.reference_model_kind = "none"
    return trainer


def _counting(collate):
    """ORPO's batches hold chosen_/rejected_ tensors only, so the Trainer cannot count the tokens it trains on
    (summary tokens_per_s would be 0). Add input_ids / attention_mask spanning both sequences, which the Trainer counts
    (the same count as DPO's batches: prompt + chosen and prompt + rejected) and ORPO's forward ignores."""
    import torch

    def collate_and_count(features):
        batch = collate(features)
        batch["input_ids"] = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]], dim=1)
        batch["attention_mask"] = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]], dim=1)
        return batch

    return collate_and_count
