"""bf16 training on CPUs without native bf16 instructions: Linear layers through the fastest matmul layout.

On AVX2-only CPUs PyTorch emulates bf16 matmuls, and the speed depends tenfold on the operands' memory
layout. Measured on this project's machine (1 thread, T x I x O = 256 x 576 x 1536; `python -m
benchmarks.run --only matmul` has the square-matrix table):

    forward   F.linear(x, W)                          ~10 GFLOP/s
    backward  grad_x = g @ W            (autograd)      ~2.4 GFLOP/s   <- most of a LoRA step's time
    any       A @ B, A column-major, B row-major ("tn") ~20-24 GFLOP/s  (weight gradient g^T @ x is one)

`patch_linear_layers(model)` routes every plain nn.Linear of the model through a custom autograd function
that puts all three products in the "tn" layout: y = (xᵀ)ᵀ @ Wᵀ, grad_x = (gᵀ)ᵀ @ W, grad_W = gᵀ @ x, where
(·ᵀ)ᵀ is a transposed contiguous copy (T x I or O x I elements, small beside the T x O x I product).
Results equal autograd's up to bf16 rounding order. The trainer applies it only for
train.precision=bf16 on a CPU without avx512_bf16/amx_bf16 (harness.model.device.cpu_has_native_bf16); a patched
layer runs its stock forward outside CPU autocast or without gradients (evaluation, generation).
Quantized layers (bitsandbytes) are not plain nn.Linear and keep their own kernels.
"""

from __future__ import annotations

import types


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
