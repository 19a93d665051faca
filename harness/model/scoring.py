"""Validation loss, defined once for the trainer and the `val` evaluation suite.

    harness train ... train.eval_every=50     # the trainer's periodic evaluation (harness/train/loss.py)
    harness eval RUN_DIR                      # the `val` suite (harness/eval/val.py)

The definition (docs/run-record.md): over the first train.eval_batches x train.batch_size rows of the
run's validation split (all of them when eval_batches is 0), the TOKEN-weighted mean next-token
cross-entropy over target tokens (labels != -100): sum of the per-token losses / number of target
tokens, in nats. The model runs in its own weights' dtype without autocast (accelerate's mixed-precision
wrapper on a model being trained is bypassed), logits are upcast to fp32 before the softmax, and there
is no label smoothing. So the number does not depend on the batch size, on train.precision, or on where it
is computed: during training (metrics.jsonl val_loss, early stopping, pruning, summary best/final_val_loss),
right after it (eval.json val.loss), or later on the saved weights.

Collation and the target-only forward live here too, because training (harness/train/loss.py) uses them:
only positions whose next token is a target are projected onto the vocabulary.
"""
from __future__ import annotations

import math
from typing import Sequence


def pad_batch(rows: Sequence[dict], pad_id: int) -> dict:
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


def base_model(model):
    """The transformers model inside a peft wrapper (the model itself when it is not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def takes_logits_to_keep(model) -> bool:
    """Whether the (PEFT-unwrapped) model's forward takes logits_to_keep at all: as an int (the last n positions)
    every transformers release that has the argument does."""
    import inspect

    return "logits_to_keep" in inspect.signature(base_model(model).forward).parameters


def supports_logits_to_keep(model) -> bool:
    """Whether the (PEFT-unwrapped) model's forward takes a boolean (batch, position) mask as logits_to_keep and
    returns the logits of the kept positions, flattened: transformers' decoder-only models do from 5.23 on
    (modeling_utils.slice_logits_to_keep); earlier releases take an int or a 1-D index only and raise IndexError
    on a mask. Tried once on a few tokens (eval mode, no gradients; the caller's mode is given back)."""
    import torch

    from harness.model.load import model_device

    if not takes_logits_to_keep(model):
        return False
    base = base_model(model)
    vocab = max(2, int(getattr(getattr(base, "config", None), "vocab_size", None) or 8))
    ids = (torch.arange(2, 8, device=model_device(model)) % vocab).unsqueeze(0)
    keep = torch.tensor([[False, True, False, True, True, False]], device=ids.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            got = plain_forward(model)(input_ids=ids, use_cache=False, logits_to_keep=keep).logits
    except (IndexError, TypeError, ValueError):  # not RuntimeError: out of memory is not an answer
        return False
    finally:
        model.train(was_training)
    return got.dim() == 2 and got.shape[0] == 3


def split_head(model):
    """(decoder, output layer) of a causal LM whose logits are output_layer(decoder(ids).last_hidden_state), checked
    on a few tokens against the model's own forward (bit for bit up to 1e-6: no logit soft-capping or scaling hides
    in between); None when the model is not built that way, and the caller uses full forwards."""
    import torch

    from harness.model.load import model_device

    base = base_model(model)
    try:
        decoder, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None or decoder is base:
        return None
    probe = torch.arange(2, 10, device=model_device(model)).unsqueeze(0) % max(2, int(head.weight.shape[0]))
    try:
        want = plain_forward(model)(input_ids=probe, use_cache=False).logits.float()
        got = head(decoder(input_ids=probe, use_cache=False).last_hidden_state).float()
    except (TypeError, ValueError, RuntimeError):
        return None
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-6, atol=1e-6):
        return None
    return decoder, head


def target_nll(forward, inputs: dict, label_smoothing: float = 0.0, target_only: bool = True):
    """(summed cross-entropy over the target tokens, in fp32; number of target tokens; the model outputs).

    `forward` is the model (or its plain forward). With target_only the model projects only the positions
    whose next token is a target (logits_to_keep), and outputs.logits holds those rows, flattened; otherwise
    the full logits are computed and the same rows picked. Label smoothing as transformers' LabelSmoother."""
    import torch.nn.functional as F

    labels = inputs["labels"]
    keep = target_positions(labels)
    kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs.get("attention_mask"), "use_cache": False}
    if target_only:
        outputs = forward(**kwargs, logits_to_keep=keep)
        logits = outputs.logits
    else:
        outputs = forward(**kwargs)
        logits = outputs.logits[keep.to(outputs.logits.device)]
    targets = labels[:, 1:][keep[:, :-1]].to(logits.device)
    total = F.cross_entropy(logits.float(), targets, reduction="sum", label_smoothing=label_smoothing)
    return total, targets.numel(), outputs


