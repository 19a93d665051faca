"""Block-causal attention on CPUs: causal attention in query blocks through the CPU's bf16 matrix kernels.

torch's CPU flash-attention kernel (`scaled_dot_product_attention`) runs bf16 at about its fp32 speed (~100 GFLOP/s
on 2 AVX512-BF16 cores) and its backward is slower still (a 2 x 128-token bf16 forward + backward: 7.0 ms against
2.7 ms here, 1 thread of an AMX Xeon). `blocked_attention` computes the same attention with the CPU's bf16 matrix
products instead:

  for each block of BLOCK queries [s, e):  scores = (q[s:e] x scale) k[:e]ᵀ  (bf16 product: keys after e are
                                           never touched, the causal half is skipped)
                                           p = softmax(masked scores)     (fp32 inside torch's kernel, bf16 out)
                                           out[s:e] = p v[:e]             (bf16 product)

Grouped-query heads share their key/value head without copies (the group's query heads are stacked into one
product). Masks are transformers' sdpa masks (bool, True = attend) or additive float masks (full width); with a
bool mask a block reads only the keys [lo, hi) any of its queries may attend (`_key_ranges`: packed groups that
see only themselves skip the others' keys, a non-causal mask reaches past the block's end). It is made of
differentiable torch operations, so it trains too (autograd keeps each block's probabilities: batch x heads x
positions² / 2 fp32 values per layer). Under autocast its inputs go to autocast's dtype, as sdpa's do. Everything
the kernel does not cover goes to transformers' own sdpa function unchanged: dropout while training, a KV cache
(queries fewer than keys: generation's decoding steps), soft-capping, attention weights requested, a non-causal
module.

Who uses it, each only where a measurement on the machine says it is faster: fast-mode evaluation copies
(harness/eval/attention.py) and bf16 training on a CPU (harness/train/attention.py).
"""

from __future__ import annotations

NAME = "harness_blocked"  # the name transformers knows the kernel by (AttentionInterface)
BLOCK = 64  # queries per block: 64 measured fastest of 32 / 64 / 128 at 128-1,024 positions (bf16, AVX512-BF16)


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
    kind = query.device.type
    if torch.is_autocast_enabled(kind):  # as sdpa under autocast: all three in autocast's dtype (training: rotary
        low_dtype = torch.get_autocast_dtype(kind)  # leaves query and key in fp32, value in bf16)
        query, key, value = query.to(low_dtype), key.to(low_dtype), value.to(low_dtype)
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


def head_shape(model) -> tuple[int, int, int] | None:
    """(query heads, key-value heads, head dim) from the model's config (peft and multimodal wrappers included),
    or None when it has none or its heads do not group evenly."""
    from harness.model.scoring import base_model

    config = getattr(base_model(model), "config", None)
    config = getattr(config, "text_config", None) or config
    heads = getattr(config, "num_attention_heads", None)
    if not heads:
        return None
    kv = getattr(config, "num_key_value_heads", None) or heads
    dim = getattr(config, "head_dim", None) or getattr(config, "hidden_size", 0) // heads
    return (heads, kv, dim) if dim and heads % kv == 0 else None
