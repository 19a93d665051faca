"""The training loss and its batches: right-padded collation of pre-tokenised rows, and a cross-entropy
that runs the LM head only where a target follows (transformers' Trainer with one method overridden).
"""

from __future__ import annotations


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
