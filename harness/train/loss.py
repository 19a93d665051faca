"""The training loss and the trainer's validation loss: transformers' Trainer with two methods overridden.

compute_loss: a cross-entropy that runs the LM head only where a target follows (target_only_loss).
evaluate: the validation loss as harness/model/scoring.py defines it for every stage (token-weighted, fp32
logits, no autocast, no label smoothing), so metrics.jsonl val_loss, early stopping, pruning and
summary.best_val_loss / final_val_loss are the number the `val` evaluation suite records.
Batches: right-padded collation of pre-tokenised rows (pad_batch, also in harness/model/scoring.py).
"""

from __future__ import annotations

import time

from harness.model.scoring import pad_batch, supports_logits_to_keep, target_nll
from harness.train.attention import own_kernel
from harness.train.distributed import score_rows_all_ranks

__all__ = ["make_trainer", "pad_batch", "target_only_loss"]


def target_only_loss(model, inputs: dict, num_items_in_batch=None, label_smoothing: float = 0.0):
    """Causal-LM loss computed from the logits of target positions only: the same value as the model's own
    shifted cross-entropy (sum over targets / number of targets, label smoothing as transformers' LabelSmoother),
    without projecting prompt and padding positions onto the vocabulary. With completion-only labels that skips
    the LM head (a fifth of SmolLM2's FLOPs) and the vocabulary-wide softmax for every prompt token.
    Returns (loss, outputs); outputs.logits holds the kept positions only, flattened."""
    import torch

    total, n, outputs = target_nll(model, inputs, label_smoothing)
    if num_items_in_batch is not None:
        n = num_items_in_batch
    return total / torch.as_tensor(n, device=total.device).clamp(min=1), outputs


def make_trainer(label_smoothing: float, **kwargs):
    """transformers' Trainer whose loss comes from target positions only (target_only_loss) where the model
    supports it (the stock loss otherwise), and whose evaluation is harness.model.scoring.score_rows."""
    from transformers import Trainer

    target_only = supports_logits_to_keep(kwargs["model"])  # once, not every step

    class TargetOnlyTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if "labels" not in inputs or not target_only:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            if not self.model_accepts_loss_kwargs:
                num_items_in_batch = None  # the Trainer then divides by the accumulation steps itself
            # label smoothing regularises training only: validation loss (evaluate below) is plain cross-entropy
            smoothing = label_smoothing if model.training else 0.0
            loss, outputs = target_only_loss(model, inputs, num_items_in_batch, smoothing)
            if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                # as the stock compute_loss: num_items_in_batch counts every rank's targets, and DDP averages the
                # ranks' gradients, so scale by the ranks to get the gradient of the global token mean
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            # Why overridden: the stock evaluation_loop averages per-batch mean losses (weighting each batch by
            # its rows, not its target tokens) under the training autocast, so its eval_loss moved with the batch
            # size and precision and disagreed with the `val` suite on the same rows. Same schedule, same
            # callbacks (on_evaluate gets {"eval_loss": ...}), one definition of the number.
            dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
            t0 = time.time()
            tok = self.processing_class
            pad_id = getattr(tok, "pad_token_id", None)
            # over several ranks: each scores a share of the rows, the sums are reduced (the same number on every rank)
            with own_kernel(self.model):  # the `val` suite's attention kernel, not training's block-causal one
                res = score_rows_all_ranks(self.model, dataset.to_list() if hasattr(dataset, "to_list") else list(dataset),
                                           batch_size=self.args.per_device_eval_batch_size, pad_id=pad_id or 0)
            runtime = time.time() - t0
            metrics = {f"{metric_key_prefix}_loss": res["loss"], f"{metric_key_prefix}_tokens": res["tokens"],
                       f"{metric_key_prefix}_runtime": round(runtime, 4)}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return TargetOnlyTrainer(**kwargs)
