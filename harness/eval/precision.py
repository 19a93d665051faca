"""Evaluation modes: in which precision the evaluators run the model (eval.mode, named in eval.json and the report).

    exact   fp32, whatever the model was trained in: every loglikelihood as lm-eval computes it in fp32 (1e-4),
            the numbers to report and compare with published ones.
    fast    the fastest precision this device runs within tolerance: bf16 on a GPU and on CPUs with native bf16
            (AMX / AVX512-BF16). On other CPUs bf16 is emulated (~0.1x fp32's matmul speed) and dynamic int8 Linear
            layers move SmolLM2's per-token log-probabilities by ~1.5 nats (activation outliers), so fast mode
            runs fp32 there and says why. Suites that run in fast mode measure their deviation from exact mode on a
            calibration slice and record it beside their metrics.

`plan(mode, device)` decides (pure; the CPU's flags are passed in), `model_for(model, plan)` gives the model to
evaluate: the same object when its dtype already matches, else a converted copy (the trained model is never
changed in place: it may still be saved or evaluated by another suite).

4-bit (QLoRA) models in exact mode: on CPUs with AVX512-BF16 (AMX ones too) bitsandbytes 0.50 repacks a Linear4bit
at its first forward in eval mode for a fused kernel that casts the activations to bf16 ("cpu fused op only support
bf16"), whatever the compute dtype; on AVX2-only CPUs it dequantizes and multiplies in fp32. So the same QLoRA run
scored different numbers on the two kinds, and on native-bf16 CPUs its "fp32" numbers were bf16 ones (SmolLM2-135M
nf4, 4 x 256 random tokens: max |d logit| 1.85 against the dequantized fp32 model, which the training-layout path
matches exactly). `exact_4bit(model, mode)` holds the training layout (harness/model/methods.py) for the evaluation:
dequantize + fp32 product on every CPU kind, and faster for scoring there (4 x 256 tokens: 1.14 s against the fused
kernel's 1.91 s; one decoding token: 48 vs 26 ms). Fast mode keeps bitsandbytes' own choice.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EvalPrecision:
    mode: str  # exact | fast
    dtype: str  # float32 | bfloat16
    reason: str  # why this dtype on this device, for eval.json and the report

    def record(self) -> dict:
        return asdict(self)


def plan(mode: str, device: str, native_bf16: bool | None = None) -> EvalPrecision:
    """The precision of `mode` on `device` ("cpu", "cuda", ...). native_bf16: whether the CPU has native bf16
    instructions (read from /proc/cpuinfo when None)."""
    if mode == "exact":
        return EvalPrecision("exact", "float32", "exact mode: fp32, lm-eval's numbers")
    if mode != "fast":
        raise ValueError(f"eval.mode={mode!r}: must be exact or fast")
    if device.startswith("cuda"):
        return EvalPrecision("fast", "bfloat16", "fast mode on a GPU: bf16")
    if native_bf16 is None:
        from harness.model.device import cpu_has_native_bf16

        native_bf16 = cpu_has_native_bf16()
    if native_bf16:
        return EvalPrecision("fast", "bfloat16", "fast mode on a CPU with native bf16 (AMX / AVX512-BF16): bf16")
    return EvalPrecision("fast", "float32", "fast mode on a CPU without native bf16: bf16 is emulated (slower than "
                                            "fp32) and int8 Linear layers deviate too far, so fp32")


def exact_4bit(model, mode: str) -> tuple[list, dict] | None:
    """In exact mode, hold every bitsandbytes 4-bit layer of a CPU model in its training layout (fp32 dequantize +
    matmul; module docstring) -> (the layers held here, the record for eval.json), else None. Layers someone else
    holds already (training, for a benchmark during training) are left to them."""
    if mode != "exact" or not (getattr(model, "is_loaded_in_4bit", False) or _has_4bit(model)):
        return None
    from harness.model.load import model_device
    from harness.model.methods import held_4bit_layers, hold_4bit_training_layout

    if str(model_device(model)) != "cpu":
        return None
    before = {id(m) for m in held_4bit_layers(model)}
    if not hold_4bit_training_layout(model):
        return None
    mine = [m for m in held_4bit_layers(model) if id(m) not in before]
    return mine, {"kernel": "dequantize + fp32 matmul (bitsandbytes' training layout held)",
                  "layers": len(mine) + len(before),
                  "why": "exact mode: bitsandbytes' fused CPU inference kernel computes in bf16 on AVX512-BF16 CPUs"}


def release_4bit(model, held: tuple[list, dict] | None) -> None:
    """Undo exact_4bit for the layers it held."""
    if held is not None and held[0]:
        from harness.model.methods import release_4bit_training_layout

        release_4bit_training_layout(model, only=held[0])


def _has_4bit(model) -> bool:
    return any(type(m).__name__ == "Linear4bit" for m in model.modules())


def model_for(model, precision: EvalPrecision):
    """The model to evaluate in `precision`: `model` itself when its floating-point weights already have that
    dtype, else a copy converted to it (quantized base weights, e.g. QLoRA's 4-bit layers, are left as they are).
    A bf16 copy on a CPU runs the block-causal attention where it measures faster (harness/eval/attention.py); the
    model itself is never switched."""
    import copy

    import torch

    from harness.eval import attention

    dtype = getattr(torch, precision.dtype)
    floats = [p.dtype for p in model.parameters() if p.dtype.is_floating_point]
    if all(d == dtype for d in floats):
        return model
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return model  # bitsandbytes layers keep their storage; their compute dtype is set at load
    converted = copy.deepcopy(model).to(dtype)
    attention.choose(converted)
    return converted
