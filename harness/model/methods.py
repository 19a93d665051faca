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
