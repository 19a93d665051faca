"""Training throughput, memory and model FLOP utilisation per method: the harness trainer against a
plain PyTorch loop and TRL's SFTTrainer with its defaults, on the same model, data, length and batch.

    python -m benchmarks.run --only training [--quick]

Every (method, precision, implementation) runs in its own child process (peak RSS from the kernel,
never mixed). The data is the subset of the data config's rows long enough to fill max_length, so
all three implementations train on full batch × max_length blocks with no padding and tokens/s
compare like for like (padding efficiency is the packing benchmark's subject).

  harness  harness.pipeline.train_run() with train.log_every=1; step times and tokens from its metrics.jsonl
  plain    what a user writes: AutoModelForCausalLM, peft / bitsandbytes, AdamW, torch.autocast(bf16),
           grad-norm clipping (as the harness does), one optimizer step per batch, timed per step
  trl      trl.SFTTrainer + SFTConfig defaults (gradient checkpointing on, bf16 on, its own chat-template
           tokenisation of the text), changing only batch size, max_length, steps and, for the fp32
           column, bf16=False; timed per step by a callback

Throughput is the median over the measured steps (after warm-up) of tokens/step ÷ seconds/step.
Model FLOP per token (model_flops_per_token): c·N_body + c·head_share·N_head + 6·n_trainable (LoRA / QLoRA
only) + attention, with c = 6 for full fine-tuning (forward 2, input and weight gradients 2 + 2 per weight)
and 4 on a frozen base (forward 2, input gradients 2); N = the parameters that enter matmuls (matmul_params:
the input embedding is a lookup, so an untied one is left out; a tied one is counted once, as the LM head's
matmul); N_head = vocab × hidden; head_share = the share of positions whose logits are computed (the harness
projects only positions followed by a target; the plain loop and TRL every position); attention = the
score and value products QKᵀ and AV, 12 · layers · attention width · mean causal context (T+1)/2
(attention_flops_per_token; no weights, so the same for full and adapters).
MFU = model FLOP/s ÷ the peak matmul FLOP/s of the same precision measured in this run (matmul.py: the best
of every layout, square and at this model's shapes). An MFU above 1 is impossible and is reported as a
measurement error (mfu() returns no figure), never printed as a result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks import common

FULL_FLOP_PER_PARAM = 6
FROZEN_FLOP_PER_PARAM = 4


# ------------------------------------------------------------------------------ pure helpers
def model_flops_per_token(base_params: int, trainable_params: int, full: bool, *, head_params: int = 0,
                          head_share: float = 1.0, attention: float = 0.0) -> float:
    """Training FLOP per token: 6N for full fine-tuning; 4N + 6·trainable for adapters on a frozen base. The LM
    head's `head_params` (part of base_params) count only for the `head_share` of positions whose logits are
    computed; `attention` (attention_flops_per_token) is added as it is."""
    if not 0.0 <= head_share <= 1.0 or head_params > base_params:
        raise ValueError(f"head_share={head_share} must be in [0, 1] and head_params={head_params} <= base_params={base_params}")
    per = FULL_FLOP_PER_PARAM if full else FROZEN_FLOP_PER_PARAM
    adapters = 0 if full else FULL_FLOP_PER_PARAM * trainable_params
    return per * (base_params - head_params) + per * head_share * head_params + adapters + attention


def matmul_params(total_params: int, arch: dict) -> int:
    """Parameters that enter matmuls: an untied input embedding is a lookup (no FLOPs) and is left out; a tied
    one is the LM head's weight too and stays, counted once."""
    return total_params if arch["tied"] else total_params - arch["vocab"] * arch["hidden"]


def attention_flops_per_token(layers: int, attn_dim: int, seq_len: int, causal: bool = True) -> float:
    """Training FLOP per token of the attention products QKᵀ and AV (2·attn_dim per attended position each, forward;
    backward twice that): 12 · layers · attn_dim · context, context (T+1)/2 under a causal mask, T without."""
    context = (seq_len + 1) / 2 if causal else seq_len
    return 12.0 * layers * attn_dim * context


def mfu(achieved_flops: float | None, peak_flops: float | None) -> tuple[float | None, str | None]:
    """(model FLOP/s ÷ peak, None), or (None, why) when the ratio cannot be a utilisation: a figure above 1 means
    the peak or the FLOP count is wrong, and is a measurement error to fix, not a result."""
    if not achieved_flops or not peak_flops:
        return None, None
    value = achieved_flops / peak_flops
    if value > 1.0:
        return None, (f"measurement error: model FLOP/s {achieved_flops / 1e9:.3g} G is {value:.3f}x the measured peak "
                      f"{peak_flops / 1e9:.3g} G (the peak misses a faster layout/shape, or the FLOP count is too high)")
    return value, None


