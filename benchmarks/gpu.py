"""The evaluation and training measurements on a CUDA GPU, in one process, for the rows "on GPUs" of
benchmarks/results (docs/benchmarks.md, section GPU):

    python -m benchmarks.gpu [--items 2000] [--batch 64] [--out benchmarks/results/gpu.json] [--quick]

Sections (each one recorded, or its error, before the next starts; the JSON is rewritten atomically after each):
  peak        bf16 and fp32 (TF32 off, as exact mode runs) matrix products, 8192^3: the ceiling for MFU
  mc          hellaswag slice: our exact engine vs lm-eval's HF backend (fp32, same batch size) vs our fast mode
              (bf16): items/s, identical predictions, max |d loglik| (evaluation.child_multiple_choice)
  host        the same comparison on the tiny model (its arithmetic is negligible, so the time is the host's:
              tokenisation, planning, launches and synchronisations per request), exact mode, 1,000 items
  full        the whole HellaSwag validation set (10,042 items) through our engine, fast and exact: wall time
  ppl         wikitext2 rolling windows: ours vs lm-eval's loglikelihood_rolling, exact and fast
  gen         batched greedy generation vs one prompt at a time, identical outputs
  drift       exact mode's tolerance on this device: lm-eval against itself at two batch sizes (the GPU's fp32
              kernels reduce in an order that depends on the batch's shape), and ours against lm-eval at each
  train       harness trainer vs a plain PyTorch loop, LoRA, full and QLoRA (bitsandbytes), bf16: tokens/s and MFU
              against `peak`
Sections run in the order --sections names them.
--quick runs each section at smoke size on the tiny model (any device; the CPU when there is no GPU).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import common, evaluation, matmul, training


def matmul_peak(device: str, dtype: str, n: int = 8192, reps: int = 10) -> float:
    """FLOP/s of an n^3 matrix product in `dtype` on `device` (mean of reps after 3 warm-ups); fp32 without TF32."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return matmul.matmul_flops(n) * reps / (time.perf_counter() - t0)


