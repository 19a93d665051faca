"""Checks before any weights load: what a composed config names must exist on this machine.

    harness validate data.path=mine.jsonl train.device=cuda     # every problem at once, in a second
    harness sweep sweeps/NAME.yaml --dry-run                    # the same for every trial (check_trials)

preflight(cfg) returns every problem with its fix (like harness.config.validate), for what compose()
cannot see because it reads only the config: the data files exist (relative paths are under the data
root; Hub data set ids are left to the reader), train.device=cuda has a CUDA device, train.max_length
and model.context_length fit the context of a model given by path (its own config.json), and the LoRA
targets of such a model are its layers.

Cheap by design, so `harness validate` stays torch-free for the shipped models (their YAMLs list
linear_modules): CUDA is probed without importing torch (torch/version.py says whether this torch has
CUDA at all; the driver's /proc/driver/nvidia or /dev/nvidia* say whether a GPU is there; it reports
only a sure absence, and the trainer's torch.cuda.is_available() stays the last word). Only LoRA
targets named for a model given by path import torch: the model is built from its config.json on the
meta device (accelerate.init_empty_weights), no weights read, to list its Linear layers.
"""
from __future__ import annotations

import ast
import functools
import glob
import importlib.util
import os
import sys
from pathlib import Path

from harness import paths
from harness.config import RunConfig, target_modules
from harness.config.checks import did_you_mean
from harness.config.identity import context_from_config, model_config_json


def preflight(cfg: RunConfig, device: bool = True) -> list[str]:
    """Every problem that would otherwise surface only after the model has loaded, each with its fix. device=False
    leaves out the CUDA check: the trial runs on another machine (a sweep's Slurm array tasks on GPU nodes, submitted
    from a login node without one); its trainer checks there."""
    return [*_data_files(cfg), *(_device(cfg) if device else []), *_model(cfg)]


# ---------------------------------------------------------------------------------------- data
def missing_data_file(path: str) -> str | None:
    """Why a data path cannot be read (it does not exist and is no Hub data set id), or None."""
    if not path or paths.resolve_data_path(path).exists() or paths.is_hub_data_id(path):
        return None
    p = paths.resolve_data_path(path)
    under = "" if Path(path).expanduser().is_absolute() or path.startswith(("./", "../")) else (
        f"; relative paths are under the data root {paths.data_root()} (HARNESS_DATA), "
        f"write ./{path} for one under the working directory")
    return f"no such file or directory: {p}{under}"


def _data_files(cfg: RunConfig) -> list[str]:
    d, errors = cfg.data, []
    for key, path in (("data.path", d.path), ("data.eval_path", d.eval_path),
                      *((f"eval.perplexity[{i}].path", s.path) for i, s in enumerate(cfg.eval.perplexity))):
        why = missing_data_file(path)
        if why:
            errors.append(f"{key}={path}: {why}.")
    return errors


# -------------------------------------------------------------------------------------- device
def _torch_build() -> dict:
    """__version__, cuda and hip of the installed torch, read from torch/version.py without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return {}
    try:
        tree = ast.parse((Path(spec.origin).parent / "version.py").read_text(encoding="utf-8"))
    except OSError:
        return {}
    out = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and getattr(node, "value", None) is not None:
            try:
                out[target.id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def _nvidia_driver_loaded() -> bool:
    return os.path.exists("/proc/driver/nvidia") or bool(glob.glob("/dev/nvidia[0-9]*"))


def cuda_absent() -> str | None:
    """Why this machine surely has no usable CUDA device, or None when it may have one."""
    build = _torch_build()
    if not build:
        return "torch is not installed"
    if build.get("cuda") is None and build.get("hip") is None:
        return f"the installed torch {build.get('__version__', '')} is a CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    if build.get("hip") is None and sys.platform.startswith("linux") and not _nvidia_driver_loaded():
        return "no NVIDIA driver is loaded (no /proc/driver/nvidia, no /dev/nvidia*)"
    return None


def visible_gpus() -> int | None:
    """How many GPUs this process may use, without importing torch: 0 where CUDA is surely absent, the
    CUDA_VISIBLE_DEVICES list, else the NVIDIA driver's GPU entries; None when that cannot be told."""
    if cuda_absent():
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    found = glob.glob("/proc/driver/nvidia/gpus/*")
    return len(found) if found else None


def _device(cfg: RunConfig) -> list[str]:
    t, errors = cfg.train, []
    why = cuda_absent() if t.device == "cuda" else None
    if why:
        errors.append(f"train.device=cuda, but {why}; use train.device=cpu, or auto (the GPU where there is one).")
    if t.devices > 1 and not why:  # train.devices: one process per GPU, or CPU processes (docs/multi-device.md)
        gpus = visible_gpus() if t.device != "cpu" else 0
        if gpus and t.devices > gpus:
            errors.append(f"train.devices={t.devices}: one process per GPU, but this machine has {gpus} GPU(s) "
                          f"(train.device={t.device}). Use train.devices<={gpus}, or train.device=cpu for CPU processes.")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if gpus == 0 and t.devices > cores:
            errors.append(f"train.devices={t.devices} CPU processes, but this process may use {cores} core(s); each "
                          f"process needs one of its own (more only take turns). Use train.devices<={cores}.")
    return errors


# --------------------------------------------------------------------------------------- model
@functools.lru_cache(maxsize=8)
def linear_layer_names(path: str, revision: str = "", trust_remote_code: bool = False) -> tuple[str, ...]:
    """The dotted names of a model's Linear (and GPT-2 Conv1D) layers, from its config alone: the model
    is built on the meta device, no weights are read."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    conf = AutoConfig.from_pretrained(str(Path(path).expanduser()) if Path(path).expanduser().is_dir() else path,
                                      revision=revision or None, trust_remote_code=trust_remote_code)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(conf, trust_remote_code=trust_remote_code)
    return tuple(name for name, mod in model.named_modules()
                 if isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D")


def _model(cfg: RunConfig) -> list[str]:
    m, errors = cfg.model, []
    if m.source != "hub" or not m.path:
        return []  # tiny / gguf-package: their YAMLs describe them (checked at compose)
    conf, why = model_config_json(m.path, m.revision)
    own = context_from_config(conf) if conf else None
    if own is not None:
        for key, value in (("model.context_length", m.context_length), ("train.max_length", cfg.train.max_length)):
            if value > own:
                errors.append(f"{key}={value} is beyond the context of the model at {m.path} ({own}, its config.json); "
                              f"use {key}<={own}.")
    targets = target_modules(cfg)
    if cfg.method.peft != "lora" or m.linear_modules or targets == ["all-linear"]:
        return errors  # the compose-time rule checked them against model.linear_modules
    try:
        layers = linear_layer_names(m.path, m.revision, m.trust_remote_code) if conf is not None else None
    except Exception as exc:  # an architecture transformers does not know, remote code not trusted, ...
        layers, why = None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if layers is None:
        return errors + [f"method.target_modules={targets}: cannot list the layers of the model at {m.path} ({why}). "
                         "Name them in model.linear_modules=[...], or use method.target_modules=[all-linear]."]
    short = sorted({n.rsplit(".", 1)[-1] for n in layers})
    for x in targets:
        if not any(n == x or n.endswith("." + x) for n in layers):
            errors.append(f"method.target_modules: {x!r} is not a Linear layer of the model at {m.path}."
                          f"{did_you_mean(x, short)} Choose from: {', '.join(short)}, or all-linear.")
    return errors
