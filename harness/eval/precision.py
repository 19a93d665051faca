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

The layers' compute dtype too: a QLoRA trial that trained in bf16 (precision=auto on native-bf16 CPUs, GPUs) built
its Linear4bit layers with bnb_4bit_compute_dtype=bf16, and a Linear4bit casts its input to that dtype before the
product, whatever the model's other weights are. So the trial's own evaluation after training ran every 4-bit product
in bf16 while eval.json said fp32, and a fresh load of the same run (compute dtype fp32) scored other numbers:
the quickstart's QLoRA trial on a Zen 5 EPYC, WikiText-2 word perplexity 46.202 against 46.188, validation loss 1.8616
against 1.8643 (and 9.7 s against 15.6 s). exact_4bit sets every 4-bit layer's compute dtype to fp32 for the
evaluation, on every device, and release_4bit gives the training one back.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple


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


class Exact4bit(NamedTuple):
    """What exact_4bit changed, for release_4bit, and its record for eval.json (each suite's `bnb_4bit`)."""

    layers: list  # the 4-bit layers whose training layout this call held (CPU)
    record: dict
    widened: list  # (layer, compute_dtype, compute_type_is_set) of the layers this call switched to fp32 products


def exact_4bit(model, mode: str) -> Exact4bit | None:
    """In exact mode, make every bitsandbytes 4-bit layer multiply in fp32 (module docstring): its compute dtype set
    to fp32 on every device and, on a CPU, its training layout held (fp32 dequantize + matmul instead of the fused
    bf16 kernel); None for other modes and models. Layers someone else holds already (training, for a benchmark
    during training) are left to them."""
    from harness.model.methods import has_4bit, held_4bit_layers, hold_4bit_training_layout

    if mode != "exact" or not has_4bit(model):
        return None
    import bitsandbytes as bnb
    import torch

    from harness.model.load import model_device

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]  # not peft's wrapper of the same name
    widened = [(m, m.compute_dtype, m.compute_type_is_set) for m in layers
               if getattr(m, "compute_dtype", None) != torch.float32]
    for m, _, _ in widened:
        m.compute_dtype, m.compute_type_is_set = torch.float32, True
    record = {"kernel": "bitsandbytes' dequantize + fp32 matmul", "layers": len(layers), "compute_dtype": "float32"}
    if widened:
        was = sorted({str(d).replace("torch.", "") for _, d, _ in widened})
        record["compute_dtype_was"] = {"dtype": ", ".join(was), "layers": len(widened),
                                       "why": "the compute dtype the model was built with for training (bnb_4bit_compute_dtype)"}
    mine: list = []
    on_cpu = str(model_device(model)) == "cpu"
    if on_cpu:
        before = {id(m) for m in held_4bit_layers(model)}
        if hold_4bit_training_layout(model):
            mine = [m for m in held_4bit_layers(model) if id(m) not in before]
            record.update(kernel="dequantize + fp32 matmul (bitsandbytes' training layout held)",
                          why="exact mode: bitsandbytes' fused CPU inference kernel computes in bf16 on AVX512-BF16 "
                              "CPUs")
    if not mine and not widened and not on_cpu:
        return None  # a GPU model already computing in fp32: nothing to change or record
    return Exact4bit(mine, record, widened)


def release_4bit(model, held: Exact4bit | None) -> None:
    """Undo exact_4bit: the layers it held go back to bitsandbytes' choice, and their compute dtypes to what they were."""
    if held is None:
        return
    for m, dtype, was_set in held.widened:
        m.compute_dtype, m.compute_type_is_set = dtype, was_set
    if held.layers:
        from harness.model.methods import release_4bit_training_layout

        release_4bit_training_layout(model, only=held.layers)


def calibration_reference(model, precision: EvalPrecision):
    """Fast mode's exact reference for a 4-bit model: a copy whose 4-bit layers multiply in fp32 (exact_4bit, held
    for the copy's life), or None (a precision that is fp32 already, exact mode's or fast mode's on a CPU without
    native bf16, and a model without 4-bit layers: model_for gives their reference). model_for hands a 4-bit model back as it is in both modes, so without this
    the calibrations scored the fast model against itself and recorded a deviation of exactly 0. Taken before
    anything scores the model: bitsandbytes' repacking for its fused CPU kernel (fast mode's path, at the first
    forward in eval mode) rounds the absmax to bf16, and unpacking does not undo that. Costs one more copy of the
    4-bit weights while the suites run."""
    import copy

    from harness.model.methods import has_4bit

    if precision.dtype == "float32" or not has_4bit(model):
        return None
    reference = copy.deepcopy(model).eval()
    exact_4bit(reference, "exact")
    return reference


def exact_model_of(model, reference=None):
    """The model exact mode scores for `model`: `reference` when run_suites took one (a 4-bit model in fast mode:
    calibration_reference, SuiteContext.exact_model), else model_for(model, exact)."""
    from harness.model.load import model_device

    return reference if reference is not None else model_for(model, plan("exact", str(model_device(model))))


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
