"""Preference suites (eval.preference): how a model ranks held-out chosen / rejected pairs.

    harness eval RUN_DIR eval=preference        # conf/eval/preference.yaml: suite `prefs` on data=dpo-en-demo
    harness train ... train.objective=dpo eval=preference

For every pair (harness.data.preference.load_preference_eval: data.eval_path, else the run's own validation split,
tokenised exactly as training tokenised it) the suite computes
  logp_chosen, logp_rejected   the sum of the policy's log-probabilities over the answer tokens (EOS included)
  logp_margin, logp_accuracy   logp_chosen - logp_rejected; 1 if > 0 else 0 (a length-biased preference)
and, where a reference policy is at hand (a PEFT model: the adapter disabled, or the frozen "ref" adapter of a DPO
run started from an adapter with train.init_from; the entry's `reference` says which):
  reward_chosen / _rejected    implicit DPO rewards beta * (logp_policy - logp_ref), beta = train.beta
  reward_margin, reward_accuracy   reward_chosen - reward_rejected; 1 if > 0 else 0 (TRL's rewards/accuracies:
                                   a tie, e.g. an untrained adapter, is not a success)
A plain model (full fine-tuning, a base model) has no reference here: log-prob metrics only.
Per-item values go to samples/<suite>.jsonl (the per-item key of each metric is its own name, 0/1 for the
accuracies, so McNemar / paired bootstrap apply); means with 95% bootstrap intervals go to eval.json.
The arithmetic is in pure functions at the top (pair_values, summarise), tested against hand computations.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np

from harness import atomic, paths
from harness.eval.registry import EvalError, SuiteContext, config_hash, register_suite_kind
from harness.model.load import model_device

# Metric metadata, ready for the metric registry (main's harness/eval/metrics.py: `for name, meta in
# METRIC_META.items(): declare_metric(name, **meta)`); scales in that registry's vocabulary (harness/run/metric_meta.py
# SCALES): "binary" = the mean of 0/1 per-item values, "raw" = nats or beta x nats. per_item names the
# samples/<suite>.jsonl key a paired test reads (each metric's own name).
METRIC_META = {
    "reward_accuracy": {"higher_is_better": True, "scale": "binary", "per_item": "reward_accuracy"},
    "reward_margin": {"higher_is_better": True, "scale": "raw", "per_item": "reward_margin"},
    "reward_chosen": {"higher_is_better": True, "scale": "raw", "per_item": "reward_chosen"},
    "reward_rejected": {"higher_is_better": False, "scale": "raw", "per_item": "reward_rejected"},
    "logp_accuracy": {"higher_is_better": True, "scale": "binary", "per_item": "logp_accuracy"},
    "logp_margin": {"higher_is_better": True, "scale": "raw", "per_item": "logp_margin"},
    "logp_chosen": {"higher_is_better": True, "scale": "raw", "per_item": "logp_chosen"},
    "logp_rejected": {"higher_is_better": False, "scale": "raw", "per_item": "logp_rejected"},
}


# ----------------------------------------------------------------------------------- pure math
def pair_values(logp_c: float, logp_r: float, ref_c: float | None = None, ref_r: float | None = None,
                beta: float = 0.1) -> dict:
    """One pair's per-item values (the samples/<suite>.jsonl fields besides id and text)."""
    out = {"logp_chosen": logp_c, "logp_rejected": logp_r, "logp_margin": logp_c - logp_r,
           "logp_accuracy": int(logp_c > logp_r)}
    if ref_c is not None and ref_r is not None:
        rc, rr = beta * (logp_c - ref_c), beta * (logp_r - ref_r)
        out.update(ref_logp_chosen=ref_c, ref_logp_rejected=ref_r, reward_chosen=rc, reward_rejected=rr,
                   reward_margin=rc - rr, reward_accuracy=int(rc > rr))
    return out


def summarise(rows: Sequence[dict], bootstrap: int = 1000, seed: int = 0) -> tuple[dict, dict]:
    """(metrics, ci95): the mean of every METRIC_META key present in the rows, with a percentile bootstrap
    interval over items (numpy, seeded)."""
    metrics, ci = {}, {}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(rows), size=(bootstrap, len(rows))) if bootstrap > 0 and rows else None
    for name in METRIC_META:
        if not rows or name not in rows[0]:
            continue
        x = np.array([float(r[name]) for r in rows])
        metrics[name] = float(x.mean())
        if idx is not None:
            lo, hi = np.percentile(x[idx].mean(axis=1), [2.5, 97.5])
            ci[name] = [float(lo), float(hi)]
    return metrics, ci


