"""bf16 training on CPUs without native bf16 instructions: a faster backward for Linear layers.

On AVX2-only CPUs PyTorch emulates bf16 matmuls, and the layouts differ tenfold. Measured on this project's
machine (1 thread, 256 x 576 x 1536, `python -m benchmarks.run --only matmul` has the full table):

    forward  F.linear(x, W)                  ~10 GFLOP/s
    backward grad_x = g @ W        (autograd)  ~2.4 GFLOP/s   <- most of a LoRA step's time
    backward F.linear(g, W.t().contiguous())  ~10.7 GFLOP/s  (same result)
    backward grad_W = g^T @ x                   ~19 GFLOP/s

`patch_linear_layers(model)` makes every plain nn.Linear of the model compute its input gradient the fast
way: a custom autograd function whose backward transposes W into a contiguous copy (O x I elements, small
beside the T x O x I matmul) and calls F.linear. Forward results and gradients are the same up to bf16
rounding order. The trainer applies it only for train.precision=bf16 on a CPU without avx512_bf16/amx_bf16
(harness.train.cpu_has_native_bf16); a patched layer runs its stock forward outside CPU autocast or without
gradients (evaluation, generation). Quantized layers (bitsandbytes) are not plain nn.Linear and keep
their own kernels.
"""

from __future__ import annotations

import types


def _function():
    import torch
    import torch.nn.functional as F

    class LinearFastBackward(torch.autograd.Function):
        @staticmethod
        @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.bfloat16)
        def forward(ctx, x, weight, bias):
            ctx.save_for_backward(x, weight)
            ctx.has_bias = bias is not None
            return F.linear(x, weight, bias)

        @staticmethod
        @torch.amp.custom_bwd(device_type="cpu")
        def backward(ctx, grad):
            x, weight = ctx.saved_tensors
            grad_x = grad_w = grad_b = None
            if ctx.needs_input_grad[0]:
                grad_x = F.linear(grad, weight.t().contiguous())
            if ctx.needs_input_grad[1]:
                grad_w = grad.reshape(-1, grad.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = grad.reshape(-1, grad.shape[-1]).sum(0)
            return grad_x, grad_w, grad_b

    return LinearFastBackward


_FN = None


def _forward(self, x):
    import torch

    if not torch.is_autocast_enabled("cpu") or not torch.is_grad_enabled():
        return self._harness_plain_forward(x)
    return _FN.apply(x, self.weight, self.bias)


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
