"""Fast-mode attention on CPUs: causal attention in query blocks, for bf16 evaluation copies where it measures faster.

Profiling fast mode (bf16) on an AMD EPYC with AVX512-BF16 (2 threads, SmolLM2-135M) put 43% of a WikiText-2
perplexity window of 1,024 tokens, and 25% of packed HellaSwag, in torch's CPU flash-attention kernel
(`scaled_dot_product_attention`): ~12 ms per layer for 1,024 causal positions, about 100 GFLOP/s, the same as its
fp32 speed, while the rest of the model's bf16 products run at ~540 GFLOP/s. `blocked_attention` computes the
same attention with the CPU's bf16 matrix kernels instead:

  for each block of BLOCK queries [s, e):  scores = (q[s:e] x scale) k[:e]ᵀ  (bf16 product: keys after e are
                                           never touched, the causal half is skipped)
                                           p = softmax(masked scores)     (fp32 inside torch's kernel, bf16 out)
                                           out[s:e] = p v[:e]             (bf16 product)

Grouped-query heads share their key/value head without copies (the group's query heads are stacked into one
product). Masks are transformers' sdpa masks (bool, True = attend) or additive float masks (full width); with a
bool mask a block reads only the keys [lo, hi) any of its queries may attend (`_key_ranges`: packed groups that
see only themselves skip the others' keys, a non-causal mask reaches past the block's end). Everything the kernel
does not cover goes to transformers' own sdpa function unchanged: training with dropout, a KV cache (queries fewer
than keys: generation's decoding steps), soft-capping, attention weights requested, a non-causal module.

Measured on that CPU (bf16, 9 query / 3 key-value heads of 64, 2 threads, median of 9, one run): 1,024 positions
4.9 ms vs sdpa's 11.6 ms; 512: 1.7 vs 4.0 ms; 4 x 256: 1.6 vs 4.1 ms; 8 x 128: 1.1 vs 2.6 ms (`python -m
benchmarks.evaluation --attention`). In fp32 the blocked form is not faster than sdpa (15.1 vs 11.8 ms at 1,024),
so exact mode never uses it. It rounds differently from sdpa's bf16 kernel (its scores are bf16 products; sdpa's kernel
keeps them in fp32): on random inputs the largest output difference from an fp32 reference was 0.011 against
sdpa-bf16's 0.009. Fast mode's calibration (harness/eval/precision.py) measures what that costs on the suite.

When (`choose`): only for bf16 evaluation copies on a CPU, and only where it measures faster there: one timing of
both at the model's head shape (512 positions, interleaved, median of 5; ~60 ms), kept for the process.
HARNESS_EVAL_ATTENTION=blocked forces it, =sdpa forbids it, =auto (default) measures.
"""

from __future__ import annotations

import statistics
import time
import weakref
from dataclasses import asdict, dataclass

NAME = "harness_blocked"  # the name transformers knows the kernel by (AttentionInterface)
BLOCK = 64  # queries per block: 64 measured fastest of 32 / 64 / 128 at 128-1,024 positions (bf16, AVX512-BF16)
OVERRIDE_ENV = "HARNESS_EVAL_ATTENTION"
OVERRIDES = ("auto", "blocked", "sdpa")
MEASURE_POSITIONS = 512  # the timing's length (HellaSwag's packed rows: 100-500 tokens, perplexity's windows 1,024)
MIN_SPEEDUP = 1.1  # blocked must beat sdpa by 10%: within the noise it changes nothing but rounding
_MEASURED: dict[tuple, "AttentionDecision"] = {}  # (heads, kv heads, head dim, threads) -> the timing's decision
_CHOSEN: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> its decision (describe)


def _sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def _key_ranges(mask, length: int) -> list[tuple[int, int]]:
    """For each block of BLOCK queries, the keys [lo, hi) that any of its queries may attend in a bool mask
    [.., q, k] (over every row and head): the engine's packed rows hold several groups that each see only
    themselves, so a block needs the keys from its earliest query's group start, not from 0; a causal mask never
    gives hi past the block's end. Computed once per mask tensor (every layer of a forward gets the same one) and
    remembered on it with its version."""
    seen = getattr(mask, "_harness_key_ranges", None)
    if seen is not None and seen[0] == mask._version:
        return seen[1]
    ranges = []
    for s in range(0, length, BLOCK):
        e = min(length, s + BLOCK)
        cols = mask[..., s:e, :].any(dim=-2).reshape(-1, mask.shape[-1]).any(dim=0).nonzero()
        ranges.append((int(cols[0]), int(cols[-1]) + 1) if len(cols) else (s, e))
    try:
        mask._harness_key_ranges = (mask._version, ranges)
    except (AttributeError, RuntimeError):
        pass
    return ranges


