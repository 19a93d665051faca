"""The machine's limit: peak matmul FLOP/s in fp32 and bf16, measured in the same run as the training.

    python -m benchmarks.run --only matmul

Best of several timed products in a child process, for the four operand layouts training uses (a @ b, as
autograd's input gradient; aᵀ @ b with a stored transposed, the "tn" layout of autograd's weight gradient and
of every product harness/train/bf16cpu.py makes; a @ bᵀ with b stored transposed; F.linear, as nn.Linear's
forward), on large square matrices (2·n³ FLOP each) AND at the benchmark model's own shapes: for its
attention projection, MLP up-projection and LM head (vocabulary capped at VOCAB_CAP columns), the three
products one Linear costs in training (forward T×I·I×O, input gradient T×O·O×I, weight gradient O×T·T×I;
T = batch × max_length tokens). On CPUs without native bf16 the layouts differ up to twentyfold. The peak of
a dtype is the best of all of them, so it is the best throughput this machine reached for that dtype in any
layout a trainer could use, and model utilisation (benchmarks/training.py) divides by it: a trainer cannot
beat it (an MFU above 1 is flagged there as a measurement error). Whether bf16 is native (AMX /
AVX512-BF16) or emulated (AVX2 only) is read from /proc/cpuinfo and stated beside the peak.
"""

from __future__ import annotations

import time

from benchmarks import common

LAYOUTS = ("nn", "tn", "nt", "linear")  # a @ b, aᵀ @ b (a stored transposed), a @ bᵀ (b stored transposed), F.linear
VOCAB_CAP = 4096  # LM-head columns timed: the full vocabulary's product would take minutes in emulated bf16


def matmul_flops(n: int, k: int | None = None, m: int | None = None) -> float:
    """FLOP of one (n×k) @ (k×m) product (a multiply and an add per inner-product term); n×n @ n×n by default."""
    k = n if k is None else k
    m = n if m is None else m
    return 2.0 * n * k * m


def linear_shapes(arch: dict, tokens: int, vocab_cap: int = VOCAB_CAP) -> dict[str, tuple[int, int, int]]:
    """Pure: (tokens, in_features, out_features) of the model's Linear kinds whose products dominate training."""
    return {"attn_q": (tokens, arch["hidden"], arch["attn_dim"]), "mlp_up": (tokens, arch["hidden"], arch["ffn"]),
            "lm_head": (tokens, arch["hidden"], min(arch["vocab"], vocab_cap))}


def training_products(tokens: int, fan_in: int, fan_out: int) -> dict[str, tuple[int, int, int]]:
    """Pure: the (m, k, n) of the three products of one Linear in training: forward x·Wᵀ, input gradient g·W,
    weight gradient gᵀ·x."""
    return {"fwd": (tokens, fan_in, fan_out), "grad_x": (tokens, fan_out, fan_in), "grad_w": (fan_out, tokens, fan_in)}


def best_of(results: dict[str, dict]) -> tuple[str, dict]:
    """Pure: the (name, result) with the highest 'best' FLOP/s."""
    name = max(results, key=lambda k: results[k]["best"])
    return name, results[name]


def _time(op, flops: float, reps: int, min_seconds: float) -> dict:
    op()  # warm-up (library initialisation, page faults)
    t0 = time.perf_counter()
    op()
    one = max(time.perf_counter() - t0, 1e-6)
    if one >= 5 * min_seconds:  # a pathologically slow layout: that one timed call is its measurement
        return {"best": flops / one, "median": flops / one}
    inner = max(1, int(min_seconds / one))
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            op()
        rates.append(flops * inner / (time.perf_counter() - t0))
    return {"best": max(rates), "median": common.median(rates)}


def _layouts(dt, m: int, k: int, n: int, reps: int, min_seconds: float) -> dict[str, dict]:
    import torch
    import torch.nn.functional as F

    a, b = torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)
    at, bt = a.t().contiguous(), b.t().contiguous()
    ops = {"nn": lambda: torch.matmul(a, b), "tn": lambda: torch.matmul(at.t(), b),
           "nt": lambda: torch.matmul(a, bt.t()), "linear": lambda: F.linear(a, bt)}
    return {name: _time(op, matmul_flops(m, k, n), reps, min_seconds) for name, op in ops.items()}


