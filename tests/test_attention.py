"""The block-causal attention (harness/model/attention.py): the same attention as transformers' sdpa function
(checked in fp32, where only the summation order differs), its gradients, the cases it hands to sdpa, and when a
fast-mode copy gets it (harness/eval/attention.py).

    python -m pytest -q tests/test_attention.py
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from harness.eval import attention
from harness.model import attention as kernel
from harness.eval.attention import decide
from harness.model.attention import NAME, blocked_attention
from harness.eval.engine import allowed
from tests.test_engine import tiny  # noqa: F401 (fixture: the tiny Llama, fp32)

TOL = 1e-5  # fp32: the blocked kernel and sdpa differ only in summation order


def module(heads: int, kv_heads: int, training: bool = False):
    return types.SimpleNamespace(is_causal=True, num_key_value_groups=heads // kv_heads, training=training)


def qkv(b=2, heads=6, kv_heads=2, n=150, d=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g).to(dtype) for h in (heads, kv_heads, kv_heads))


def both(q, k, v, mask, **kw):
    m = module(q.shape[1], k.shape[1])
    ours, _ = blocked_attention(m, q, k, v, mask, **kw)
    theirs, _ = sdpa_attention_forward(m, q, k, v, mask, **kw)
    return ours, theirs


def packed_mask(b: int, n: int, seed: int = 0) -> torch.Tensor:
    """The engine's masks: rows of groups (prefix + branches) with padding at the end."""
    g = torch.Generator().manual_seed(seed)
    groups, segments, positions = (torch.full((b, n), -1), torch.full((b, n), -1), torch.zeros(b, n, dtype=torch.long))
    for r in range(b):
        at, group = 0, 0
        while at < n - 20:
            prefix, branches = int(torch.randint(5, 30, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
            groups[r, at:at + prefix], segments[r, at:at + prefix] = group, 0
            positions[r, at:at + prefix] = torch.arange(prefix)
            at += prefix
            for s in range(1, branches + 1):
                size = min(int(torch.randint(1, 9, (1,), generator=g)), n - at)
                groups[r, at:at + size], segments[r, at:at + size] = group, s
                positions[r, at:at + size] = torch.arange(prefix, prefix + size)
                at += size
            group += 1
    return allowed(groups, segments, positions)


# ------------------------------------------------------------------------------- the kernel itself
@pytest.mark.parametrize("n", [1 + kernel.BLOCK, 150, 2 * kernel.BLOCK])
def test_causal_blocks_equal_sdpa_in_fp32(n):
    """No mask (transformers' pure-causal case): grouped-query heads, a last block shorter than BLOCK."""
    q, k, v = qkv(n=n)
    ours, theirs = both(q, k, v, None)
    assert ours.shape == theirs.shape == (2, n, 6, 16)
    assert torch.allclose(ours, theirs, atol=TOL, rtol=TOL), (ours - theirs).abs().max()


def test_packed_bool_masks_and_their_padding_equal_sdpa():
    """The engine's masks (prefix + branches, padding rows that see only earlier padding) and a custom scale."""
    q, k, v = qkv(b=3, n=140, seed=1)
    mask = packed_mask(3, 140)
    ours, theirs = both(q, k, v, mask, scaling=0.3)
    assert torch.allclose(ours, theirs, atol=TOL, rtol=TOL), (ours - theirs).abs().max()


def test_a_mask_that_sees_later_keys_gets_full_width_blocks():
    """Not a subset of causal (a bidirectional prefix): keys after a block are still attended."""
    q, k, v = qkv(b=1, n=130, seed=2)
    mask = torch.ones(130, 130, dtype=torch.bool).tril()
    mask[:100, :100] = True  # the first 100 positions see each other both ways
    mask = mask[None, None]
    ours, theirs = both(q, k, v, mask)
    assert torch.allclose(ours, theirs, atol=TOL, rtol=TOL), (ours - theirs).abs().max()
    assert mask._harness_key_ranges[1][0] == (0, 100)  # the first block reads keys up to 100, past its end


def test_additive_float_masks_equal_sdpa():
    q, k, v = qkv(b=2, n=90, seed=3)
    bool_mask = packed_mask(2, 90, seed=3)
    additive = torch.zeros(bool_mask.shape).masked_fill(~bool_mask, torch.finfo(torch.float32).min)
    ours, theirs = both(q, k, v, additive)
    assert torch.allclose(ours, theirs, atol=TOL, rtol=TOL), (ours - theirs).abs().max()


def test_a_query_with_no_key_allowed_gives_no_nan():
    q, k, v = qkv(b=1, n=70)
    mask = torch.ones(70, 70, dtype=torch.bool).tril()[None, None].clone()
    mask[..., 5, :] = False
    ours, _ = blocked_attention(module(6, 2), q, k, v, mask)
    assert torch.isfinite(ours).all()


def test_key_ranges_skip_other_groups_and_are_redone_after_a_change():
    """Two packed groups that see only themselves: the second block of queries needs keys from 40, not from 0;
    the ranges are kept on the mask tensor for every layer and recomputed once it changes in place."""
    causal = torch.ones(80, 80, dtype=torch.bool).tril()
    group = torch.zeros(80, 80, dtype=torch.bool)
    group[:40, :40] = group[40:, 40:] = True
    mask = (causal & group)[None, None].clone()
    assert kernel._key_ranges(mask, 80) == [(0, 64), (40, 80)]
    assert mask._harness_key_ranges == (mask._version, [(0, 64), (40, 80)])
    mask[..., 70, 10] = True  # in place: the tensor's version moves on
    assert kernel._key_ranges(mask, 80) == [(0, 64), (10, 80)]
    q, k, v = qkv(b=1, n=80, seed=5)
    ours, theirs = both(q, k, v, mask)
    assert torch.allclose(ours, theirs, atol=TOL, rtol=TOL), (ours - theirs).abs().max()


def test_bf16_blocks_stay_within_bf16_rounding_of_an_fp32_reference():
    q, k, v = qkv(b=1, n=300, seed=4)
    reference, _ = sdpa_attention_forward(module(6, 2), q, k, v, None)
    ours, _ = blocked_attention(module(6, 2), *(t.to(torch.bfloat16) for t in (q, k, v)), None)
    assert ours.dtype == torch.bfloat16
    assert (ours.float() - reference).abs().max() < 0.05


@pytest.mark.parametrize("case", ["kv cache", "dropout in training", "softcap", "non-causal module"])
def test_what_the_kernel_does_not_cover_goes_to_sdpa(case, monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return sdpa_attention_forward(*args, **kwargs)

    monkeypatch.setattr(kernel, "_sdpa", lambda: spy)
    q, k, v = qkv(b=1, n=40)
    m, kw = module(6, 2), {}
    if case == "kv cache":
        q = q[:, :, -1:]  # one decoding step against 40 cached keys
    elif case == "dropout in training":
        m, kw = module(6, 2, training=True), {"dropout": 0.1}
    elif case == "softcap":
        kw = {"softcap": 30.0}
    else:
        m.is_causal = False
    if case == "softcap":
        with pytest.raises(ValueError, match="softcap"):  # sdpa's own answer
            blocked_attention(m, q, k, v, None, **kw)
    else:
        blocked_attention(m, q, k, v, None, **kw)
    assert len(calls) == 1


# ---------------------------------------------------------------------------------- the decision
def test_decide_needs_a_clear_speedup_and_positive_timings():
    assert decide(10.0, 5.0)[0] is True
    assert decide(10.0, 9.5)[0] is False  # 1.05x: within the noise, sdpa kept
    with pytest.raises(ValueError, match="positive"):
        decide(0.0, 1.0)


def test_a_bad_override_is_an_error_that_names_the_choices(monkeypatch):
    monkeypatch.setenv(attention.OVERRIDE_ENV, "fastest")
    with pytest.raises(ValueError, match="auto, blocked, sdpa"):
        attention.override()


def test_only_bf16_copies_on_a_cpu_are_switched_and_the_trained_model_never(tiny, monkeypatch):
    from harness.eval.precision import EvalPrecision, model_for

    model, _, _ = tiny
    monkeypatch.setenv(attention.OVERRIDE_ENV, "blocked")
    fast = model_for(model, EvalPrecision("fast", "bfloat16", "forced in a test"))
    assert fast.config._attn_implementation == NAME and model.config._attn_implementation == "sdpa"
    assert attention.describe(fast)["implementation"] == NAME and attention.describe(fast)["source"] == "forced"
    assert attention.describe(model) == {**attention.describe(model), "implementation": "sdpa", "source": "model"}
    fp32 = copy.deepcopy(model)
    assert attention.choose(fp32).source == "not applicable" and fp32.config._attn_implementation == "sdpa"
    monkeypatch.setenv(attention.OVERRIDE_ENV, "sdpa")
    kept = model_for(model, EvalPrecision("fast", "bfloat16", "forced in a test"))
    assert kept.config._attn_implementation == "sdpa" and attention.describe(kept)["source"] == "forced"


def test_auto_measures_once_per_shape_and_keeps_the_decision(tiny, monkeypatch):
    model, _, _ = tiny
    timings = []
    monkeypatch.setattr(attention, "_MEASURED", {})
    monkeypatch.setattr(attention, "measure", lambda *shape: timings.append(shape) or (4.0, 2.0))
    first = attention.choose(copy.deepcopy(model).to(torch.bfloat16))
    second = attention.choose(copy.deepcopy(model).to(torch.bfloat16))
    assert timings == [(4, 2, 16)] and first == second
    assert first.implementation == NAME and first.source == "measured" and "2.00x" in first.reason
    monkeypatch.setattr(attention, "_MEASURED", {})
    monkeypatch.setattr(attention, "measure", lambda *shape: (2.0, 2.1))
    slower = copy.deepcopy(model).to(torch.bfloat16)
    assert attention.choose(slower).implementation == "sdpa" and slower.config._attn_implementation == "sdpa"


def test_a_model_that_refuses_the_kernel_keeps_its_own(tiny, monkeypatch):
    model, _, _ = tiny
    monkeypatch.setenv(attention.OVERRIDE_ENV, "blocked")
    half = copy.deepcopy(model).to(torch.bfloat16)

    def refuse(name):
        raise ValueError(f"{name} is not supported by this architecture")

    monkeypatch.setattr(half, "set_attn_implementation", refuse)
    decision = attention.choose(half)
    assert decision.implementation == "sdpa" and decision.source == "not applicable"
    assert "not supported" in decision.reason and half.config._attn_implementation == "sdpa"


def test_the_real_measurement_times_both_kernels():
    sdpa_ms, blocked_ms = attention.measure(4, 2, 16, positions=128, reps=1)
    assert sdpa_ms > 0 and blocked_ms > 0


# ------------------------------------------------------------------- through the model and the engine
def switched(model):
    out = copy.deepcopy(model)
    out.set_attn_implementation(kernel.register())
    return out


def test_the_engine_packs_for_the_blocked_kernel_and_scores_as_hflm(tiny):
    """fp32 model switched to the blocked kernel: every packed request within 1e-4 of lm-eval's HFLM (sdpa)."""
    from tests.test_engine import _pair, assert_same, random_requests

    from harness.eval.engine import mask_layout

    model, tok, _ = tiny
    blocked = switched(model)
    assert mask_layout(blocked) == (NAME, {"all": None})
    stock, _ = _pair(model, tok)
    _, ours = _pair(blocked, tok)
    reqs = random_requests(7, model.config.vocab_size)
    assert_same(stock._loglikelihood_tokens(reqs, disable_tqdm=True), ours._loglikelihood_tokens(reqs, disable_tqdm=True))


def test_perplexity_windows_and_greedy_generation_are_unchanged_in_fp32(tiny):
    from harness.eval.perplexity import score_token_lists

    model, tok, _ = tiny
    blocked = switched(model)
    g = torch.Generator().manual_seed(5)
    docs = [torch.randint(3, model.config.vocab_size, (n,), generator=g).tolist() for n in (300, 97, 200)]
    args = (tok.eos_token_id, tok.bos_token_id, 128, 128, 4)
    for (a, n), (b, m) in zip(score_token_lists(model, docs, *args), score_token_lists(blocked, docs, *args)):
        assert n == m and abs(a - b) <= 1e-5 * abs(a)
    ids = torch.randint(3, model.config.vocab_size, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding, as batched generation has
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kw), blocked.generate(ids, **kw))


def test_eval_json_entries_name_the_attention_that_ran(tiny, tmp_path, monkeypatch):
    """Perplexity and lm-eval entries record `attention`: the blocked kernel for a fast-mode bf16 copy (forced
    here), the model's own sdpa in exact mode."""
    from harness.config import LmEvalConfig, PerplexitySuite
    from harness.eval.lm_eval import run_tasks
    from harness.eval.perplexity import run_suite_in_mode
    from harness.eval.precision import model_for, plan

    model, tok, cfg = tiny
    monkeypatch.setenv(attention.OVERRIDE_ENV, "blocked")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Evaluation in bf16 moves log-likelihoods a little. " * 12)
    suite = PerplexitySuite(name="mycorpus", path=str(corpus), max_length=16, stride=16, batch_size=2)
    fast, exact = plan("fast", "cpu", native_bf16=True), plan("exact", "cpu")
    entry, _ = run_suite_in_mode(model, tok, suite, fast, cfg.model, progress=False)
    assert entry["attention"]["implementation"] == NAME and entry["attention"]["source"] == "forced"
    entry, _ = run_suite_in_mode(model, tok, suite, exact, cfg.model, progress=False)
    assert entry["attention"]["implementation"] == "sdpa" and entry["attention"]["source"] == "model"
    lm_cfg = LmEvalConfig(tasks=["arc_easy"], limit=2)
    suites = run_tasks(model_for(model, fast), tok, lm_cfg, cfg.model, None, precision=fast)
    assert suites["arc_easy"]["attention"]["implementation"] == NAME
    assert model.config._attn_implementation == "sdpa"
