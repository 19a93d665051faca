"""Packing: useful (non-padding) tokens/s of the harness trainer with and without train.packing.

    python -m benchmarks.run --only packing [--quick]

Both runs use the whole data config (real length mix, so unpacked batches carry padding), the same
method (lora), the harness's default precision (auto; --packing-precision to change) and the same batch × max_length, each in its
own child process, at --packing-max-length (default 512; at 128 most alpaca-demo rows fill the window and
there is no padding to remove). Tokens are the trainer's own non-padding count (metrics.jsonl tokens_seen).
Packed blocks join examples (EOS between them) with no cross-example attention mask, the common
trade-off; tokens/s says nothing about quality.
"""

from __future__ import annotations

from benchmarks import common


def run(opts: common.Options) -> dict:
    work = opts.workdir / "packing"
    rows, notes = [], []
    for packing in (False, True):
        tag = f"packing-{str(packing).lower()}"
        kw = {"model": opts.model, "method": "lora", "precision": opts.packing_precision, "data": opts.data, "data_path": "",
              "max_length": opts.packing_max_length, "batch_size": opts.batch_size, "warmup": opts.warmup_steps,
              "steps": opts.steps, "workdir": str(work / tag), "packing": packing}
        row = {"packing": packing, "load_1m": common.load_now()}
        if opts.out_of_time():
            row.update(tokens_per_s=None, error="not measured: the run's time budget (--budget-min) was spent")
            rows.append(row)
            continue
        try:
            r = common.run_child("training", "child_harness", kw, work, tag, opts.timeout())
            row.update({k: r.get(k) for k in ("tokens_per_s", "step_s", "tokens_per_step", "peak_rss_mb", "precision",
                                              "train_time_s")})
            row["padding_share"] = 1 - (r["tokens_per_step"] or 0) / (opts.batch_size * opts.packing_max_length)
            row["train_rows_or_blocks"] = (r.get("data_stats") or {}).get("train_rows")
        except common.ChildError as exc:
            row.update(tokens_per_s=None, error=str(exc))
            notes.append(f"not measured: {tag}: {exc}")
        rows.append(row)
    on = next((r for r in rows if r["packing"]), {})
    off = next((r for r in rows if not r["packing"]), {})
    speedup = common.ratio(on.get("tokens_per_s"), off.get("tokens_per_s"))
    for r in rows:
        r["vs_unpacked"] = common.ratio(r.get("tokens_per_s"), off.get("tokens_per_s"))
    goals = [common.goal("packing raises useful tokens/s", speedup, "ratio > 1.0",
                         None if speedup is None else speedup > 1.0, "" if speedup is not None else "not measured")]
    notes.append("padding_share = 1 - median non-padding tokens per step / (batch × max_length); an unpacked batch "
                 "is padded to its longest row, so its real compute is between the two.")
    return common.section("packing", "Packing: useful tokens/s with and without train.packing", rows,
                          columns=["packing", "tokens_per_s", "vs_unpacked", "tokens_per_step", "padding_share", "step_s",
                                   "peak_rss_mb", "precision", "load_1m"],
                          goals=goals, notes=notes,
                          params={"model": opts.model, "data": opts.data, "method": "lora", "precision": opts.packing_precision,
                                  "max_length": opts.packing_max_length, "batch_size": opts.batch_size})