def measure(dtype: str, n: int, reps: int, min_seconds: float = 0.5, shapes: dict | None = None) -> dict:
    """Child: best and median FLOP/s over `reps` timed products (each repeated to last >= min_seconds) for each
    operand layout, on n×n squares and on each of `shapes` ({name: (tokens, in, out)}: its three training
    products). The peak is the best over everything."""
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    torch.manual_seed(0)
    layouts = _layouts(dt, n, n, n, reps, min_seconds)
    square_layout, square = best_of(layouts)
    products: dict[str, dict] = {}  # "mlp_up.grad_x.tn" -> {"best", "median", "mnk"}
    for shape_name, (tokens, fan_in, fan_out) in (shapes or {}).items():
        for prod, (m, k, nn) in training_products(tokens, fan_in, fan_out).items():
            for lay, r in _layouts(dt, m, k, nn, min(reps, 2), min_seconds / 4).items():
                products[f"{shape_name}.{prod}.{lay}"] = {**r, "mnk": [m, k, nn]}
    candidates = {f"square{n}.{k}": v for k, v in layouts.items()} | products
    peak_at, peak = best_of(candidates)
    by_layout = {lay: max(v["best"] for k, v in candidates.items() if k.endswith("." + lay)) for lay in LAYOUTS}
    return {"dtype": dtype, "n": n, "best_flops": peak["best"], "median_flops": peak["median"], "peak_at": peak_at,
            "best_layout": peak_at.rsplit(".", 1)[1], "square_best_flops": square["best"], "square_best_layout": square_layout,
            "layouts": layouts, "by_layout": by_layout, "products": products, "threads": torch.get_num_threads()}


def run(opts: common.Options) -> dict:
    n = 256 if opts.quick else 1024
    reps = 2 if opts.quick else max(3, opts.reps)
    rows, notes = [], []
    try:
        arch = common.model_arch(opts.model)
        shapes = linear_shapes(arch, opts.batch_size * opts.max_length)
    except Exception as exc:  # the square products still give a peak
        arch, shapes = None, {}
        notes.append(f"model shapes not measured ({type(exc).__name__}: {exc}); the peak is the square products' only")
    kind = common.cpu_kind()
    for dtype in ("fp32", "bf16"):
        try:
            r = common.run_child("matmul", "measure", {"dtype": dtype, "n": n, "reps": reps, "shapes": shapes,
                                                       "min_seconds": 0.05 if opts.quick else 0.5},
                                 opts.workdir / "matmul", f"matmul-{dtype}", opts.timeout())
            native = None if dtype == "fp32" else kind["native_bf16"]
            rows.append({"dtype": dtype, "n": n, "reps": reps, "peak_gflops": r["best_flops"] / 1e9,
                         "median_gflops": r["median_flops"] / 1e9, "peak_at": r["peak_at"], "best_layout": r["best_layout"],
                         "square_gflops": r["square_best_flops"] / 1e9,
                         **{f"{k}_gflops": v / 1e9 for k, v in r["by_layout"].items()},
                         "bf16": "native" if native else "emulated" if native is False else "–",
                         "threads": r["threads"], "products": {k: v["best"] / 1e9 for k, v in r["products"].items()}})
        except common.ChildError as exc:
            rows.append({"dtype": dtype, "n": n, "peak_gflops": None, "error": str(exc)})
            notes.append(f"not measured: {dtype} matmul failed: {exc}")
    by = {r["dtype"]: r.get("peak_gflops") for r in rows}
    notes.append(f"CPU: {kind['cpu']}, {kind['kind']}; bf16 matmuls here are "
                 f"{'native' if kind['native_bf16'] else 'emulated (no avx512_bf16 / amx_bf16 in /proc/cpuinfo)'}.")
    if shapes:
        notes.append("peak = best over layouts nn/tn/nt/linear of n×n squares and of the forward, input-gradient and "
                     "weight-gradient products at the model's shapes " + ", ".join(f"{k} {v[0]}×{v[1]}→{v[2]}"
                                                                                   for k, v in shapes.items())
                     + f" (tokens×in→out; LM head capped at {VOCAB_CAP} columns); *_gflops = each layout's best of those")
    if by.get("fp32") and by.get("bf16"):
        notes.append(f"bf16 / fp32 matmul peak on this machine: {by['bf16'] / by['fp32']:.2f}x "
                     "(CPUs without native bf16 instructions emulate it; then bf16 autocast is not a speed-up).")
    return common.section("matmul", "Peak matmul throughput (the machine's limit)", rows,
                          columns=["dtype", "bf16", "reps", "peak_gflops", "median_gflops", "peak_at", "square_gflops",
                                   "nn_gflops", "tn_gflops", "nt_gflops", "linear_gflops", "threads"], notes=notes,
                          params={"n": n, "reps": reps, "shapes": shapes or None, "cpu_kind": kind["kind"]})
