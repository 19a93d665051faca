"""Fast-mode attention on CPUs: causal attention in query blocks, for bf16 evaluation copies where it measures faster.

Profiling fast mode (bf16) on an AMD EPYC with AVX512-BF16 (2 threads, SmolLM2-135M) put 43% of a WikiText-2
perplexity window of 1,024 tokens, and 25% of packed HellaSwag, in torch's CPU flash-attention kernel
(`scaled_dot_product_attention`): ~12 ms per layer for 1,024 causal positions, about 100 GFLOP/s, the same as its
fp32 speed, while the rest of the model's bf16 products run at ~540 GFLOP/s. The block-causal kernel
(harness/model/attention.py: causal attention in query blocks through the CPU's bf16 matrix products) is the
alternative this module chooses between.

Measured on that CPU (bf16, 9 query / 3 key-value heads of 64, 2 threads, median of 9, one run): 1,024 positions
4.9 ms vs sdpa's 11.6 ms; 512: 1.7 vs 4.0 ms; 4 x 256: 1.6 vs 4.1 ms; 8 x 128: 1.1 vs 2.6 ms (`python -m
benchmarks.evaluation --attention`). In fp32 the blocked form is not faster than sdpa (15.1 vs 11.8 ms at 1,024),
so exact mode never uses it. On an AMX Xeon (2026-12-03) it lost in evaluation: 0.45-0.66x sdpa's forward, so
`choose` keeps sdpa on that kind (training's forward + backward is another matter: harness/train/attention.py). It
rounds differently from sdpa's bf16 kernel (its scores are bf16 products; sdpa's kernel keeps them in fp32): on
random inputs the largest output difference from an fp32 reference was 0.011 against sdpa-bf16's 0.009. Fast
mode's calibration (harness/eval/precision.py) measures what that costs on the suite.

When (`choose`): only for bf16 evaluation copies on a CPU, and only where it measures faster there: one timing of
both at the model's head shape (512 positions, interleaved, median of 5; ~60 ms), kept for the process.
HARNESS_EVAL_ATTENTION=blocked forces it, =sdpa forbids it, =auto (default) measures.
"""

from __future__ import annotations

import statistics
import time
import weakref
from dataclasses import asdict, dataclass

from harness.model.attention import NAME, _sdpa, blocked_attention, head_shape, register

OVERRIDE_ENV = "HARNESS_EVAL_ATTENTION"
OVERRIDES = ("auto", "blocked", "sdpa")
MEASURE_POSITIONS = 512  # the timing's length (HellaSwag's packed rows: 100-500 tokens, perplexity's windows 1,024)
MIN_SPEEDUP = 1.1  # blocked must beat sdpa by 10%: within the noise it changes nothing but rounding
_MEASURED: dict[tuple, "AttentionDecision"] = {}  # (heads, kv heads, head dim, threads) -> the timing's decision
_CHOSEN: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> its decision (describe)


# ------------------------------------------------------------------------------ when to apply it
@dataclass(frozen=True)
class AttentionDecision:
    """Which attention a fast-mode copy runs, and why: recorded in eval.json beside the precision."""

    implementation: str  # harness_blocked | the model's own (sdpa, eager, ...)
    source: str  # measured | forced | not applicable
    reason: str
    sdpa_ms: float | None = None  # median ms of one attention call at the measured shape
    blocked_ms: float | None = None
    shape: tuple | None = None  # (query heads, key-value heads, head dim); timed at MEASURE_POSITIONS positions

    def record(self) -> dict:
        return asdict(self)


def decide(sdpa_ms: float, blocked_ms: float, min_speedup: float = MIN_SPEEDUP) -> tuple[bool, str]:
    """Pure: use the blocked kernel only when it measured at least `min_speedup` times faster than sdpa."""
    from harness.run.measured import speedup as ratio

    speedup = ratio(sdpa_ms, blocked_ms, "attention (sdpa, blocked)")
    if speedup >= min_speedup:
        return True, f"block-causal bf16 attention {speedup:.2f}x faster than sdpa here (>= {min_speedup:.2f}x)"
    return False, f"block-causal bf16 attention {speedup:.2f}x sdpa's speed here (< {min_speedup:.2f}x): sdpa kept"