# ------------------------------------------------------------------------------ model scoring
def answer_logps(model, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 4) -> list[float]:
    """Sum of log p(answer token | everything before it) for each (prompt ids, answer ids), in input order.
    Right-padded batches of similar length; the same positions TRL's DPO loss sums over."""
    import torch

    device = model_device(model)
    out = [0.0] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            batch = order[s:s + batch_size]
            width = max(len(pairs[i][0]) + len(pairs[i][1]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                seq = pairs[i][0] + pairs[i][1]
                ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, :len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            for row, i in enumerate(batch):
                p, a = len(pairs[i][0]), len(pairs[i][1])
                lp = torch.log_softmax(logits[row, p - 1:p + a - 1].float(), dim=-1)
                out[i] = float(lp.gather(-1, torch.tensor(pairs[i][1], device=lp.device)[:, None]).sum())
    return out


def reference_kind(model) -> str:
    """Which reference policy the suite can use for `model` (see the module docstring)."""
    if not (hasattr(model, "peft_config") and hasattr(model, "disable_adapter")):
        return "none"
    return "ref adapter" if "ref" in model.peft_config else "adapter disabled"


@contextmanager
def as_reference(model, kind: str):
    """`model` computing its reference policy inside the block."""
    if kind == "adapter disabled":
        with model.disable_adapter():
            yield
    elif kind == "ref adapter":
        active = model.active_adapter
        model.set_adapter("ref")
        try:
            yield
        finally:
            model.set_adapter(active)
    else:
        with nullcontext():
            yield


# ------------------------------------------------------------------------------------ the suite
def run_preference_suite(model, tokenizer, suite, cfg, run_dir: str | Path, progress: bool = True) -> dict:
    """Score every held-out pair of the suite, write samples/<suite>.jsonl, return the eval.json entry."""
    from harness.data.preference import load_preference_eval
    from harness.eval.generation import suite_data_config

    t0 = time.perf_counter()
    paths.check_name(suite.name, "preference suite name")
    data_cfg = suite_data_config(suite, cfg)
    items, stats = load_preference_eval(data_cfg, tokenizer, seed=cfg.train.seed, add_bos=cfg.model.add_bos,
                                        max_length=cfg.train.max_length, limit=suite.limit)
    if not items:
        raise EvalError(f"preference suite {suite.name}: data={suite.data} gave no held-out pairs")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    seqs = [(it["prompt_ids"], it["chosen_ids"]) for it in items] + [(it["prompt_ids"], it["rejected_ids"]) for it in items]
    was_training = model.training
    model.eval()
    try:
        policy = answer_logps(model, seqs, pad_id, suite.batch_size)
        kind = reference_kind(model)
        ref = None
        if kind != "none":
            with as_reference(model, kind):
                ref = answer_logps(model, seqs, pad_id, suite.batch_size)
    finally:
        model.train(was_training)
    n, beta = len(items), cfg.train.beta
    rows = []
    for i, it in enumerate(items):
        vals = pair_values(policy[i], policy[n + i], ref[i] if ref else None, ref[n + i] if ref else None, beta)
        rows.append({"id": it["id"], "prompt": tokenizer.decode(it["prompt_ids"]), "chosen": it["chosen"],
                     "rejected": it["rejected"], "chosen_tokens": len(it["chosen_ids"]),
                     "rejected_tokens": len(it["rejected_ids"]), **vals})
    metrics, ci95 = summarise(rows, cfg.eval.bootstrap_samples, cfg.eval.seed)
    rel = f"samples/{suite.name}.jsonl"
    atomic.write_jsonl(Path(run_dir) / rel, rows)
    hash_cfg = {**dataclasses.asdict(suite), "data_config": dataclasses.asdict(data_cfg), "seed": cfg.train.seed,
                "max_length": cfg.train.max_length, "add_bos": cfg.model.add_bos}
    if progress and kind == "none":
        print(f"[harness] {suite.name}: no reference policy for a plain model; log-prob metrics only", flush=True)
    return {"kind": "preference", "metrics": metrics, "ci95": ci95, "n": n, "limit": suite.limit,
            "beta": beta if ref else None, "reference": kind, "data": stats,
            "metric_meta": {k: METRIC_META[k] for k in metrics},
            "config_hash": config_hash(hash_cfg), "wall_time_s": round(time.perf_counter() - t0, 3), "samples": rel}


def preference_cost(cfg) -> dict[str, float]:
    """Rough forward tokens per suite, for the ETA: pairs (limit, else a guess of 200) x 2 answers x 2 models
    (policy and reference) x half of train.max_length."""
    return {s.name: (s.limit or 200) * 4 * cfg.train.max_length / 2 for s in cfg.eval.preference}


@register_suite_kind("preference", order=2, names=lambda cfg: [s.name for s in cfg.eval.preference],
                     cost=preference_cost)
def run_preference(ctx: SuiteContext) -> None:
    for suite in ctx.cfg.eval.preference:
        ctx.begin(suite.name)
        ctx.record(suite.name, run_preference_suite(ctx.model, ctx.tokenizer, suite, ctx.cfg, ctx.run_dir, ctx.progress))