def row_flops(subset: dict, max_length: int, method: str, impl: str, trainable: int | None,
              tokens_per_s: float | None, peak: float | None) -> dict:
    """One row's model FLOP per token, model FLOP/s and MFU against `peak`, from write_long_rows' facts about the
    model and data (`subset`): the harness projects the LM head on target positions only (subset's target_share),
    the other implementations on every position."""
    arch = subset["arch"]
    fpt = model_flops_per_token(matmul_params(subset["base_params"], arch), trainable or 0, method == "full",
                                head_params=arch["vocab"] * arch["hidden"],
                                head_share=subset["target_share"] if impl == "harness" else 1.0,
                                attention=attention_flops_per_token(arch["layers"], arch["attn_dim"], max_length))
    achieved = fpt * tokens_per_s if tokens_per_s else None
    value, err = mfu(achieved, peak)
    return {"flops_per_token": fpt, "achieved": achieved, "mfu": value, "mfu_error": err}


def steps_from_metrics(rows: list[dict], warmup: int) -> tuple[list[float], list[int]]:
    """metrics.jsonl rows (one per optimizer step, log_every=1) -> (seconds, tokens) of each step after
    `warmup`. Step k's duration is time_s[k] - time_s[k-1]; the first step (trainer set-up) is never used."""
    logged = sorted((r for r in rows if "tokens_seen" in r and "time_s" in r), key=lambda r: r["step"])
    if len(logged) < warmup + 2:
        raise ValueError(f"metrics.jsonl has {len(logged)} step rows; need warm-up {warmup} + at least 2 "
                         "(is train.log_every=1?)")
    times, tokens = [], []
    for prev, cur in zip(logged, logged[1:]):
        if cur["step"] <= max(warmup, 1):
            continue
        times.append(cur["time_s"] - prev["time_s"])
        tokens.append(int(cur["tokens_seen"] - prev["tokens_seen"]))
    return times, tokens


def base_param_count(model_dir: str | Path) -> int:
    """Parameters stored in the model's safetensors (tied weights once), without loading it."""
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                n = 1
                for d in fh.get_slice(k).get_shape():
                    n *= d
                total += n
    if not total:
        raise FileNotFoundError(f"no safetensors weights in {model_dir}")
    return total


def aggregate_reps(results: list[dict]) -> dict:
    """Child results of one (method, precision, impl) over repetitions -> the row's figures: medians of the
    per-repetition medians, the per-repetition tokens/s kept for paired ratios, the largest peak RSS."""
    tps = [r.get("tokens_per_s") for r in results]
    return {
        "tokens_per_s": common.median(tps), "tokens_per_s_reps": tps,
        "tokens_per_s_mean": common.median(r.get("tokens_per_s_mean") for r in results),
        "step_s": common.median(r.get("step_s") for r in results), "reps": len(results),
        "steps": results[0].get("steps"), "tokens_per_step": results[0].get("tokens_per_step"),
        "trainable_params": results[0].get("trainable_params"),
        "peak_rss_mb": max((r.get("peak_rss_mb") or 0) for r in results) or None,
        "process_wall_s": common.median(r.get("process_wall_s") for r in results),
        "step_times": [r.get("step_times") for r in results],
        "final_train_loss": results[-1].get("final_train_loss"),
        "gradient_checkpointing": results[0].get("gradient_checkpointing"),
        "bf16_layout": layout_cell(results[0].get("bf16_layout")),
        "attention": attention_cell(results[0].get("train_attention")),
    }


def paired_ratios(a: list | None, b: list | None) -> list[float] | None:
    """Repetition i of one implementation over repetition i of another (run back to back): the spread of
    the ratio under the machine's noise."""
    if not a or not b:
        return None
    return [x / y for x, y in zip(a, b) if x and y]


def config_order(methods, precisions) -> list[tuple[str, str]]:
    """(method, precision) pairs in the order they are measured: LoRA first (the goals name it), then
    fp32 before bf16 for the others, so a run cut short by its time budget keeps the most telling rows."""
    rank = {"lora": 0, "full": 1, "qlora": 2}
    pairs = [(m, p) for m in methods for p in precisions]
    return sorted(pairs, key=lambda mp: (mp[0] != "lora", mp[1] != "fp32", rank.get(mp[0], 9)))


