"""LoRA dropout on CPUs: the same dropout at a fraction of torch's cost, and no fp32 round trip for bf16 inputs.

peft puts an nn.Dropout in front of every LoRA adapter (method.dropout, 0.05 by default). On a CPU torch draws its
mask with bernoulli_, one Mersenne-Twister number per element: ~4.9 ns per element on 1 thread of an AMX Xeon
(2026-12-03), 13% of a bf16 LoRA step of SmolLM2-135M at batch 2 x 128 (210 adapters, 179 ms of 1.39 s). `FastDropout`
takes 15-bit numbers, four from each 64-bit output of numpy's PCG64 generator seeded with one draw of torch's
generator (so the run's seed decides every mask, and a checkpoint's saved torch RNG state resumes them): an element
is kept when its number is >= round(p x 32768), and kept elements are scaled by 1 / (1 - p') with
p' = round(p x 32768) / 32768, so the expectation is unchanged (p' differs from p by at most 1.5e-5; p = 0.05
gives 0.04999). The keep mask is made with integer arithmetic (a clamp), not a boolean tensor, whose conversion to
a float dtype takes torch ~1 ns per element on these CPUs. The masks differ from nn.Dropout's, so a LoRA run's
losses differ from peft's own by dropout noise; runs are reproducible from their seed.

Under autocast peft first casts a LoRA layer's input to the adapter's fp32 dtype (`_cast_input_dtype`) and autocast
casts the dropped input back to bf16 for lora_A: for the inputs that arrive in bf16 (o_proj's and down_proj's, the
outputs of bf16 products) two copies and an fp32 dropout per forward and again per backward. `replace_lora_dropout`
also gives each LoRA layer whose dropouts are all FastDropout or nn.Identity a `_cast_input_dtype` that leaves an
input already in autocast's dtype as it is, while autocast is on (outside it, peft's own). FastDropout applies a
bf16 (fp16) input's mask as x x {0, 1} and then one multiplication by the scale, computed in fp32 and rounded once,
which is what the fp32 dropout followed by autocast's cast gives: the same numbers forward and backward, bit for bit
(tests/test_dropout.py compares the gradients of a LoRA model both ways).

Measured on the AVX512-BF16 EPYC (Zen 4, 1 thread, 2026-12-04), masks of 393,216 elements: torch's 32-bit draws
0.50 ms, PCG64 0.19-0.22 ms; the boolean mask to fp32 and scaled 0.57 ms, the clamp 0.10 ms. A whole bf16 LoRA step
of SmolLM2-135M at batch 2 x 128 (`python -m benchmarks.training --lora-step-ab`, see docs/benchmarks.md).

`replace_lora_dropout(model)` (harness/train/fit.py, CPU runs) swaps every nn.Dropout inside a peft LoRA layer's
`lora_dropout` for a FastDropout with the same p; `restore_lora_dropout` puts nn.Dropout and peft's input casts
back (after training, before saving). The manifest records what was swapped (`lora_dropout`).
"""

from __future__ import annotations

LEVELS = 1 << 15  # 15 random bits per element


