"""Library warnings that ask nothing of the user, silenced one by one: the exact message, its category, its module.

    harness train model=tiny-llama data=alpaca-tiny method=lora     # cli.main() calls install() first

Each entry says what printed it and why nothing is asked of the user. Anything else a library says still shows.
  - transformers' FutureWarning "`is_gradient_checkpointing` is deprecated": peft's get_peft_model / PeftModel read
    that old property (getattr(model, "is_gradient_checkpointing", True)); our code never does, and it goes when
    peft moves to the new name. (The TrainingArguments one, "`gradient_checkpointing` is deprecated", is fixed at
    the source: harness/train/fit.py passes activation_checkpointing=.)
  - bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community ... `pip install kernels`", logged
    at import on CPUs with AVX512-BF16: it concerns 4-bit matmuls only, so a run whose method does not quantize
    (full, LoRA, DoRA) drops it; a quantizing method (QLoRA) keeps it, since installing `kernels` can speed it up.
"""

from __future__ import annotations

import logging
import warnings

FUTURE_WARNINGS = [  # (message regex, module regex)
    (r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),
]
KERNELS_LOGGER = "bitsandbytes.backends.cpu.ops"
KERNELS_HINT = "Failed to load CPU gemm_4bit_forward from kernels-community"


class KernelsHint(logging.Filter):
    """Drops bitsandbytes' `kernels` hint unless the run quantizes (keep=True)."""

    keep = False

    def filter(self, record: logging.LogRecord) -> bool:
        return self.keep or not str(record.msg).startswith(KERNELS_HINT)


KERNELS_FILTER = KernelsHint()


def install() -> None:
    """Silence the listed warnings for this process (idempotent)."""
    for message, module in FUTURE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning, module=module)
    logger = logging.getLogger(KERNELS_LOGGER)
    if KERNELS_FILTER not in logger.filters:
        logger.addFilter(KERNELS_FILTER)


def for_method(quantizes: bool) -> None:
    """What this run's method makes relevant: bitsandbytes' `kernels` hint only when it quantizes."""
    KERNELS_FILTER.keep = quantizes
