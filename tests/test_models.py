"""Model stage: tiny models build deterministically; conversion is cached and safe under concurrency;
the real GGUF models convert once and load as ordinary safetensors models."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from harness import atomic, config
from harness.model.load import build_tiny, identity, load_model_and_tokenizer, local_dir


def test_tiny_model_is_deterministic_and_has_chat_template():
    cfg = config.compose(["model=tiny-llama"]).model
    a, tok = build_tiny(cfg.tiny)
    b, _ = build_tiny(cfg.tiny)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert tok.chat_template and tok.bos_token and tok.eos_token and tok.pad_token
    ids = tok("Hello world")["input_ids"]
    assert tok.decode(ids) == "Hello world"


@pytest.mark.slow
def test_concurrent_conversion_is_safe(tmp_path):
    env = dict(os.environ, HARNESS_CACHE=str(tmp_path / "cache"))
    code = "from harness import config; from harness.model.load import local_dir; print(local_dir(config.compose(['model=tiny-gpt2']).model))"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate()[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outs)) == 1
    entries = [p.name for p in (tmp_path / "cache" / "models").iterdir() if not p.name.startswith(".") or p.suffix != ".lock"]
    assert [e for e in entries if not e.endswith(".lock")] == [os.path.basename(outs[0])], entries


def test_atomic_json_never_leaves_partial_files(tmp_path):
    p = tmp_path / "x.json"
    atomic.write_json(p, {"a": float("nan"), "b": [1, 2]})
    assert atomic.read_json(p) == {"a": "nan", "b": [1, 2]}
    assert [f.name for f in tmp_path.iterdir()] == ["x.json"]
    # a truncated last line of a JSONL file (killed writer) is skipped
    j = tmp_path / "m.jsonl"
    atomic.append_jsonl(j, {"step": 1})
    with open(j, "a") as f:
        f.write('{"step": 2, "trai')
    assert atomic.read_jsonl(j) == [{"step": 1}]


@pytest.mark.slow
def test_smollm2_converts_once_and_loads_fast():
    cfg = config.compose(["model=smollm2-135m"]).model
    d = local_dir(cfg)
    assert (d / "model.safetensors").exists() and (d / "config.json").exists()
    t0 = time.time()
    model, tok = load_model_and_tokenizer(cfg)
    assert time.time() - t0 < 15
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tok.chat_template and "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    ident = identity(cfg)
    assert len(ident["sha256"]) == 64


@pytest.mark.slow
def test_gemma3_assembles_converts_and_needs_bos():
    cfg = config.compose(["model=gemma3-270m"]).model
    assert cfg.add_bos
    model, tok = load_model_and_tokenizer(cfg)
    assert 250e6 < sum(p.numel() for p in model.parameters()) < 300e6
    assert tok.bos_token == "<bos>"
    ids = tok("Hello", return_tensors="pt")
    with torch.no_grad():
        out = model(**ids)
    assert torch.isfinite(out.logits).all()


@pytest.mark.slow  # bitsandbytes' import and two loads: ~9 s on the 2-core machine
def test_a_quantized_base_is_kept_and_loads_back_bit_identical(tmp_path, monkeypatch):
    """QLoRA on a CPU: the first load quantizes and keeps the result (quantized_dir); the next loads it as saved,
    without quantizing: the same tensors, the same tied head, and torch's RNG untouched on both paths (a run's
    LoRA init, drawn after the load, is the same whether the kept copy existed)."""
    import bitsandbytes.functional as bnbf

    from harness.model.load import quantized_dir
    from harness.model.methods import build_quant_config

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    cfg = config.compose(["model=tiny-llama", "method=qlora"])
    quant = build_quant_config(cfg.method, torch.float32)
    calls, real = [], bnbf.quantize_4bit
    monkeypatch.setattr(bnbf, "quantize_4bit", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    kept = quantized_dir(cfg.model, quant, torch.float32)
    assert kept is not None and not kept.exists()

    torch.manual_seed(0)
    first, _ = load_model_and_tokenizer(cfg.model, quantization_config=quant)
    after_first = torch.rand(4)
    quantized = len(calls)
    assert quantized > 0 and (kept / "config.json").exists() and list(kept.glob("*.safetensors"))
    torch.manual_seed(0)
    again, _ = load_model_and_tokenizer(cfg.model, quantization_config=quant)
    assert torch.equal(torch.rand(4), after_first)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(4), after_first)  # neither load drew from the RNG
    assert len(calls) == quantized  # loaded as kept, not quantized again
    a, b = first.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert type(again.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    ids = torch.tensor([[1, 5, 9, 12, 40]])
    with torch.no_grad():
        assert torch.equal(first(ids).logits, again(ids).logits)
    # other settings, another copy; a model harness does not cache itself, none
    other = build_quant_config(config.compose(["model=tiny-llama", "method=qlora-fp4"]).method, torch.float32)
    assert quantized_dir(cfg.model, other, torch.float32) not in (None, kept)
    hub = config.compose(["model=tiny-llama", "model.source=hub", f"model.path={local_dir(cfg.model)}"]).model
    assert quantized_dir(hub, quant, torch.float32) is None
