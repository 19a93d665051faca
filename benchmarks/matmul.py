"""The machine's limit: peak matmul FLOP/s in fp32 and bf16, measured in the same run as the training.

    python -m benchmarks.run --only matmul

Best of several torch.matmul calls on large square matrices (2·n³ FLOP each) in a child process, for
the four operand layouts training uses (a @ b, as autograd's input gradient; aᵀ @ b, as its weight
gradient; a @ bᵀ with b stored transposed; F.linear, as nn.Linear's forward): on CPUs without native
bf16 they differ up to tenfold, and the peak is the best of them,
so model-utilisation numbers (benchmarks/training.py) divide by what this machine really did, not by
a data-sheet figure.
"""

from __future__ import annotations

import time

from benchmarks import common


def matmul_flops(n: int) -> float:
    """FLOP of one n×n @ n×n matrix product (a multiply and an add per inner-product term)."""
    return 2.0 * n ** 3


LAYOUTS = ("nn", "tn", "nt", "linear")  # a @ b, aᵀ @ b (a stored transposed), a @ bᵀ (b stored transposed), F.linear


def measure(dtype: str, n: int, reps: int, min_seconds: float = 0.5) -> dict:
    """Child: best and median FLOP/s over `reps` timed products (each repeated to last >= min_seconds)
    for each operand layout; the peak is the best layout's best, as a well-laid-out kernel would reach."""
    import torch
    import torch.nn.functional as F

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    torch.manual_seed(0)
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    at, bt = a.t().contiguous(), b.t().contiguous()
    ops = {"nn": lambda: torch.matmul(a, b), "tn": lambda: torch.matmul(at.t(), b),
           "nt": lambda: torch.matmul(a, bt.t()), "linear": lambda: F.linear(a, bt)}
    layouts = {}
    for name, op in ops.items():
        op()  # warm-up (library initialisation, page faults)
        t0 = time.perf_counter()
        op()
        one = max(time.perf_counter() - t0, 1e-6)
        inner = max(1, int(min_seconds / one))
        rates = []
        for _ in range(reps if one < 5 * min_seconds else 1):  # a pathologically slow layout is timed once
            t0 = time.perf_counter()
            for _ in range(inner):
                op()
            rates.append(matmul_flops(n) * inner / (time.perf_counter() - t0))
        layouts[name] = {"best": max(rates), "median": common.median(rates)}
    best = max(layouts, key=lambda k: layouts[k]["best"])
    return {"dtype": dtype, "n": n, "best_flops": layouts[best]["best"], "median_flops": layouts[best]["median"],
            "best_layout": best, "layouts": layouts, "threads": torch.get_num_threads()}


def run(opts: common.Options) -> dict:
    n = 256 if opts.quick else 1024
    reps = 2 if opts.quick else max(5, opts.reps)
    rows, notes = [], []
    for dtype in ("fp32", "bf16"):
        try:
            r = common.run_child("matmul", "measure", {"dtype": dtype, "n": n, "reps": reps,
                                                       "min_seconds": 0.05 if opts.quick else 0.5},
                                 opts.workdir / "matmul", f"matmul-{dtype}", opts.timeout())
            rows.append({"dtype": dtype, "n": n, "reps": reps, "peak_gflops": r["best_flops"] / 1e9,
                         "median_gflops": r["median_flops"] / 1e9, "best_layout": r["best_layout"],
                         **{f"{k}_gflops": v["best"] / 1e9 for k, v in r["layouts"].items()}, "threads": r["threads"]})
        except common.ChildError as exc:
            rows.append({"dtype": dtype, "n": n, "peak_gflops": None, "error": str(exc)})
            notes.append(f"not measured: {dtype} matmul failed: {exc}")
    by = {r["dtype"]: r.get("peak_gflops") for r in rows}
    if by.get("fp32") and by.get("bf16"):
        notes.append(f"bf16 / fp32 matmul peak on this machine: {by['bf16'] / by['fp32']:.2f}x "
                     "(CPUs without native bf16 instructions emulate it; then bf16 autocast is not a speed-up).")
    return common.section("matmul", "Peak matmul throughput (the machine's limit)", rows,
                          columns=["dtype", "n", "reps", "peak_gflops", "median_gflops", "best_layout", "nn_gflops", "tn_gflops",
                                   "nt_gflops", "linear_gflops", "threads"], notes=notes,
                          params={"n": n, "reps": reps})
