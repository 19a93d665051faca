"""Device and precision resolution, shared by training and evaluation (train.device, train.precision).
"""

from __future__ import annotations

from harness.config import ConfigError, RunConfig


def resolve_precision(cfg: RunConfig, device: str) -> str:
    p = cfg.train.precision
    if p != "auto":
        return p
    import torch

    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # bf16 autocast on CPU is fast only with native bf16 instructions (AVX512-BF16 / AMX): ~2x faster
    # than fp32 there, but ~5x SLOWER on AVX2-only CPUs, where it is emulated (measured on this project's machines).
    return "bf16" if cpu_has_native_bf16() else "fp32"


def env_choice(var: str, choices: tuple[str, ...], hint: str) -> str:
    """The value of the environment switch `var` (choices[0], the default, when unset or empty); anything not
    in `choices` is an error that lists them, with `hint` on what the default does."""
    import os

    value = os.environ.get(var, choices[0]).strip().lower() or choices[0]
    if value not in choices:
        raise ValueError(f"{var}={value!r}: use one of {', '.join(choices)} ({hint})")
    return value


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in /proc/cpuinfo: bf16 matmuls run natively (harness.run.environment.cpu_identity)."""
    from harness.run.environment import cpu_identity

    return cpu_identity()["native_bf16"]


def resolve_device(cfg: RunConfig) -> str:
    import torch

    if cfg.train.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(["train.device=cuda but no CUDA device is available; use train.device=cpu or auto."])
    return cfg.train.device