# ----------------------------------------------------------------------------------- data subset
def write_long_rows(model: str, data: str, max_length: int, need: int, out_path: str) -> dict:
    """Child: rows of `data` whose rendered prompt+answer fills max_length (and whose prompt leaves at
    least a quarter of it to the answer, so every row has loss tokens), as an alpaca JSON list at out_path.
    Fewer than `need` such rows are repeated in order up to `need`: the harness trainer reads the file one epoch
    at a time, and an epoch shorter than the steps asked for would end in a partial batch (20 rows at batch 8:
    steps of 8, 8 and 4 rows), so it would not be timed on the batches the other implementations get."""
    from harness import atomic, config, paths
    from harness import data as hdata
    from harness.model.load import load_tokenizer, local_dir

    cfg = config.compose([f"model={model}", f"data={data}", "tracker=none"])
    if cfg.data.format != "alpaca":
        raise ValueError(f"data={data}: the training benchmark needs an alpaca-format data config (format={cfg.data.format})")
    tok = load_tokenizer(cfg.model)
    raw = json.loads(paths.resolve_data_path(cfg.data.path).read_text(encoding="utf-8"))
    cfg.data.val_size = 0
    prepared = hdata.prepare(cfg.data, tok, max_length=10 ** 6, packing=False, add_bos=cfg.model.add_bos)
    if len(prepared.train) != len(raw):
        raise ValueError(f"data={data}: {len(raw)} rows but {len(prepared.train)} prepared (malformed rows?); "
                         "cannot map rows to token lengths")
    keep, target_shares = [], []
    for row, ex in zip(raw, prepared.train):
        prompt_len = next((i for i, x in enumerate(ex["labels"]) if x != -100), len(ex["labels"]))
        if len(ex["input_ids"]) >= max_length + 8 and prompt_len <= max_length - max(8, max_length // 4):
            keep.append(row)
            # positions followed by a target once truncated to max_length: where the harness computes logits
            target_shares.append(sum(1 for x in ex["labels"][1:max_length] if x != -100) / max_length)
    if not keep:
        raise ValueError(f"data={data}: no row is long enough to fill max_length={max_length}; lower --max-length")
    written = [keep[i % len(keep)] for i in range(max(need, len(keep)))]
    atomic.write_json(out_path, written)
    return {"rows": len(keep), "of": len(raw), "enough": len(keep) >= need, "written": len(written), "path": out_path,
            "base_params": base_param_count(local_dir(cfg.model)), "arch": common.model_arch(model),
            "target_share": sum(target_shares) / len(target_shares)}


# ------------------------------------------------------------------------------------- children
def _overrides(model: str, method: str, precision: str, data: str, data_path: str, max_length: int,
               batch_size: int, total_steps: int, output_dir: str, packing: bool, device: str = "cpu") -> list[str]:
    ov = [f"model={model}", f"method={method}", f"data={data}", "data.val_size=0", "tracker=none", "eval=none",
          f"train.precision={precision}", f"train.max_steps={total_steps}", f"train.batch_size={batch_size}",
          f"train.max_length={max_length}", "train.log_every=1", "train.save_model=false", f"train.device={device}",
          f"train.packing={str(packing).lower()}", f"output_dir={output_dir}"]
    if data_path:
        ov.insert(3, f"data.path={data_path}")
    return ov


def child_harness(model: str, method: str, precision: str, data: str, data_path: str, max_length: int,
                  batch_size: int, warmup: int, steps: int, workdir: str, packing: bool = False,
                  device: str = "cpu") -> dict:
    """Child: one harness training run; step times and tokens come from its own metrics.jsonl."""
    from harness import config
    from harness.pipeline import train_run
    from harness.run.record import read_metrics, read_summary

    ov = _overrides(model, method, precision, data, data_path, max_length, batch_size, warmup + steps,
                    str(Path(workdir) / "runs"), packing, device)
    cfg = config.compose(ov)
    status, run_dir = train_run(cfg, ov)
    summary = read_summary(run_dir) or {}
    if status != "completed":
        raise RuntimeError(f"harness run {run_dir} ended {status}: {summary.get('reason')}")
    times, tokens = steps_from_metrics(read_metrics(run_dir), warmup)
    manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
    return {**common.step_throughput(times, tokens), "step_times": times, "step_tokens": tokens,
            "trainable_params": summary.get("trainable_params"), "summary_tokens_per_s": summary.get("tokens_per_s"),
            "summary_peak_memory_mb": summary.get("peak_memory_mb"), "train_time_s": summary.get("train_time_s"),
            "wall_time_s": summary.get("wall_time_s"), "precision": summary.get("precision"),
            "final_train_loss": summary.get("final_train_loss"), "data_stats": {k: manifest.get("data", {}).get(k) for k in
                                                                              ("train_rows", "truncated_rows", "packed_blocks", "stream_tokens")},
            "bf16_layout": manifest.get("bf16_layout"), "train_attention": manifest.get("train_attention"),
            "run_dir": str(run_dir)}


def layout_cell(rec: dict | None) -> str | None:
    """Pure: the table's word for a harness bf16 run's tn-layout decision (manifest.json bf16_layout)."""
    if not rec:
        return None
    speed = f" {rec['speedup']:.2f}x" if rec.get("speedup") else ""
    return f"{'tn' if rec.get('apply') else 'stock'} ({rec.get('source')}{speed})"


def attention_cell(rec: dict | None) -> str | None:
    """Pure: the table's word for a harness bf16 run's attention kernel (manifest.json train_attention)."""
    if not rec:
        return None
    kernel = "block-causal" if rec.get("implementation") == "harness_blocked" else str(rec.get("implementation"))
    timed = rec.get("sdpa_ms") and rec.get("blocked_ms")
    speed = f" {rec['sdpa_ms'] / rec['blocked_ms']:.2f}x" if timed else ""
    return f"{kernel} ({rec.get('source')}{speed})"


def _load_plain(model: str, method: str, precision: str, data: str, device: str = "cpu"):
    """What a user writes by hand: the model from its (converted) directory, bitsandbytes for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from harness import config
    from harness.model.load import local_dir

    cfg = config.compose([f"model={model}", f"method={method}", f"data={data}", "tracker=none"])
    path = str(local_dir(cfg.model))
    compute = torch.bfloat16 if precision == "bf16" else torch.float32
    kwargs: dict = {"dtype": torch.float32}
    if cfg.method.quant in ("nf4", "fp4"):
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=cfg.method.quant, bnb_4bit_use_double_quant=cfg.method.double_quant,
            bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=compute)
        kwargs["device_map"] = {"": device}
    elif cfg.method.quant != "none":
        raise ValueError(f"method={method}: the benchmark baselines cover full, lora and 4-bit qlora only")
    net = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if "quantization_config" not in kwargs:
        net = net.to(device)
    lora = None
    if cfg.method.peft == "lora":
        from peft import LoraConfig

        lora = LoraConfig(r=cfg.method.r, lora_alpha=cfg.method.alpha, lora_dropout=cfg.method.dropout,
                          target_modules=config.target_modules(cfg), bias="none", task_type="CAUSAL_LM")
    return cfg, net, lora


OPTIMIZER_KINDS = {"for-loop (adamw_torch)": {"foreach": False}, "foreach": {"foreach": True},
                   "fused (adamw_torch_fused)": {"fused": True}}


def child_optimizer(model: str, reps: int = 5) -> dict:
    """Child: one AdamW step over the model's full weights (what full fine-tuning updates) with each kernel of
    torch.optim.AdamW: the first step (state allocation included) and the median of `reps` more, and the largest
    difference from the for-loop's weights after them (the fused kernel rounds differently, by an ulp)."""
    import torch

    _, net, _ = _load_plain(model, "full", "fp32", "alpaca-demo")
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in net.parameters()]
    start = [p.detach().clone() for p in net.parameters()]
    out, after = {}, {}
    for kind, kw in OPTIMIZER_KINDS.items():
        params = [torch.nn.Parameter(w.clone()) for w in start]
        for p, g in zip(params, grads):
            p.grad = g
        opt = torch.optim.AdamW(params, lr=2e-5, **kw)
        times = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t0)
        out[kind] = {"first_step_s": times[0], "step_s": common.median(times[1:])}
        after[kind] = params
    ref = after["for-loop (adamw_torch)"]
    for kind in OPTIMIZER_KINDS:
        out[kind]["max_abs_diff"] = max(float((a - b).detach().abs().max()) for a, b in zip(after[kind], ref))
    return {"params": sum(w.numel() for w in start), "threads": torch.get_num_threads(), "kinds": out}