def blocked_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature: query [b, h, q, d], key / value [b, kv_heads, k, d] ->
    ([b, q, h, d], None). Block-causal (module docstring); anything else goes to transformers' sdpa function."""
    import torch

    b, h, n_q, d = query.shape
    kvh, n_k = key.shape[1], key.shape[2]
    mask = attention_mask
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    odd_mask = mask is not None and (mask.ndim != 4 or mask.shape[-2:] != (n_q, n_k))
    extras = (kwargs.get(k) is not None for k in ("softcap", "position_bias", "cache"))
    if (n_q != n_k or n_q < 2 or not causal or h % kvh or (dropout and module.training) or odd_mask
            or kwargs.get("output_attentions") or any(extras)):
        return _sdpa()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                       is_causal=is_causal, **kwargs)
    g, L = h // kvh, n_q
    scale = scaling if scaling is not None else d ** -0.5
    if mask is None:  # pure causal: a block sees the keys up to its end
        ranges = [(0, min(L, s + BLOCK)) for s in range(0, L, BLOCK)]
    elif mask.dtype == torch.bool:
        ranges = _key_ranges(mask, L)
    else:  # an additive mask may open any key: full width
        ranges = [(0, L)] * len(range(0, L, BLOCK))
    low = torch.finfo(query.dtype).min  # not -inf: a query with no key allowed (padding) gets no NaN
    out = torch.empty(b, L, kvh, g, d, dtype=query.dtype, device=query.device)
    qg = (query * scale).view(b, kvh, g, L, d)
    kt = key.reshape(b * kvh, L, d).transpose(1, 2)
    vv = value.reshape(b * kvh, L, d)
    later = None if mask is not None else torch.ones(BLOCK, BLOCK, dtype=torch.bool, device=query.device).triu(1)
    for s, (lo, hi) in zip(range(0, L, BLOCK), ranges):
        e = min(L, s + BLOCK)
        n, width = e - s, hi - lo
        qi = qg[:, :, :, s:e].reshape(b * kvh, g * n, d)
        scores = torch.bmm(qi, kt[:, :, lo:hi]).view(b, kvh, g, n, width)
        if mask is None:
            scores[..., s:e].masked_fill_(later[:n, :n], low)
        else:
            m = mask[:, :, s:e, lo:hi]
            m = m.unsqueeze(2) if m.shape[1] == 1 else m.reshape(m.shape[0], kvh, g, n, width)
            if m.dtype == torch.bool:
                scores.masked_fill_(~m, low)
            else:
                scores = (scores.float() + m).clamp_(min=torch.finfo(torch.float32).min)
        p = torch.softmax(scores, dim=-1).to(query.dtype)  # fp32 inside the kernel, bf16 out
        o = torch.bmm(p.view(b * kvh, g * n, width), vv[:, lo:hi]).view(b, kvh, g, n, d)
        out[:, s:e] = o.permute(0, 3, 1, 2, 4)
    return out.view(b, L, h, d), None


def register() -> str:
    """Make NAME known to transformers (attention function + sdpa's mask builder); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, blocked_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


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
    if not (sdpa_ms > 0 and blocked_ms > 0):
        raise ValueError(f"attention timings must be positive, got sdpa={sdpa_ms!r} blocked={blocked_ms!r}")
    speedup = sdpa_ms / blocked_ms
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


def _shape(model) -> tuple[int, int, int] | None:
    from harness.model.scoring import base_model

    config = getattr(base_model(model), "config", None)
    config = getattr(config, "text_config", None) or config
    heads = getattr(config, "num_attention_heads", None)
    if not heads:
        return None
    kv = getattr(config, "num_key_value_heads", None) or heads
    dim = getattr(config, "head_dim", None) or getattr(config, "hidden_size", 0) // heads
    return (heads, kv, dim) if dim and heads % kv == 0 else None


def choose(model) -> AttentionDecision:
    """Switch a bf16 CPU evaluation copy to the blocked kernel where it measures faster (module docstring); the
    decision either way, also kept for `describe`. The model is changed in place: pass the fast-mode copy, never
    the trained model."""
    import torch

    from harness.model.scoring import base_model

    inner = base_model(model)
    current = str(getattr(getattr(inner, "config", None), "_attn_implementation", None))
    params = [p for p in model.parameters() if p.dtype.is_floating_point]
    shape = _shape(model)
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