def override() -> str:
    """HARNESS_EVAL_ATTENTION: auto (measure), blocked (force), sdpa (never). Anything else is an error."""
    from harness.model.device import env_choice

    return env_choice(OVERRIDE_ENV, OVERRIDES, "auto times both kernels once per process and head shape")


def measure(heads: int, kv_heads: int, head_dim: int, positions: int = MEASURE_POSITIONS, reps: int = 5,
            batch: int = 1, dtype: str = "bfloat16") -> tuple[float, float]:
    """(sdpa ms, blocked ms): one causal attention call on random inputs, interleaved after a warm-up, medians of
    `reps`."""
    import torch

    class Probe(torch.nn.Module):
        is_causal = True
        num_key_value_groups = heads // kv_heads

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, n, positions, head_dim, generator=gen).to(getattr(torch, dtype))
               for n in (heads, kv_heads, kv_heads))
    probe = Probe().eval()
    fns = {"sdpa": _sdpa(), "blocked": blocked_attention}
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for rep in range(reps + 1):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(probe, q, k, v, None, scaling=head_dim ** -0.5)
                if rep:
                    times[name].append((time.perf_counter() - t0) * 1000)
    return statistics.median(times["sdpa"]), statistics.median(times["blocked"])


def choose(model) -> AttentionDecision:
    """Switch a bf16 CPU evaluation copy to the blocked kernel where it measures faster (module docstring); the
    decision either way, also kept for `describe`. The model is changed in place: pass the fast-mode copy, never
    the trained model."""
    import torch

    from harness.model.scoring import base_model

    inner = base_model(model)
    current = str(getattr(getattr(inner, "config", None), "_attn_implementation", None))
    params = [p for p in model.parameters() if p.dtype.is_floating_point]
    shape = head_shape(model)
    if not params or params[0].device.type != "cpu" or params[0].dtype != torch.bfloat16:
        decision = AttentionDecision(current, "not applicable", "not a bf16 model on a CPU")
    elif current != "sdpa":
        decision = AttentionDecision(current, "not applicable", f"the model runs {current!r} attention, not sdpa")
    elif shape is None:
        decision = AttentionDecision(current, "not applicable", "no attention-head shape in the model's config")
    elif (forced := override()) == "sdpa":  # read only where it matters (a bad value errs there)
        decision = AttentionDecision(current, "forced", f"{OVERRIDE_ENV}=sdpa")
    elif forced == "blocked":
        decision = AttentionDecision(NAME, "forced", f"{OVERRIDE_ENV}=blocked", shape=shape)
    else:
        key = (*shape, torch.get_num_threads())
        if key not in _MEASURED:
            sdpa_ms, blocked_ms = measure(*shape)
            use, reason = decide(sdpa_ms, blocked_ms)
            _MEASURED[key] = AttentionDecision(NAME if use else current, "measured", reason, round(sdpa_ms, 3),
                                               round(blocked_ms, 3), shape)
        decision = _MEASURED[key]
    if decision.implementation == NAME:
        try:
            inner.set_attn_implementation(register())
        except (ValueError, AttributeError, NotImplementedError) as exc:  # its architecture takes no registered kernel
            why = f"the model takes no registered attention: {exc}"[:300]
            decision = AttentionDecision(current, "not applicable", why)
    _CHOSEN[inner] = decision
    return decision


def describe(model) -> dict:
    """What attention `model` runs and why, for eval.json: the decision `choose` made for it, else its own
    implementation."""
    from harness.model.scoring import base_model

    inner = base_model(model)
    if inner in _CHOSEN:
        return _CHOSEN[inner].record()
    impl = str(getattr(getattr(inner, "config", None), "_attn_implementation", None))
    return AttentionDecision(impl, "model", "the model's own attention").record()