def optimizer_ab(model: str, data: str, steps: int = 20, reps: int = 3) -> list[dict]:
    """In this process: full fine-tunes (train=quick, `steps` steps, no evaluation) with train.optimizer
    adamw_torch and adamw_torch_fused, alternating; each run's train_time_s and losses."""
    import tempfile

    from harness import config
    from harness.pipeline import train_run
    from harness.run.record import read_summary

    rows = []
    for rep in range(reps):
        for optim in ("adamw_torch", "adamw_torch_fused"):
            with tempfile.TemporaryDirectory() as out:
                ov = [f"model={model}", f"data={data}", "method=full", "tracker=none", "eval=none", "train=quick",
                      f"train.max_steps={steps}", f"train.optimizer={optim}", "train.save_model=false",
                      f"output_dir={out}", f"run_id={optim}-{rep}"]
                status, run_dir = train_run(config.compose(ov), ov)
                s = read_summary(run_dir) or {}
                rows.append({"optimizer": optim, "rep": rep, "status": status, "train_time_s": s.get("train_time_s"),
                             "final_train_loss": s.get("final_train_loss"), "best_val_loss": s.get("best_val_loss")})
    return rows


def step_ab(method: str = "lora", batch: int = 2, length: int = 128, threads: int = 1, reps: int = 4,
            model: str = "smollm2-135m", precision: str = "bf16") -> dict:
    """In this process: a hand-written step (the plain loop's model, random tokens of batch x length; bf16 autocast
    or fp32) with torch's sdpa, with the block-causal kernel (harness/model/attention.py; bf16 only, as the trainer)
    and, for LoRA, with 15-bit dropout masks (harness/train/dropout.py) on top; one model per variant, steps
    interleaved after a warm-up. Median ms per step and each variant's speed-up over the first: what
    harness/train/attention.py and dropout.py cite.

        PYTHONPATH=. python -c "from benchmarks import training as t; print(t.step_ab('lora', 2, 128, 1))"
    """
    import statistics

    import torch

    from harness.model.attention import register
    from harness.train.dropout import replace_lora_dropout

    torch.set_num_threads(threads)
    bf16 = precision == "bf16"
    variants = {"sdpa": ("sdpa", False)}
    if bf16:
        variants["blocked"] = (register(), False)
    if method != "full":
        variants["blocked+dropout" if bf16 else "sdpa+dropout"] = (register() if bf16 else "sdpa", True)

    def build(attn: str, fast_dropout: bool):
        torch.manual_seed(0)
        _, net, lora = _load_plain(model, method, precision, "alpaca-demo")
        if lora is not None:
            from peft import get_peft_model

            net = get_peft_model(net, lora)
        (net.get_base_model() if lora is not None else net).set_attn_implementation(attn)
        if fast_dropout:
            replace_lora_dropout(net)
        params = [p for p in net.parameters() if p.requires_grad]
        return net.train(), params, torch.optim.AdamW(params, lr=1e-5, fused=True)

    ids = torch.randint(0, 49_000, (batch, length), generator=torch.Generator().manual_seed(0))

    def step(net, params, opt) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = net(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    built = {name: build(*v) for name, v in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in built}
    for name in built:
        step(*built[name])  # warm-up
    for _ in range(reps):
        for name in built:
            times[name].append(step(*built[name]))
    ms = {name: statistics.median(v) * 1000 for name, v in times.items()}
    return {"method": method, "precision": precision, "batch": batch, "length": length, "threads": threads, "reps": reps,
            "median_ms": {k: round(v, 1) for k, v in ms.items()},
            "speedup_vs_sdpa": {k: round(ms["sdpa"] / v, 3) for k, v in ms.items()},
            "all_ms": {k: [round(x * 1000, 1) for x in v] for k, v in times.items()}}


def lora_inputs_ab(batch: int = 2, length: int = 128, threads: int = 2, reps: int = 10,
                   model: str = "smollm2-135m") -> dict:
    """In this process: a hand-written bf16 LoRA step on the trainer's set-up (frozen casts kept, block-causal
    attention, FastDropout, freed memory kept; random tokens of batch x length) with the LoRA layers keeping bf16
    inputs under autocast (harness/train/dropout.py, what the trainer does) and with peft's own fp32 input casts;
    steps interleaved after a warm-up, each step seeded alike on both sides. Median ms per step, the speed-up, and
    whether every step's loss and adapter gradients were bit-identical: what harness/train/dropout.py cites.

        PYTHONPATH=. python -c "from benchmarks import training as t; print(t.lora_inputs_ab(2, 128, 2))"
    """
    import statistics

    import torch
    from peft import get_peft_model

    from harness.model.attention import register
    from harness.run.memory import keep_freed_memory
    from harness.train import dropout
    from harness.train.frozen_cast import keep_casts

    torch.set_num_threads(threads)
    keep_freed_memory()

    def build(kept: bool):
        torch.manual_seed(0)
        _, net, lora = _load_plain(model, "lora", "bf16", "alpaca-demo")
        net = get_peft_model(net, lora)
        net.get_base_model().set_attn_implementation(register())
        keep_casts(net)
        dropout.replace_lora_dropout(net)
        if not kept:
            dropout.restore_input_casts(net)
        params = [p for p in net.parameters() if p.requires_grad]
        return net.train(), params, torch.optim.AdamW(params, lr=1e-4, fused=True)

    ids = torch.randint(0, 49_000, (batch, length), generator=torch.Generator().manual_seed(0))

    def step(net, params, opt, seed: int):
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = net(input_ids=ids, labels=ids).loss
        loss.backward()
        dt = time.perf_counter() - t0
        grads = [p.grad.clone() for p in params]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return dt, loss.item(), grads

    sides = {"bf16 inputs kept": build(True), "peft's fp32 input casts": build(False)}
    for name in sides:
        step(*sides[name], 10_000)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in sides}
    identical = True
    for rep in range(reps):
        out = {name: step(*sides[name], rep) for name in sides}
        (_, la, ga), (_, lb, gb) = out.values()
        identical &= la == lb and all(torch.equal(a, b) for a, b in zip(ga, gb))
        for name in sides:
            times[name].append(out[name][0])
    ms = {name: statistics.median(v) * 1000 for name, v in times.items()}
    kept, own = ms.values()
    return {"batch": batch, "length": length, "threads": threads, "reps": reps,
            "median_forward_backward_ms": {k: round(v, 1) for k, v in ms.items()}, "speedup": round(own / kept, 3),
            "losses_and_gradients_identical": identical}