def plain_forward(model):
    """The model's forward without accelerate's mixed-precision wrapper. accelerate's prepare_model replaces
    `model.forward` of a model trained with bf16/fp16 by an autocast-wrapped one (kept after training, so
    the model the pipeline evaluates still has it) and stores the original as `model._original_forward`."""
    return vars(model).get("_original_forward") or model  # the instance's own: never a wrapped inner model's


def eval_rows(rows: Sequence[dict], eval_batches: int, batch_size: int) -> list[dict]:
    """The validation rows both stages score: the first eval_batches x batch_size (all when eval_batches is 0)."""
    rows = list(rows)
    return rows[: eval_batches * batch_size] if eval_batches > 0 else rows


# The last score_rows result, for the one repeat the pipeline makes: the trainer evaluates at its final step and the
# `val` suite scores the same rows of the same, unchanged model right after (quickstart: 1.5 s of a 40 s trial).
_last: dict = {}


def _state_key(model, rows: Sequence[dict], batch_size: int, pad_id: int) -> tuple | None:
    """What score_rows' number depends on: every parameter's version counter (an optimizer step or any in-place
    write through autograd bumps it), storage and float64 sum (writes through `.data`, which peft and bitsandbytes
    use, bump no counter; ~40 ms for SmolLM2-135M), the attention kernel, autocast, the thread count, and the
    rows. None for a model with 4-bit layers: what they compute with lives outside their parameters (compute
    dtype, bitsandbytes' packing for its fused kernel, exact mode's held training layout), so never recalled."""
    import hashlib

    import numpy as np
    import torch

    from harness.model.methods import has_4bit

    if has_4bit(model) or any(hasattr(m, "compute_dtype") for m in model.modules()):
        return None
    digest = hashlib.sha1()
    for r in rows:
        for k in ("input_ids", "labels"):
            digest.update(np.asarray(r[k], dtype=np.int64).tobytes())
            digest.update(b"|")
    try:
        with torch.no_grad():
            params = tuple((p._version, p.data_ptr(), p.dtype, float(p.sum(dtype=torch.float64)))
                           for p in model.parameters())
    except (RuntimeError, NotImplementedError, TypeError):  # e.g. offloaded (meta) parameters: no sum to read
        return None
    return (params,
            getattr(getattr(model, "config", None), "_attn_implementation", None),
            torch.is_autocast_enabled("cpu"), torch.is_autocast_enabled("cuda") if torch.cuda.is_available() else False,
            torch.get_num_threads(), batch_size, pad_id, digest.hexdigest())


def score_rows(model, rows: Sequence[dict], batch_size: int = 8, pad_id: int = 0, progress: bool = False,
               recall: bool = False) -> dict:
    """The validation loss of pre-tokenised rows ({input_ids, labels}) as defined in the module docstring
    -> {"loss", "perplexity", "tokens"}. Rows are scored in order of length (less padding; the sum is the
    same), in eval mode (the caller's mode is given back).

    recall: when the last call scored the same rows of the same model object in the same state (_state_key),
    give its result back without a forward, with "recalled": True (the `val` suite after training)."""
    import weakref

    if not rows:
        raise ValueError("score_rows: no validation rows (data.val_size=0?)")
    key = _state_key(model, rows, batch_size, pad_id)
    ref = _last.get("model")
    if recall and key is not None and ref is not None and ref() is model and _last.get("key") == key:
        return {**_last["result"], "recalled": True}
    res = _score_rows(model, rows, batch_size, pad_id, progress)
    _last.clear()
    _last.update(model=weakref.ref(model), key=key, result=res)
    return dict(res)


def _score_rows(model, rows: Sequence[dict], batch_size: int, pad_id: int, progress: bool) -> dict:
    import torch

    from harness.model.load import model_device
    from harness.run.progress import bar

    rows = sorted(rows, key=lambda r: len(r["input_ids"]))
    device = model_device(model)
    forward, target_only = plain_forward(model), supports_logits_to_keep(model)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    shown = bar(total=sum(len(r["input_ids"]) for r in rows), desc="val", unit="tok", disable=not progress)
    try:
        with torch.inference_mode():
            for b in range(0, len(rows), max(1, batch_size)):
                batch = {k: v.to(device) for k, v in pad_batch(rows[b:b + batch_size], pad_id).items()}
                nll, n, _ = target_nll(forward, batch, target_only=target_only)
                total += float(nll)
                count += n
                shown.update(sum(len(r["input_ids"]) for r in rows[b:b + batch_size]))
    finally:
        shown.close()
        model.train(was_training)
    if count == 0:
        raise ValueError("score_rows: no target tokens in the validation rows (all labels are -100)")
    loss = total / count
    return {"loss": loss, "perplexity": math.inf if loss > 700 else math.exp(loss), "tokens": count}
