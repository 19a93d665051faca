"""bf16 training on a CPU through the block-causal attention kernel (harness/train/attention.py,
harness/model/attention.py): its gradients equal sdpa's, it runs under autocast as the model calls it, and a run
switches to it only where a measurement says it is faster, records why and gives evaluation sdpa back.

    python -m pytest -q tests/test_train_attention.py
"""

from __future__ import annotations

import json
import types

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from harness import config
from harness.model.attention import BLOCK, NAME, blocked_attention
from harness.pipeline import train_run
from harness.run.record import read_summary
from harness.train import attention as ta
from tests.test_attention import packed_mask, qkv


def module(heads: int, kv_heads: int):
    return types.SimpleNamespace(is_causal=True, num_key_value_groups=heads // kv_heads, training=True)


def grads(fn, q, k, v, mask, upstream):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, _ = fn(module(q.shape[1], k.shape[1]), q, k, v, mask, dropout=0.0)
    out.backward(upstream)
    return out.detach(), q.grad, k.grad, v.grad


# ------------------------------------------------------------------------------- the kernel trains
@pytest.mark.parametrize("masked", [False, True], ids=["causal", "packed bool mask"])
def test_gradients_equal_sdpas_in_fp32(masked):
    q, k, v = qkv(b=2, n=2 * BLOCK + 7)
    mask = packed_mask(2, q.shape[2]) if masked else None
    upstream = torch.randn(2, q.shape[2], q.shape[1], q.shape[3], generator=torch.Generator().manual_seed(1))
    ours = grads(blocked_attention, q, k, v, mask, upstream)
    theirs = grads(sdpa_attention_forward, q, k, v, mask, upstream)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs):
        assert (a - b).abs().max() < 1e-4, name


def test_under_autocast_it_takes_what_the_model_hands_it():
    """Under bf16 autocast a Llama's rotary leaves query and key in fp32 and value in bf16; the kernel casts them
    as sdpa does (it once raised 'value cannot be converted to type c10::BFloat16') and trains."""
    q, k, v = qkv(b=1, n=100)
    v = v.to(torch.bfloat16)
    upstream = torch.randn(1, 100, 6, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = grads(blocked_attention, q, k, v, None, upstream)
        theirs = grads(sdpa_attention_forward, q, k, v, None, upstream)
    assert ours[0].dtype == torch.bfloat16 and ours[1].dtype == torch.float32  # grads in the leaves' dtype
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs):
        assert (a.float() - b.float()).abs().max() < 0.1, name  # bf16 rounding, not a different attention


# ---------------------------------------------------------------------------------- the decision
def test_decide_and_the_memory_bound_are_pure():
    assert ta.decide(7.0, 2.7)[0] is True and "2.59x" in ta.decide(7.0, 2.7)[1]
    assert ta.decide(10.0, 9.5)[0] is False  # 1.05x: noise
    with pytest.raises(ValueError, match="positive"):
        ta.decide(0.0, 1.0)
    # causal blocks of 64 over 128 positions keep 64 x 64 + 64 x 128 probabilities per head
    assert ta.saved_bytes(layers=1, batch=1, heads=1, positions=128) == 4 * (64 * 64 + 64 * 128)
    assert ta.saved_bytes(30, 2, 9, 512) < ta.MAX_SAVED_BYTES < ta.saved_bytes(30, 8, 9, 1024)


def _llama(attn="sdpa", dropout=0.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, attention_dropout=dropout)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg)


def test_choose_measures_once_then_reads_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.delenv(ta.OVERRIDE_ENV, raising=False)
    model = _llama()
    first = ta.choose(model, batch=2, positions=96)
    assert first.source == "measured" and first.sdpa_ms > 0 and first.blocked_ms > 0
    assert (first.implementation == NAME) == ta.decide(first.sdpa_ms, first.blocked_ms)[0]
    assert model.config._attn_implementation == first.implementation
    path = tmp_path / ta.CACHE_KIND / f"{first.machine_key}.json"
    stored = json.loads(path.read_text())
    stored.update(sdpa_ms=9.0, blocked_ms=1.0)  # the next run reads this instead of measuring
    path.write_text(json.dumps(stored))
    other = _llama()
    second = ta.choose(other, batch=2, positions=96)
    assert second.source == "cache" and second.implementation == NAME and other.config._attn_implementation == NAME
    ta.restore(other, second)
    assert other.config._attn_implementation == "sdpa"