def full_hellaswag(model: str, batch_size: int, device: str, limit: int | None) -> dict:
    """Our engine over the whole HellaSwag validation set (or `limit` items) in exact and in fast mode."""
    from lm_eval import simple_evaluate

    from harness.eval import precision
    from harness.eval.lm_eval import build_lm, task_manager, task_name

    cfg, net, tok = evaluation._load(model, device)
    full, tm = task_name("hellaswag"), task_manager(["hellaswag"])
    out = {}
    for mode in ("fast", "exact"):
        lm = build_lm(precision.model_for(net, precision.plan(mode, device)), tok, batch_size, model_cfg=cfg.model)
        res, wall, peak = evaluation._timed_peak(lambda: simple_evaluate(
            model=lm, tasks=[full], limit=limit, task_manager=tm, bootstrap_iters=0, verbosity="ERROR"), device)
        r = res["results"][full]
        out[mode] = {"wall_s": wall, "items": res["n-samples"][full]["effective"], "peak_mb": peak,
                     **{k: r.get(f"{k},none") for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")}}
    return out


def batch_drift(model: str, task: str, items: int, sizes: tuple[int, int], device: str) -> dict:
    """Per-choice log-likelihoods of `items` items from lm-eval's HF backend at two batch sizes and from our exact
    engine at the same two: how far lm-eval moves from itself when only the batch changes, beside how far ours is
    from it. The first is the floor under any tolerance ours can be held to on this device."""
    import logging

    from lm_eval import simple_evaluate

    from harness.eval.lm_eval import build_lm, task_manager, task_name

    cfg, net, tok = evaluation._load(model, device)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    full, tm = task_name(task), task_manager([task])
    samples = {}
    for b in sizes:
        sides = {f"lm_eval_{b}": evaluation.lm_eval_direct(cfg, b, device),
                 f"ours_{b}": build_lm(net, tok, b, model_cfg=cfg.model)}
        for name, lm in sides.items():
            out = simple_evaluate(model=lm, tasks=[full], limit=items, log_samples=True, task_manager=tm,
                                  bootstrap_iters=0, verbosity="ERROR")
            samples[name] = sorted(out["samples"][full], key=lambda x: x["doc_id"])
    a, b = sizes
    pairs = [(f"lm_eval_{a}", f"lm_eval_{b}"), (f"ours_{a}", f"lm_eval_{a}"), (f"ours_{b}", f"lm_eval_{b}"),
             (f"ours_{a}", f"ours_{b}")]
    return {"task": task, "items": items, "batch_sizes": list(sizes),
            **{f"{x}_vs_{y}": evaluation.compare_samples(samples[x], samples[y]) for x, y in pairs}}


NO_PEAK = "no bf16 peak measured before this section: name `peak` before `train` in --sections"


def train_rows(model: str, data: str, device: str, max_length: int, batch_size: int, warmup: int, steps: int,
               work: Path, peak_bf16: float | None, methods: tuple[str, ...] = ("lora", "full")) -> list[dict]:
    """Harness trainer and plain loop for each method, bf16, in this process: tokens/s, peak memory, MFU."""
    subset = training.write_long_rows(model, data, max_length, (warmup + steps) * batch_size, str(work / "long.json"))
    rows = []
    for method in methods:
        for impl in ("harness", "plain"):
            kw = dict(model=model, method=method, precision="bf16", data=data, data_path=subset["path"],
                      max_length=max_length, batch_size=batch_size, warmup=warmup, steps=steps, device=device)
            try:
                r = (training.child_harness(workdir=str(work / f"{impl}-{method}"), **kw) if impl == "harness"
                     else training.child_plain(**kw))
            except Exception as exc:  # noqa: BLE001 - one row's failure is that row's result
                rows.append({"method": method, "impl": impl, "error": f"{type(exc).__name__}: {exc}"})
                continue
            f = training.row_flops(subset, max_length, method, impl, r.get("trainable_params"), r.get("tokens_per_s"),
                                   peak_bf16)
            rows.append({"method": method, "impl": impl, "tokens_per_s": r.get("tokens_per_s"),
                         "step_s": r.get("step_s"), "peak_mb": r.get("summary_peak_memory_mb"),
                         "final_train_loss": r.get("final_train_loss"), "mfu": f["mfu"],
                         "mfu_error": f["mfu_error"] or (None if peak_bf16 else NO_PEAK),
                         "model_tflops": f["achieved"] / 1e12 if f["achieved"] else None})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=2000, help="hellaswag items in the side-by-side slice")
    ap.add_argument("--batch", type=int, default=64, help="batch size of every evaluation side")
    ap.add_argument("--sections", default="peak,mc,host,drift,full,ppl,gen,train")
    ap.add_argument("--train-methods", default="lora,full,qlora", help="methods of the train section")
    ap.add_argument("--train-batch", type=int, default=8, help="rows of 512 tokens per step in the train section")
    ap.add_argument("--out", default="benchmarks/results/gpu.json")
    ap.add_argument("--quick", action="store_true", help="smoke sizes on the tiny model")
    args = ap.parse_args(argv)

    import torch

    from harness import atomic

    device = "cuda" if torch.cuda.is_available() else "cpu"
    quick = args.quick
    model = "tiny-llama" if quick else "smollm2-135m"
    items, batch, reps = (8, 4, 1) if quick else (args.items, args.batch, 3)
    work = Path(tempfile.mkdtemp(prefix="harness-gpu-"))
    try:
        machine = common.machine()
    except Exception as exc:  # noqa: BLE001 - a machine record that cannot be read does not stop the measurements
        machine = {"error": f"{type(exc).__name__}: {exc}"}
    if device == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(0)
    report: dict = {"machine": machine, "device": device, "model": model, "items": items, "batch": batch,
                    "sections": {}}
    out = Path(args.out)

    def record(name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            report["sections"][name] = {"result": fn()}
        except Exception as exc:  # noqa: BLE001 - a section's failure is recorded and the next one runs
            report["sections"][name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        report["sections"][name]["wall_s"] = time.perf_counter() - t0
        atomic.write_json(out, report)
        print(f"[gpu] {name}: {json.dumps(report['sections'][name], default=str)[:1500]}", flush=True)

    def peak() -> float | None:
        return (report["sections"].get("peak", {}).get("result") or {}).get("bf16_flops")

    sections = {
        "peak": lambda: {"bf16_flops": matmul_peak(device, "bfloat16", 512 if quick else 8192),
                         "fp32_flops": matmul_peak(device, "float32", 512 if quick else 8192)},
        "mc": lambda: evaluation.child_multiple_choice(model, "hellaswag", items, batch, reps, device=device),
        "host": lambda: evaluation.child_multiple_choice("tiny-llama", "hellaswag", items if quick else 1000,
                                                         batch, reps, fast=False, device=device),
        "drift": lambda: batch_drift(model, "hellaswag", items if quick else 500, (batch, 7), device),
        "full": lambda: full_hellaswag(model, batch, device, items if quick else None),
        "ppl": lambda: evaluation.child_perplexity(model, 1 if quick else 10 ** 6, 128 if quick else 2048,
                                                   2 if quick else 8, reps, device=device),
        "gen": lambda: evaluation.child_generation(model, "alpaca-tiny" if quick else "alpaca-demo",
                                                   4 if quick else 32, 2 if quick else 32, 4 if quick else 64,
                                                   1, device=device),
        "train": lambda: train_rows(model, "alpaca-tiny" if quick else "alpaca-demo", device, 128 if quick else 512,
                                    2 if quick else args.train_batch, 1 if quick else 3, 2 if quick else 20, work,
                                    peak(), tuple(args.train_methods.split(","))),
    }
    wanted = args.sections.split(",")
    unknown = [w for w in wanted if w not in sections]
    if unknown:
        ap.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(sections)}")
    for name in wanted:
        record(name, sections[name])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
