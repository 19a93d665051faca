"""bf16 training on CPU: Linear layers through the fastest matmul layout, where it measures faster.

On AVX2-only CPUs PyTorch emulates bf16 matmuls, and the speed depends tenfold on the operands' memory
layout. Measured on this project's machine (1 thread, T x I x O = 256 x 576 x 1536; `python -m
benchmarks.run --only matmul` has the square-matrix table):

    forward   F.linear(x, W)                          ~10 GFLOP/s
    backward  grad_x = g @ W            (autograd)      ~2.4 GFLOP/s   <- most of a LoRA step's time
    any       A @ B, A column-major, B row-major ("tn") ~20-24 GFLOP/s  (weight gradient g^T @ x is one)

`patch_linear_layers(model)` routes every plain nn.Linear of the model through a custom autograd function
that puts all three products in the "tn" layout: y = (xᵀ)ᵀ @ Wᵀ, grad_x = (gᵀ)ᵀ @ W, grad_W = gᵀ @ x, where
(·ᵀ)ᵀ is a transposed contiguous copy (T x I or O x I elements, small beside the T x O x I product).
Results equal autograd's up to bf16 rounding order. A patched layer runs its stock forward outside CPU
autocast or without gradients (evaluation, generation). Quantized layers (bitsandbytes) are not plain
nn.Linear and keep their own kernels.

When it is applied (`choose`, called by harness/train/fit.py for train.precision=bf16 on CPU): only where it
measures faster. A one-time measurement times forward + backward of one nn.Linear at the model's shape (tokens x
hidden -> intermediate, the base weight trainable or frozen as in the run) under bf16 autocast, stock against
patched, interleaved, median of two after a warm-up (0.5-0.7 s on a 1-thread AVX2 CPU). The result is cached
per machine (CPU model + flags + torch version + threads + shape) under $HARNESS_CACHE/bf16cpu/, and the
decision, both timings and where they came from go into the run's manifest.json (`bf16_layout`). CPUs with
native bf16 (AMX / AVX512-BF16) get the same measurement: nothing assumes the patch helps or hurts there. On an
AMD EPYC with AVX512-BF16 (2026-12-02, 1 thread) it measured 0.53x (LoRA shape) and 0.60x (full) of the stock
kernels, so stock is kept there (benchmarks/results/avx512bf16/results.md, column bf16_layout). On tiny models
the patch's copies cost more than they save and it is not applied.
HARNESS_BF16_LAYOUT=tn forces the patch, =stock forbids it, =auto (default) measures.
"""

from __future__ import annotations

import statistics
import time
import types
from dataclasses import asdict, dataclass

OVERRIDE_ENV = "HARNESS_BF16_LAYOUT"
CACHE_KIND = "bf16cpu"  # $HARNESS_CACHE/bf16cpu/<machine key>.json
OVERRIDES = ("auto", "tn", "stock")
MIN_SPEEDUP = 1.05  # the patch must beat the stock kernels by 5%: within the noise it changes nothing
MAX_TOKENS = 64  # the measurement's rows: the run's batch x max_length, capped (the layout gap shows already; 0.5-0.7 s
#                   for stock + patched on a 1-thread AVX2 EPYC at 64 x 576 -> 1536)


def _function():
    import torch

    def col_major(t):  # the same matrix, stored column-major: the fast left operand
        return t.t().contiguous().t()

    class LinearFastBackward(torch.autograd.Function):
        @staticmethod
        @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.bfloat16)
        def forward(ctx, x, weight, bias):
            ctx.save_for_backward(x, weight)
            ctx.has_bias = bias is not None
            x2 = x.reshape(-1, x.shape[-1])
            y = torch.matmul(col_major(x2), weight.t().contiguous())
            if bias is not None:
                y = y + bias
            return y.reshape(*x.shape[:-1], weight.shape[0])

        @staticmethod
        @torch.amp.custom_bwd(device_type="cpu")
        def backward(ctx, grad):
            x, weight = ctx.saved_tensors
            g2 = grad.reshape(-1, grad.shape[-1])
            grad_x = grad_w = grad_b = None
            if ctx.needs_input_grad[0]:
                grad_x = torch.matmul(col_major(g2), weight).reshape(x.shape)
            if ctx.needs_input_grad[1]:
                grad_w = g2.t() @ x.reshape(-1, x.shape[-1])
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = g2.sum(0)
            return grad_x, grad_w, grad_b

    return LinearFastBackward


_FN = None


def _forward(self, x):
    import torch

    if not torch.is_autocast_enabled("cpu") or not torch.is_grad_enabled():
        return self._harness_plain_forward(x)
    from harness.train.frozen_cast import kept_weight

    return _FN.apply(x, kept_weight(self, torch.bfloat16), self.bias)  # a frozen weight's kept bf16 copy (frozen_cast.py)


def patch_linear_layers(model) -> int:
    """Give every plain nn.Linear in model the fast bf16 backward (active under CPU bf16 autocast with
    gradients on; plain behaviour otherwise). Returns how many layers were patched."""
    global _FN
    import torch

    if _FN is None:
        _FN = _function()
    n = 0
    for m in model.modules():
        if type(m) is torch.nn.Linear and not hasattr(m, "_harness_plain_forward"):
            m._harness_plain_forward = m.forward
            m.forward = types.MethodType(_forward, m)
            n += 1
    return n


