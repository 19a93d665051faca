"""Frozen Linear weights cast to the training's autocast dtype once, not at every forward.

Under torch.autocast each F.linear casts its fp32 weight to bf16 (fp16). Autocast keeps such a cast for the rest
of the forward only for leaf tensors that require grad, so a frozen weight (the base layers of a LoRA run, a
tied LM head over a frozen embedding) is cast again at every forward: 106 M SmolLM2-135M weights read in fp32 and
written in bf16 per step. Measured on an AMD EPYC with native bf16 (AVX512-BF16), 1 thread, LoRA, batch 2 x 128
tokens: 1.35 s per step with the casts, 1.23 s with a copy kept per layer, the same losses bit for bit
(docs/benchmarks.md, "Frozen weights cast once").

`keep_casts(model)` gives every nn.Linear whose weight does not require grad a forward that, while autocast is
on, multiplies by a copy of the weight in autocast's dtype, made at its first use and kept on the layer (not a
parameter or buffer: never saved). The copy is the cast autocast would make (same rounding), so results are
identical; it is made again if the weight is changed in place (its version counter) or moved. Outside autocast
the layer runs its own forward. `drop_casts(model)` frees the copies and restores the forwards (after training,
before evaluation). Cost: 2 bytes per frozen weight while training (212 MB for SmolLM2-135M's LoRA base).
"""

from __future__ import annotations

import types

_KEY = "_harness_kept_cast"  # (dtype, device, version, data_ptr, copy)


def kept_weight(module, dtype):
    """module.weight in `dtype`: the kept copy when the weight is frozen and unchanged since it was made."""
    w = module.weight
    if w.requires_grad or w.dtype == dtype:
        return w
    kept = getattr(module, _KEY, None)
    if kept is None or kept[:4] != (dtype, w.device, w._version, w.data_ptr()):
        kept = (dtype, w.device, w._version, w.data_ptr(), w.detach().to(dtype))
        setattr(module, _KEY, kept)
    return kept[4]


def _autocast_dtype(x):
    import torch

    kind = x.device.type
    if not torch.is_autocast_enabled(kind):
        return None
    return torch.get_autocast_dtype(kind)


def _forward(self, x):
    import torch.nn.functional as F

    dtype = _autocast_dtype(x)
    if dtype is None or self.weight.requires_grad:
        return self._harness_uncast_forward(x)
    # F.linear under autocast casts x (and the bias) to `dtype`; the weight is already in it
    return F.linear(x, kept_weight(self, dtype), self.bias)


def keep_casts(model) -> int:
    """Patch every nn.Linear of `model` whose weight is frozen (see the module docstring). Returns how many."""
    import torch

    n = 0
    for m in model.modules():
        if type(m) is torch.nn.Linear and not m.weight.requires_grad and not hasattr(m, "_harness_uncast_forward"):
            m._harness_uncast_forward = m.forward
            m.forward = types.MethodType(_forward, m)
            n += 1
    return n


def drop_casts(model) -> int:
    """Undo keep_casts: the kept copies freed and the layers' own forwards back, except where another patch
    wraps ours (bf16cpu.py's: it then stays, and a later autocast forward makes its copy again). Returns how
    many layers got their own forward back."""
    n = 0
    for m in model.modules():
        if hasattr(m, _KEY):
            delattr(m, _KEY)
        if getattr(m.forward, "__func__", None) is _forward:
            own = m._harness_uncast_forward
            del m._harness_uncast_forward, m.forward  # the instance's patch; the class's forward shows again
            if getattr(own, "__func__", None) is not type(m).forward:
                m.forward = own  # an instance-level forward that was there before ours
            n += 1
    return n
