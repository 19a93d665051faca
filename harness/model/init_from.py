"""train.init_from=RUN_DIR: start training from a finished run's weights (SFT -> DPO chains).

    harness train data=alpaca-demo method=lora                                         # runs/.../SFT_RUN
    harness train data=dpo-en-demo train.objective=dpo method=lora train.init_from=runs/.../SFT_RUN

The run must be completed, of the same base model (model name and source), and have saved weights:
  adapter/  with a LoRA method: the adapter is loaded trainable and training continues it (the DPO reference is a
            frozen copy of it, harness/train/preference.py); with method=full it is merged into the base first
  model/    full weights: loaded in place of the base model (quantized as the method asks), then the method applies
Anything else is a ConfigError naming the run and the fix; fit() records it as a failed run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from harness import config
from harness.config import ConfigError, ModelConfig, RunConfig
from harness.run.record import read_summary

# the fields that make two model configs the same base model (the rest are hints: context length, LoRA targets, ...)
IDENTITY = ("name", "source", "path", "package", "gguf_file", "revision", "tiny")


@dataclass
class InitFrom:
    run_dir: Path
    kind: str  # "adapter" | "full"
    weights: Path  # run_dir/adapter or run_dir/model
    record: dict  # manifest.json init_from


def resolve_init_from(cfg: RunConfig) -> InitFrom:
    """Check train.init_from names a completed run of cfg's base model with saved weights."""
    run_dir = Path(cfg.train.init_from).expanduser()
    where = f"train.init_from={cfg.train.init_from}"
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError([f"{where}: not a run directory (no config.yaml); give runs/<name>/<run_id> of a finished run."])
    summary = read_summary(run_dir) or {}
    if summary.get("status") != "completed":
        raise ConfigError([f"{where}: that run's status is {summary.get('status')!r}, not completed; "
                           "train it to completion first (re-run it with its run_id to resume)."])
    old = config.load_run_config(run_dir)
    mine, theirs = _identity(cfg.model), _identity(old.model)
    if mine != theirs:
        diff = sorted(k for k in mine if mine[k] != theirs[k])
        raise ConfigError([f"{where}: that run trained model={old.model.name}, this one is model={cfg.model.name} "
                           f"({', '.join(diff)} differ); init_from needs the same base model."])
    adapter, full = run_dir / "adapter", run_dir / "model"
    if (adapter / "adapter_config.json").is_file():
        kind, weights = "adapter", adapter
    elif (full / "config.json").is_file():
        kind, weights = "full", full
    else:
        raise ConfigError([f"{where}: the run saved no weights (no adapter/ or model/; was it trained with "
                           "train.save_model=false?)."])
    record = {"run_dir": str(run_dir), "kind": kind, "name": summary.get("name"), "run_id": summary.get("run_id"),
              "objective": old.train.objective, "method": old.method.name, "data": old.data.name,
              "merged": kind == "adapter" and cfg.method.peft == "none"}
    return InitFrom(run_dir, kind, weights, record)


def _identity(m: ModelConfig) -> dict:
    d = dataclasses.asdict(m)
    if m.source != "tiny":
        d.pop("tiny")
    return {k: d[k] for k in IDENTITY if k in d}


def load_init_weights(init: InitFrom, model_cfg: ModelConfig, quantization_config=None, device: str = "cpu"):
    """(model, tokenizer) from a full-weights run: its model/ in place of the base, quantized if asked."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.model.load import bars_to_display, load_tokenizer

    bars_to_display()
    kwargs = dict(dtype=torch.float32, use_safetensors=True, trust_remote_code=model_cfg.trust_remote_code)
    if quantization_config is not None:
        kwargs.update(quantization_config=quantization_config, device_map={"": device})
    model = AutoModelForCausalLM.from_pretrained(str(init.weights), **kwargs)
    if quantization_config is None and device != "cpu":
        model = model.to(device)
    return model, load_tokenizer(model_cfg)


def load_init_adapter(model, init: InitFrom):
    """The run's adapter on `model`, trainable: training continues it."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(init.weights), is_trainable=True)


def merge_init_adapter(model, init: InitFrom):
    """The run's adapter merged into `model`'s weights (full fine-tuning from an adapter run)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(init.weights)).merge_and_unload()


def load_trained(run_dir: Path, cfg: RunConfig, device: str):
    """(model, tokenizer) of run_dir's saved final weights for evaluation, as `harness eval RUN_DIR` loads them
    (load_run_model), except that an adapter trained on another run's full weights (train.init_from of a
    full-weights run) is put on those weights, not on the base model."""
    import torch

    from harness.model.load import load_run_model
    from harness.model.methods import build_quant_config

    adapter = run_dir / "adapter"
    if cfg.train.init_from and (adapter / "adapter_config.json").is_file():
        init = resolve_init_from(cfg)
        if init.kind == "full":
            from peft import PeftModel

            base, tokenizer = load_init_weights(init, cfg.model, build_quant_config(cfg.method, torch.float32), device)
            return PeftModel.from_pretrained(base, str(adapter)).eval(), tokenizer
    model, tokenizer, _ = load_run_model(run_dir, cfg, device)
    return model, tokenizer
