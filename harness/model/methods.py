"""Method builders: the only place where full / LoRA / QLoRA / DoRA / 8-bit differ.

    quant = build_quant_config(cfg.method, compute_dtype)   # None for unquantized methods
    lora  = build_peft_config(cfg.method, target_modules)   # None for full fine-tuning

Small pure functions over MethodConfig (no class hierarchy); bitsandbytes and peft stay here.
"""

from __future__ import annotations

from harness.config import MethodConfig


def build_quant_config(method: MethodConfig, compute_dtype):
    """bitsandbytes quantization of the frozen base (transformers' BitsAndBytesConfig), or None."""
    if method.quant == "none":
        return None
    from transformers import BitsAndBytesConfig

    if method.quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=method.quant,  # "nf4" | "fp4"
        bnb_4bit_use_double_quant=method.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def build_peft_config(method: MethodConfig, target_modules: list[str]):
    """peft LoraConfig for LoRA-family methods, or None for full fine-tuning."""
    if method.peft == "none":
        return None
    from peft import LoraConfig

    targets = "all-linear" if target_modules == ["all-linear"] else list(target_modules)
    return LoraConfig(
        r=method.r,
        lora_alpha=method.alpha,
        lora_dropout=method.dropout,
        target_modules=targets,
        use_dora=method.use_dora,
        use_rslora=method.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def linear_module_names(model) -> list[str]:
    """Leaf names of the Linear-like layers of a model (nn.Linear, bnb Linear4bit/8bitLt, GPT-2 Conv1D)."""
    names = set()
    for full_name, module in model.named_modules():
        kind = type(module).__name__
        if kind in ("Linear", "Linear4bit", "Linear8bitLt", "Conv1D") and not full_name.endswith("lm_head"):
            names.add(full_name.rsplit(".", 1)[-1])
    return sorted(names)


# bitsandbytes' CPU inference layout, held off while training (see hold_4bit_training_layout)
_HELD = "_harness_avx512bf16_layout"


def hold_4bit_training_layout(model) -> int:
    """Keep bitsandbytes' 4-bit layers in their training layout until release_4bit_training_layout; returns how many.

    On a CPU with AVX512-BF16, a Linear4bit repacks its weight for an inference kernel at its first forward in eval
    mode without grad (a validation pass, a benchmark during training) and keeps it that way. That kernel has no
    backward: every later training step loses the gradient through the layer's input (bitsandbytes only warns), so
    the adapters below it train on a cut gradient, and the repacking rounds the absmax to bf16 (a checkpoint save
    unpacks and re-quantizes it). Held: no repacking, and a layer already repacked is unpacked first."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    held = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit) or not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        state = getattr(module.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = bnbf._convert_weight_packed_for_cpu_inverse(
                module.weight.data, state)
        if not hasattr(module, _HELD):
            setattr(module, _HELD, module.support_avx512bf16_for_cpu)
        module.support_avx512bf16_for_cpu = False
        held += 1
    return held


def has_4bit(model) -> bool:
    """Whether `model` has bitsandbytes 4-bit layers (QLoRA): loaded in 4 bit, or a layer of that class (peft's
    LoRA wrapper of one carries the same name)."""
    return getattr(model, "is_loaded_in_4bit", False) or any(type(m).__name__ == "Linear4bit" for m in model.modules())


def held_4bit_layers(model) -> list:
    """The 4-bit layers hold_4bit_training_layout holds now."""
    return [m for m in model.modules() if hasattr(m, _HELD)]


def release_4bit_training_layout(model, only: list | None = None) -> int:
    """Undo hold_4bit_training_layout (for the layers in `only` when given, e.g. those one caller held itself):
    bitsandbytes may use its inference kernel again, as on a fresh load of the saved run. Returns how many layers
    were released."""
    released = 0
    chosen = None if only is None else {id(m) for m in only}
    for module in model.modules():
        if hasattr(module, _HELD) and (chosen is None or id(module) in chosen):
            module.support_avx512bf16_for_cpu = getattr(module, _HELD)
            delattr(module, _HELD)
            released += 1
    return released
