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