def child_plain(model: str, method: str, precision: str, data: str, data_path: str, max_length: int,
                batch_size: int, warmup: int, steps: int, lr: float = 2e-4, seed: int = 0, device: str = "cpu") -> dict:
    """Child: a minimal PyTorch training loop on the same token rows the harness trains on."""
    import torch

    from harness import data as hdata
    from harness.model.load import load_tokenizer

    torch.manual_seed(seed)
    cfg, net, lora = _load_plain(model, method, precision, data, device)
    if cfg.method.quant != "none":
        from peft import prepare_model_for_kbit_training

        net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=False)
    if lora is not None:
        from peft import get_peft_model

        net = get_peft_model(net, lora)
    tok = load_tokenizer(cfg.model)
    cfg.data.path, cfg.data.val_size = data_path or cfg.data.path, 0
    rows = hdata.prepare(cfg.data, tok, max_length=max_length, packing=False, add_bos=cfg.model.add_bos).train
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, fused=True)  # the kernel the harness and TRL use by default
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    use_bf16 = precision == "bf16"
    net.train()
    times, tokens, losses = [], [], []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        idx = [order[(step * batch_size + i) % len(order)] for i in range(batch_size)]
        width = max(len(rows[i]["input_ids"]) for i in idx)
        ids = torch.full((batch_size, width), pad, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for j, i in enumerate(idx):
            n = len(rows[i]["input_ids"])
            ids[j, :n] = torch.tensor(rows[i]["input_ids"])
            labels[j, :n] = torch.tensor(rows[i]["labels"])
            mask[j, :n] = 1
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = net(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if device.startswith("cuda"):
            torch.cuda.synchronize()  # the optimizer step is queued, not done, when .item() returns
        dt = time.perf_counter() - t0
        if step >= warmup:
            times.append(dt)
            tokens.append(int(mask.sum()))
    return {**common.step_throughput(times, tokens), "step_times": times, "step_tokens": tokens,
            "trainable_params": sum(p.numel() for p in params), "final_train_loss": losses[-1]}


def alpaca_messages(row: dict) -> list[dict]:
    """An alpaca row as the chat a TRL user would build: instruction (+ input) -> output."""
    user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


def child_trl(model: str, method: str, precision: str, data: str, data_path: str, max_length: int,
              batch_size: int, warmup: int, steps: int, workdir: str) -> dict:
    """Child: TRL's SFTTrainer with its default SFTConfig on the text (its own tokenisation)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from harness import paths
    from harness.model.load import load_tokenizer

    cfg, net, lora = _load_plain(model, method, precision, data)
    tok = load_tokenizer(cfg.model)
    path = paths.resolve_data_path(data_path or cfg.data.path)
    ds = Dataset.from_list([{"messages": alpaca_messages(r)} for r in json.loads(path.read_text(encoding="utf-8"))])

    marks: list[tuple[float, int]] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    args = SFTConfig(
        output_dir=str(Path(workdir) / "trl-out"), per_device_train_batch_size=batch_size, max_length=max_length,
        max_steps=warmup + steps, bf16=precision == "bf16", use_cpu=True, report_to="none", disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",  # a counter for this measurement, not a training setting
    )
    trainer = SFTTrainer(model=net, args=args, train_dataset=ds, processing_class=tok, peft_config=lora,
                         callbacks=[StepClock()])
    trainer.train()
    times = [b[0] - a[0] for a, b in zip(marks, marks[1:])][max(warmup, 1) - 1:]
    tokens = [b[1] - a[1] for a, b in zip(marks, marks[1:])][max(warmup, 1) - 1:]
    trainable, _ = (trainer.model.get_nb_trainable_parameters() if hasattr(trainer.model, "get_nb_trainable_parameters")
                    else (sum(p.numel() for p in trainer.model.parameters() if p.requires_grad), 0))
    return {**common.step_throughput(times, tokens), "step_times": times, "step_tokens": tokens,
            "trainable_params": int(trainable), "gradient_checkpointing": bool(args.gradient_checkpointing),
            "learning_rate": args.learning_rate, "bf16": bool(args.bf16)}


# ------------------------------------------------------------------------------------- driver
def _peaks(matmul_section: dict | None) -> dict:
    rows = (matmul_section or {}).get("rows") or []
    return {r["dtype"]: r["peak_gflops"] * 1e9 for r in rows if r.get("peak_gflops")}


def _peak_note(matmul_section: dict | None, kind: dict) -> str:
    rows = {r["dtype"]: r for r in (matmul_section or {}).get("rows") or [] if r.get("peak_gflops")}
    parts = [f"{d} {r['peak_gflops']:.3g} GFLOP/s ({r.get('peak_at', r.get('best_layout'))})" for d, r in rows.items()]
    bf16 = ("native bf16 peak" if kind["native_bf16"] else
            "bf16 is EMULATED on this CPU, so its bf16 peak is the emulated one, not a native bf16 peak")
    return (f"MFU peaks (the matmul section's best, at shape.product.layout): {'; '.join(parts) or 'none measured'}. "
            f"CPU: {kind['cpu']}, {kind['kind']}: {bf16}.")


def run(opts: common.Options, matmul_section: dict | None = None) -> dict:
    work = opts.workdir / "training"
    train_deadline = time.time() + 60 * opts.train_budget_min if opts.train_budget_min else None
    need = (opts.warmup_steps + opts.steps) * opts.batch_size
    notes = []
    try:
        subset = common.run_child("training", "write_long_rows",
                                  {"model": opts.model, "data": opts.data, "max_length": opts.max_length, "need": need,
                                   "out_path": str(work / "long_rows.json")}, work, "subset", opts.timeout())
    except common.ChildError as exc:
        return common.section("training", "Training throughput per method", notes=[f"not measured: {exc}"])
    notes.append(f"data: {subset['rows']} of {subset['of']} {opts.data} rows fill max_length={opts.max_length} "
                 f"(needed {need} for {opts.warmup_steps}+{opts.steps} steps of batch {opts.batch_size}"
                 + ("" if subset["enough"] else "; fewer, so rows repeat") + ")")
    try:
        optim = common.run_child("training", "child_optimizer", {"model": opts.model}, work, "optimizer", opts.timeout())
        notes.append(f"AdamW step over {optim['params'] / 1e6:.0f}M full weights, {optim['threads']} threads: " + "; ".join(
            f"{k} {v['step_s']:.3f} s (first {v['first_step_s']:.2f} s, max diff {v['max_abs_diff']:.1e})"
            for k, v in optim["kinds"].items()))
    except common.ChildError as exc:
        notes.append(f"AdamW kernels not measured: {exc}")
    base_params = subset["base_params"]
    arch, target_share = subset["arch"], subset["target_share"]
    n_matmul = matmul_params(base_params, arch)
    head_params = arch["vocab"] * arch["hidden"]
    attention = attention_flops_per_token(arch["layers"], arch["attn_dim"], opts.max_length)
    peaks = _peaks(matmul_section)
    kind = common.cpu_kind()
    rows = []
    for method, precision in config_order(opts.methods, opts.precisions):
        reps = opts.bf16_reps if precision == "bf16" and opts.bf16_reps else opts.train_reps
        runs: dict[str, list[dict]] = {impl: [] for impl in opts.impls}
        errors: dict[str, str] = {}
        loads: dict[str, list[float]] = {impl: [] for impl in opts.impls}
        # repetitions interleave the implementations (h, p, t, h, p, t, ...), so a slow spell of a shared
        # machine lands on all of them rather than on one
        for rep in range(reps):
            for impl in opts.impls:
                if impl in errors:
                    continue
                if opts.out_of_time() or (train_deadline is not None and time.time() > train_deadline):
                    if not runs[impl]:
                        errors[impl] = "not measured: the time budget (--budget-min / --train-budget-min) was spent"
                    continue
                tag = f"{impl}-{method}-{precision}-r{rep}"
                kw = {"model": opts.model, "method": method, "precision": precision, "data": opts.data,
                      "data_path": subset["path"], "max_length": opts.max_length, "batch_size": opts.batch_size,
                      "warmup": opts.warmup_steps,
                      "steps": opts.bf16_steps if precision == "bf16" and opts.bf16_steps else opts.steps}
                if impl in ("harness", "trl"):
                    kw["workdir"] = str(work / tag)
                loads[impl].append(common.load_now())
                try:
                    runs[impl].append(common.run_child("training", f"child_{impl}", kw, work, tag, opts.timeout()))
                except common.ChildError as exc:
                    errors[impl] = str(exc)
                    notes.append(f"not measured: {tag}: {exc}")
        for impl in opts.impls:
            row = {"method": method, "precision": precision, "impl": impl, "load_1m": common.median(loads[impl])}
            done = runs[impl]
            if not done:
                row.update(tokens_per_s=None, error=errors.get(impl, "not measured"))
                rows.append(row)
                continue
            row.update(aggregate_reps(done))
            f = row_flops(subset, opts.max_length, method, impl, row["trainable_params"], row.get("tokens_per_s"),
                          peaks.get(precision))
            row["mflop_per_token"] = f["flops_per_token"] / 1e6
            row["model_gflops"] = f["achieved"] / 1e9 if f["achieved"] else None
            row["peak_gflops"] = peaks[precision] / 1e9 if peaks.get(precision) else None
            row["mfu"], row["mfu_error"] = f["mfu"], f["mfu_error"]
            if row["mfu_error"]:
                notes.append(f"{method} {precision} {impl}: {row['mfu_error']}")
            rows.append(row)
    by = {(r["method"], r["precision"], r["impl"]): r for r in rows}
    goals = []
    for method in opts.methods:
        for precision in opts.precisions:
            h = by.get((method, precision, "harness"), {})
            for other in ("plain", "trl"):
                o = by.get((method, precision, other))
                if o is not None:
                    h[f"vs_{other}"] = common.ratio(h.get("tokens_per_s"), o.get("tokens_per_s"))
                    h[f"vs_{other}_per_rep"] = paired_ratios(h.get("tokens_per_s_reps"), o.get("tokens_per_s_reps"))
            if "plain" in opts.impls and "harness" in opts.impls:
                v = h.get("vs_plain")
                goals.append(common.goal(f"harness ≥ plain loop, {method} {precision}", v, "ratio ≥ 1.0",
                                         None if v is None else v >= 1.0, "" if v is not None else "not measured"))
    if "trl" in opts.impls and "harness" in opts.impls and "bf16" in opts.precisions:
        for method in opts.methods:
            v = by.get((method, "bf16", "harness"), {}).get("vs_trl")
            goals.append(common.goal(f"harness defaults faster than TRL defaults, {method} (bf16, TRL gradient checkpointing on)",
                                     v, "ratio > 1.0", None if v is None else v > 1.0, "" if v is not None else "not measured"))
    measured_mfu = [r for r in rows if r.get("model_gflops") and peaks.get(r["precision"])]
    if measured_mfu:
        bad = [f"{r['method']} {r['precision']} {r['impl']}" for r in measured_mfu if r.get("mfu_error")]
        goals.append(common.goal("MFU ≤ 1 in every row (peak and FLOP count consistent)", len(bad), "0 rows above 1",
                                 not bad, ("measurement error in: " + ", ".join(bad)) if bad else ""))
    if "bf16" in opts.precisions:
        for method in [m for m in ("lora", "full") if m in opts.methods]:
            r = by.get((method, "bf16", "harness"), {})
            m, err = r.get("mfu"), r.get("mfu_error")
            text = f"bf16 {method} training ≥ 40% of the measured native bf16 matmul peak"
            if err:
                goals.append(common.goal(text, None, "MFU ≥ 0.40", None, err))
            elif m is None:
                goals.append(common.goal(text, None, "MFU ≥ 0.40", None, "not measured (matmul peak or run missing)"))
            elif not kind["native_bf16"]:
                goals.append(common.goal(text, m, "MFU ≥ 0.40", None,
                                         f"this CPU is {kind['kind']}: the value is MFU against its emulated bf16 peak; "
                                         "the target needs an AMX / AVX512-BF16 machine"))
            else:
                goals.append(common.goal(text, m, "MFU ≥ 0.40", m >= 0.40))
    notes.append(_peak_note(matmul_section, kind))
    notes.append(f"FLOP/token: N = {n_matmul:,} parameters in matmuls (of {base_params:,}; "
                 f"{'tied' if arch['tied'] else 'untied'} embedding), LM head {head_params:,}; full 6N, LoRA/QLoRA "
                 f"4N + 6·trainable, the head's share only on positions whose logits are computed (harness: targets, "
                 f"{target_share:.3f} of positions on this subset, mean over its rows; plain and TRL: all); attention "
                 f"12·{arch['layers']}·{arch['attn_dim']}·(T+1)/2 = {attention / 1e6:.1f} MFLOP at T={opts.max_length}. "
                 "MFU divides by the bf16/fp32 matmul peak measured in this run; MFU > 1 is reported as a measurement error.")
    return common.section(
        "training", "Training throughput, memory and MFU per method (median tokens/s over measured steps)", rows,
        columns=["method", "precision", "impl", "reps", "tokens_per_s", "step_s", "vs_plain", "vs_plain_per_rep",
                 "vs_trl", "peak_rss_mb", "trainable_params", "mflop_per_token", "model_gflops", "peak_gflops", "mfu",
                 "bf16_layout", "attention", "load_1m"],
        goals=goals, notes=notes,
        params={"model": opts.model, "data": opts.data, "max_length": opts.max_length, "batch_size": opts.batch_size,
                "warmup_steps": opts.warmup_steps, "steps": opts.steps, "bf16_steps": opts.bf16_steps or opts.steps,
                "reps": opts.train_reps, "bf16_reps": opts.bf16_reps or opts.train_reps,
                "base_params": base_params, "cpu_kind": kind["kind"], "native_bf16": kind["native_bf16"]})