def threshold(p: float) -> int:
    """Pure: the 15-bit threshold for dropout probability p (an element is dropped when its number is below it)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
    return round(p * LEVELS)


def effective_p(p: float) -> float:
    """Pure: the probability an element is dropped with, round(p x 32768) / 32768."""
    return threshold(p) / LEVELS


def _module():
    import numpy as np
    import torch

    class FastDropout(torch.nn.Module):
        """nn.Dropout(p) with its mask drawn from 15-bit random numbers (module docstring)."""

        def __init__(self, p: float):
            super().__init__()
            self.p = float(p)
            self.cut = threshold(self.p)
            self.scale = LEVELS / (LEVELS - self.cut)

        def keep(self, n: int):
            """n 0/1 int16 numbers, 1 with probability 1 - p'; one draw of torch's generator seeds them."""
            seed = int(torch.empty((), dtype=torch.int64).random_())
            raw = np.random.PCG64(seed).random_raw((n + 3) // 4)  # four 16-bit numbers per 64-bit output
            numbers = torch.from_numpy(raw.view(np.int16)[:n]).bitwise_and_(LEVELS - 1)
            return numbers.sub_(self.cut - 1).clamp_(0, 1)  # number >= cut -> 1, else 0, without a bool tensor

        def forward(self, x):
            if not self.training or self.cut == 0:
                return x
            keep = self.keep(x.numel()).view(x.shape).to(x.device, x.dtype)
            if x.dtype in (torch.float32, torch.float64):
                return x * keep.mul_(self.scale)
            # bf16 / fp16: x * {0, 1} is exact, then x * scale in fp32 rounded once, as fp32 dropout + autocast's cast
            return (x * keep).mul_(self.scale)

        def extra_repr(self) -> str:
            return f"p={self.p}, effective_p={self.cut / LEVELS:.6f}"

    return FastDropout


_CLASS = None


def fast_dropout(p: float):
    global _CLASS
    if _CLASS is None:
        _CLASS = _module()
    return _CLASS(p)


_OWN_CAST = "_harness_own_cast_input_dtype"  # peft's _cast_input_dtype, kept while ours stands in for it


def _cast_input_dtype(self, x, dtype):
    """peft's LoRA input cast, except that under autocast an input already in autocast's dtype stays in it: lora_A's
    product casts to that dtype anyway, and FastDropout gives the same numbers in it (module docstring)."""
    import torch

    if x is not None and x.dtype != dtype:
        kind = x.device.type
        if torch.is_autocast_enabled(kind) and x.dtype == torch.get_autocast_dtype(kind):
            return x
    return getattr(self, _OWN_CAST)(x, dtype)


def _keeps_inputs(module) -> bool:
    """A vanilla LoRA layer (no DoRA or other variant) whose every dropout is FastDropout or nn.Identity."""
    import torch

    drops = getattr(module, "lora_dropout", None)
    if not isinstance(drops, torch.nn.ModuleDict) or not hasattr(module, "_cast_input_dtype") or not len(drops):
        return False
    if getattr(module, "lora_variant", None):
        return False
    return all(isinstance(d, _CLASS) or type(d) is torch.nn.Identity for d in drops.values())


def replace_lora_dropout(model) -> dict:
    """Swap the nn.Dropout modules of every LoRA layer's lora_dropout for FastDropout (same p), and give the layers
    that then have no other dropout the autocast-aware input cast; returns what the manifest records: {"kind",
    "layers", "p", "effective_p", "inputs_kept_in_autocast_dtype"} (layers 0 when there was nothing to swap)."""
    import types

    import torch

    global _CLASS
    if _CLASS is None:
        _CLASS = _module()
    swapped, kept, ps = 0, 0, set()
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            if type(drop) is torch.nn.Dropout and drop.p > 0:
                drops[name] = fast_dropout(drop.p)
                swapped += 1
                ps.add(drop.p)
        if _keeps_inputs(module) and not hasattr(module, _OWN_CAST):
            setattr(module, _OWN_CAST, module._cast_input_dtype)
            module._cast_input_dtype = types.MethodType(_cast_input_dtype, module)
            kept += 1
    return {"kind": "15-bit integer masks (harness/train/dropout.py)" if swapped else "none", "layers": swapped,
            "p": sorted(ps), "effective_p": sorted(effective_p(p) for p in ps), "inputs_kept_in_autocast_dtype": kept}


def restore_input_casts(model) -> list:
    """peft's own input cast back on every LoRA layer that had the autocast-aware one; returns those layers."""
    restored = [m for m in model.modules() if hasattr(m, _OWN_CAST)]
    for module in restored:
        del module._cast_input_dtype  # the instance's; the class's method shows again
        delattr(module, _OWN_CAST)
    return restored


def restore_lora_dropout(model) -> int:
    """nn.Dropout back in place of every FastDropout, and peft's own input casts (saved adapters and later use see
    peft's own modules). Returns how many dropouts were put back."""
    import torch

    restore_input_casts(model)
    n = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            if _CLASS is not None and isinstance(drop, _CLASS):
                drops[name] = torch.nn.Dropout(drop.p)
                n += 1
    return n
