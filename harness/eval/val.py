"""The `val` suite: loss and perplexity on the run's own validation split (harness.data.prepare), the number
the trainer records as val_loss (one definition for both: harness/model/scoring.py).

It scores in fp32 in both eval modes (a few rows: nothing to gain from bf16) and says so in its entry (`mode`,
`precision`). Until 2026-12-04 it scored the model as it was, so in fast mode a 4-bit model ran bitsandbytes' bf16
kernel there (QLoRA quickstart run, Zen 5: 1.8655 against 1.8643) while a full-precision one ran fp32, unrecorded.
"""

from __future__ import annotations

import dataclasses
import time

from harness.config import RunConfig
from harness.eval.metrics import declare_metric
from harness.eval.registry import SuiteContext, config_hash, register_suite_kind, say

# Mean next-token loss on the validation split and its exp (harness.model.scoring.score_rows): one number per run, no samples.
for _metric in ("loss", "perplexity"):
    declare_metric(_metric, higher_is_better=False, scale="raw")


# Right after training, the trainer's evaluation at its last step has scored these rows of this very model: the
# suite takes that number (harness/model/scoring.py score_rows recall) instead of a second forward. Tests turn it off
# to check that a forward gives the same number.
RECALL_TRAINER_EVAL = True


# ------------------------------------------------------------------------------------ suites
def val_suite(model, tokenizer, cfg: RunConfig, progress: bool = True) -> dict | None:
    """Loss/perplexity on the run's own validation split (harness.data.prepare), or None with a note."""
    from harness import data
    from harness.data.cache import prepare
    from harness.model.scoring import eval_rows, score_rows

    t0 = time.time()
    try:
        prepared = prepare(cfg.data, tokenizer, max_length=cfg.train.max_length,  # split by data.split_seed
                           packing=False, add_bos=cfg.model.add_bos, use_cache=cfg.data.cache)
    except data.DataError as exc:  # e.g. an eval-only data config: say so, run the other suites
        say(True, f"val suite skipped: data={cfg.data.name} gives no validation split: {exc}")
        return None
    rows = eval_rows(prepared.val, cfg.train.eval_batches, cfg.train.batch_size)  # the trainer's rows
    if not rows:
        say(True, f"val suite skipped: data={cfg.data.name} has no validation rows (data.val_size={cfg.data.val_size})")
        return None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    res = score_rows(model, rows, batch_size=cfg.train.batch_size, pad_id=pad_id, progress=progress,
                     recall=RECALL_TRAINER_EVAL)
    wall = time.time() - t0
    # no train.seed: the rows depend on data.split_seed (in cfg.data), so every seed of a sweep is comparable
    hash_cfg = {"data": dataclasses.asdict(cfg.data), "max_length": cfg.train.max_length, "rows": len(rows)}
    entry = {"kind": "val", "metrics": {"loss": res["loss"], "perplexity": res["perplexity"]}, "n": len(rows),
             "tokens": res["tokens"], "config_hash": config_hash(hash_cfg), "wall_time_s": wall,
             "tokens_per_s": res["tokens"] / wall if wall > 0 and not res.get("recalled") else None}
    if res.get("recalled"):  # right after training: the trainer's final evaluation scored these rows of this model
        entry["recalled"] = "the trainer's evaluation at its last step: same rows, same unchanged model (scoring.py)"
    return entry


def val_items(cfg: RunConfig, name: str, entry: dict) -> tuple[list, list[str]]:
    """The validation split's rows (all of them: train.eval_batches caps how many are scored), as
    (their row numbers in data.path, their texts), for the contamination check."""
    from harness.data.prepare import read_normalised
    from harness.eval.contamination import texts_of_rows

    rows = read_normalised(cfg.data)  # split by data.split_seed, like the scored rows
    held_out = [(n, r) for i, (n, r) in enumerate(rows.good) if i in rows.val_idx]
    return [n for n, _ in held_out], texts_of_rows([r for _, r in held_out])


def val_cost(cfg: RunConfig) -> dict[str, float]:
    """Rough forward tokens, for the ETA: the rows scored (train.eval_batches x batch_size, else data.val_size,
    a share of data.max_rows or of a guessed 1000) x half of train.max_length."""
    t, d = cfg.train, cfg.data
    rows = t.eval_batches * t.batch_size if t.eval_batches > 0 else (
        d.val_size if d.val_size >= 1 else d.val_size * (d.max_rows or 1000))
    return {"val": rows * t.max_length / 2}


@register_suite_kind("val", order=0, names=lambda cfg: ["val"] if cfg.eval.val_loss else [], items=val_items,
                     cost=val_cost)
def run_val(ctx: SuiteContext) -> None:
    if not ctx.cfg.eval.val_loss:  # eval.val_loss=false: the suite is off (names() already leaves it out)
        return
    from harness.eval.precision import EvalPrecision, exact_model_of

    ctx.begin("val")
    fp32 = EvalPrecision("exact", "float32", "the val suite scores in fp32 in every eval.mode")
    # a 4-bit model in fast mode: its copy multiplying in fp32 (precision.calibration_reference); otherwise the model
    # in fp32 (run_suites holds a 4-bit model's layers in fp32 itself whenever the mode's dtype is fp32: exact_4bit)
    entry = val_suite(exact_model_of(ctx.model, ctx.exact_model), ctx.tokenizer, ctx.cfg, ctx.progress)
    if entry is not None:
        entry["mode"], entry["precision"] = fp32.mode, fp32.record()
        ctx.record("val", entry)