def unpatch_linear_layers(model) -> int:
    n = 0
    for m in model.modules():
        if hasattr(m, "_harness_plain_forward"):
            m.forward = m._harness_plain_forward
            del m._harness_plain_forward
            n += 1
    return n


# ------------------------------------------------------------------------------ when to apply it
@dataclass
class LayoutDecision:
    """Whether the tn patch is applied, and the evidence: what the run's manifest.json records as `bf16_layout`."""

    apply: bool
    source: str  # measured | cache | forced
    reason: str
    stock_s: float | None = None  # median seconds of one forward + backward, stock nn.Linear
    patched_s: float | None = None  # the same through the tn layout
    speedup: float | None = None  # stock_s / patched_s
    shape: list | None = None  # [tokens, in_features, out_features]
    weight_grad: bool | None = None
    native_bf16: bool | None = None
    machine_key: str | None = None
    cache_path: str | None = None

    def record(self) -> dict:
        return asdict(self)


def decide(stock_s: float, patched_s: float, min_speedup: float = MIN_SPEEDUP) -> tuple[bool, str]:
    """Pure: apply the patch only when it measured at least `min_speedup` times faster than the stock kernels."""
    from harness.run.measured import speedup as ratio

    speedup = ratio(stock_s, patched_s, "bf16 layout (stock, patched)")
    if speedup >= min_speedup:
        return True, f"tn layout {speedup:.2f}x faster than stock (>= {min_speedup:.2f}x): applied"
    return False, f"tn layout {speedup:.2f}x the stock speed (< {min_speedup:.2f}x): stock kernels kept"


def override() -> str:
    """HARNESS_BF16_LAYOUT: auto (measure), tn (force the patch), stock (never). Anything else is an error."""
    from harness.model.device import env_choice

    return env_choice(OVERRIDE_ENV, OVERRIDES, "auto measures stock vs tn once per machine and shape")


def machine_key(cpu: dict, torch_version: str, threads: int, shape: tuple, weight_grad: bool) -> str:
    """Pure: the cache key of one measurement: CPU model and flags, torch version, threads, shape, weight gradient."""
    from harness.run import measured

    return measured.machine_key(cpu, torch_version, threads, shape=list(shape), weight_grad=bool(weight_grad))


def measure(tokens: int, in_features: int, out_features: int, weight_grad: bool, reps: int = 2) -> dict:
    """Seconds of one forward + backward of a bf16-autocast nn.Linear, stock vs the tn patch, interleaved after a
    warm-up of each; medians of `reps`."""
    import torch

    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's init draws from torch's global RNG: the run's must not move
        layer = torch.nn.Linear(in_features, out_features, bias=False)
    layer.weight.requires_grad_(weight_grad)
    x = torch.randn(tokens, in_features, generator=gen, requires_grad=True)

    def once() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        y.float().sum().backward()
        dt = time.perf_counter() - t0
        x.grad = None
        layer.weight.grad = None
        return dt

    stock, patched = [], []
    with torch.enable_grad():
        for i in range(reps + 1):
            for times, on in ((stock, False), (patched, True)):
                if on:
                    patch_linear_layers(layer)
                dt = once()
                if on:
                    unpatch_linear_layers(layer)
                if i:  # the first of each is the warm-up
                    times.append(dt)
    return {"stock_s": statistics.median(stock), "patched_s": statistics.median(patched), "reps": reps,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def choose(tokens: int, in_features: int, out_features: int, weight_grad: bool) -> LayoutDecision:
    """Whether to patch a bf16 CPU run's Linear layers: the override, else the cached or a fresh measurement."""
    import torch

    from harness.run import measured
    from harness.run.environment import cpu_identity

    cpu = cpu_identity()
    shape = [min(int(tokens), MAX_TOKENS), int(in_features), int(out_features)]
    common = dict(shape=shape, weight_grad=bool(weight_grad), native_bf16=cpu["native_bf16"])
    forced = override()
    if forced != "auto":
        return LayoutDecision(apply=forced == "tn", source="forced",
                              reason=f"{OVERRIDE_ENV}={forced}: {'applied' if forced == 'tn' else 'stock kernels kept'} "
                                     "without measuring", **common)
    key = machine_key(cpu, torch.__version__, torch.get_num_threads(), shape, weight_grad)
    timings, source, path = measured.cached(CACHE_KIND, key, ("stock_s", "patched_s"),
                                            lambda: measure(*shape, weight_grad=weight_grad),
                                            {"cpu": cpu["cpu"], "torch": torch.__version__, **common})
    apply, reason = decide(timings["stock_s"], timings["patched_s"])
    return LayoutDecision(apply=apply, source=source, reason=reason, stock_s=timings["stock_s"],
                          patched_s=timings["patched_s"], speedup=timings["stock_s"] / timings["patched_s"],
                          machine_key=key, cache_path=path, **common)