def test_what_is_not_switched(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.setenv(ta.OVERRIDE_ENV, "blocked")
    assert ta.choose(_llama("eager"), 2, 64).source == "not applicable"
    assert "dropout" in ta.choose(_llama(dropout=0.1), 2, 64).reason
    monkeypatch.setattr(ta, "MAX_SAVED_BYTES", 1000)
    big = _llama()
    decision = ta.choose(big, 2, 64)
    assert "GiB" in decision.reason and big.config._attn_implementation == "sdpa"
    monkeypatch.setenv(ta.OVERRIDE_ENV, "sdpa")
    monkeypatch.setattr(ta, "MAX_SAVED_BYTES", 1 << 30)
    assert ta.choose(_llama(), 2, 64).source == "forced" and not (tmp_path / ta.CACHE_KIND).exists()
    monkeypatch.setenv(ta.OVERRIDE_ENV, "fastest")
    with pytest.raises(Exception, match="auto"):
        ta.choose(_llama(), 2, 64)


def test_own_kernel_puts_sdpa_in_for_scoring_and_the_blocked_kernel_back():
    model = _llama()
    model.set_attn_implementation(ta.register())
    with ta.own_kernel(model):
        assert model.config._attn_implementation == "sdpa"
    assert model.config._attn_implementation == NAME
    with pytest.raises(RuntimeError), ta.own_kernel(model):
        raise RuntimeError("a failed evaluation")
    assert model.config._attn_implementation == NAME  # back whatever happened
    eager = _llama("eager")
    with ta.own_kernel(eager):
        assert eager.config._attn_implementation == "eager"


# ---------------------------------------------------------------------------------- through the trainer
def test_a_bf16_run_records_it_trains_through_it_and_evaluates_with_sdpa(tiny_overrides, monkeypatch):
    losses = {}
    for forced in ("blocked", "sdpa"):
        monkeypatch.setenv(ta.OVERRIDE_ENV, forced)
        ov = tiny_overrides + ["method=full", "train.precision=bf16", "train.max_steps=3", f"run_id=attn{forced}"]
        status, run_dir = train_run(config.compose(ov), ov)
        assert status == "completed", read_summary(run_dir)
        rec = json.loads((run_dir / "manifest.json").read_text())["train_attention"]
        assert rec["source"] == "forced" and rec["implementation"] == (NAME if forced == "blocked" else "sdpa")
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[forced] = [(r["train_loss"], r["grad_norm"]) for r in rows if "train_loss" in r]
        saved = json.loads((run_dir / "model" / "config.json").read_text())
        assert saved.get("_attn_implementation", "sdpa") != NAME  # the saved model carries no harness kernel
    assert len(losses["blocked"]) == 3
    # the same attention, rounded differently in bf16: losses and gradient norms agree to bf16's precision
    for (loss_b, norm_b), (loss_s, norm_s) in zip(losses["blocked"], losses["sdpa"], strict=True):
        assert loss_b == pytest.approx(loss_s, rel=1e-3) and norm_b == pytest.approx(norm_s, rel=1e-2)


def test_validation_during_training_is_the_val_suites_number_with_the_blocked_kernel(tiny_overrides, monkeypatch):
    """Training's block-causal kernel and sdpa round differently in fp32 too: the validation loss the trainer logs
    at the last step is scored with sdpa, as the `val` suite after training, so the two are one number."""
    monkeypatch.setenv(ta.OVERRIDE_ENV, "blocked")
    ov = tiny_overrides + ["method=lora", "train.precision=bf16", "train.eval_every=3", "train.eval_batches=2",
                           "eval=quick", "eval.perplexity=[]", "eval.lm_eval.tasks=[]", "run_id=attnval"]
    status, run_dir = train_run(config.compose(ov), ov)
    assert status == "completed", read_summary(run_dir)
    assert json.loads((run_dir / "manifest.json").read_text())["train_attention"]["implementation"] == NAME
    val = json.loads((run_dir / "eval.json").read_text())["suites"]["val"]["metrics"]["loss"]
    assert read_summary(run_dir)["final_val_loss"] == pytest.approx(val, rel=1e-12)


def test_fp32_runs_keep_sdpa_unmeasured(tiny_overrides, monkeypatch):
    monkeypatch.delenv(ta.OVERRIDE_ENV, raising=False)
    ov = tiny_overrides + ["method=full", "train.precision=fp32", "train.max_steps=1", "run_id=attnfp32"]
    status, run_dir = train_run(config.compose(ov), ov)
    assert status == "completed"
    assert "train_attention" not in json.loads((run_dir / "manifest.json").read_text())
