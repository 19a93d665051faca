"""Loglikelihood engine (harness/eval/engine.py): PackedHFLM scores every request as lm-eval's HFLM does, from
lm-eval's own encoded pairs, in order, with the same greedy flags and cache-hook calls; eval.mode's fast path
records its calibration.

    python -m pytest -q tests/test_engine.py              (slow tier: -m slow, smollm2-135m on every offline task)
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from harness import config
from harness.config import LmEvalConfig
from harness.eval import engine
from harness.eval.engine import PackedHFLM, allowed, fill_rows, mask_layout, pack_group, plan_batches, plan_groups
from harness.eval.lm_eval import bos_adding, build_lm, calibration_stats, run_tasks
from harness.eval.precision import EvalPrecision
from harness.model.load import load_model_and_tokenizer

TOL = 1e-4  # per-request loglikelihood, fp32


@pytest.fixture(scope="module")
def tiny():
    cfg = config.compose(["model=tiny-llama"])
    model, tok = load_model_and_tokenizer(cfg.model)
    return model.eval(), tok, cfg


def _pair(model, tok, max_length=64, batch_size=8, logits_cache=True):
    kw = dict(pretrained=model, tokenizer=tok, batch_size=batch_size, max_length=max_length)
    return HFLM(logits_cache=logits_cache, **kw), PackedHFLM(**kw)


def random_requests(seed: int, vocab: int, max_ctx: int = 30) -> list:
    """Items of 1-5 choices sharing a context, 1-token and multi-token continuations, exact duplicates,
    continuations that share their first tokens, and one request that needs left truncation (max_length 64)."""
    rng = random.Random(seed)
    tokens = lambda n: [rng.randrange(3, vocab) for _ in range(n)]  # noqa: E731
    reqs = []
    for _ in range(25):
        ctx = tokens(rng.randint(1, max_ctx))
        stem = tokens(rng.randint(0, 3))
        for _ in range(rng.randint(1, 5)):
            cont = stem + tokens(rng.choice([1, 1, 2, 5, 9]))
            reqs.append(((f"ctx{len(reqs)}", "cont"), ctx, cont))
    reqs.append((("dup", "x"), *reqs[0][1:]))
    reqs.append((("long", "x"), tokens(60), tokens(10)))  # 70 > max_length + 1: lm-eval's truncation path
    reqs.append((("long2", "x"), tokens(3), tokens(64)))  # exactly max_length + 1 tokens: no truncation
    rng.shuffle(reqs)
    return reqs


class Hook:
    def __init__(self):
        self.calls = []

    def add_partial(self, kind, key, value):
        self.calls.append((kind, key, value))


def assert_same(stock_res, ours_res, tol=TOL):
    assert len(stock_res) == len(ours_res)
    for k, (a, b) in enumerate(zip(stock_res, ours_res)):
        assert abs(a[0] - b[0]) <= tol, (k, a, b)
        assert a[1] == b[1], (k, a, b)


# ------------------------------------------------------------------------------------ planning (pure)
def test_groups_share_a_context_and_never_merge_unrelated_items():
    ctx_a, ctx_b = [1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 9, 9, 9, 9, 9, 9]  # share a 2-token start (an activity label)
    inputs = [ctx_a + [10, 11], ctx_a + [12], ctx_b + [13, 14], ctx_b + [15], ctx_a + [16, 17, 18]]
    groups = sorted(plan_groups(inputs), key=lambda g: g[1])
    assert groups == [(8, [0, 1, 4]), (8, [2, 3])]  # one row per context; the 2 shared tokens are not worth a merge
    # a winogrande-like pair: same sentence start, different option, same ending
    wino = [[5, 6, 7, 8, 9, 20, 30, 31, 32], [5, 6, 7, 8, 9, 21, 30, 31, 32]]
    assert plan_groups(wino) == [(5, [0, 1])]
    # unrelated requests that share one token (a BOS) stay apart
    assert len(plan_groups([[1, 2, 3, 4], [1, 5, 6, 7]])) == 2
    # the row length cap
    assert len(plan_groups([ctx_a + [10] * 20, ctx_a + [11] * 20], max_row=30)) == 2


def test_pack_group_maps_scored_positions_into_the_row():
    inputs = [[1, 2, 3, 4, 5], [1, 2, 3, 6], [1, 2, 3]]  # contexts [1,2,3] (+ cont [4,5,x]/[6,x]/[x])
    row = pack_group(3, [0, 1, 2], inputs, starts=[2, 2, 2], targets=[[4, 5, 7], [6, 8], [9]])
    assert row.tokens == [1, 2, 3, 4, 5, 6]
    assert row.positions == [0, 1, 2, 3, 4, 3]
    assert row.segments == [0, 0, 0, 1, 1, 2]
    assert row.scored == [(0, [2, 3, 4], [4, 5, 7]), (1, [2, 5], [6, 8]), (2, [2], [9])]


def test_mask_branch_sees_prefix_and_itself_only():
    grp = torch.tensor([[0, 0, 0, 0, 0, 1, 1, -1]])
    seg = torch.tensor([[0, 0, 1, 1, 2, 0, 1, -1]])
    pos = torch.tensor([[0, 1, 2, 3, 2, 0, 1, 0]])
    m = allowed(grp, seg, pos)[0, 0]
    assert m.int().tolist() == [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0, 0],  # branch 2 skips branch 1
        [0, 0, 0, 0, 0, 1, 0, 0],  # a second group in the row sees nothing of the first
        [0, 0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 1],  # padding: itself only (no empty row)
    ]
    w = allowed(grp, seg, pos, window=2)[0, 0]
    assert w[3].int().tolist() == [0, 0, 1, 1, 0, 0, 0, 0]  # position 3 sees positions 2 and 3


def test_fill_rows_puts_short_groups_together_and_keeps_them_apart():
    inputs = [[1] * n for n in (5, 50, 20, 400, 30, 45)]
    starts, targets = [len(x) - 1 for x in inputs], [[7]] * len(inputs)
    rows = [pack_group(len(x), [i], inputs, starts, targets) for i, x in enumerate(inputs)]
    filled = fill_rows(rows, capacity=100)
    assert sorted(len(r.tokens) for r in filled) == [50, 100, 400]  # first fit: 50+45+5, 30+20; 400 alone
    for r in filled:
        assert len(r.groups) == len(r.tokens) and r.groups == sorted(r.groups)
        for i, where, _ in r.scored:  # each request's scored position is the last token of its own group
            g = r.groups[where[0]]
            assert where == [max(k for k, x in enumerate(r.groups) if x == g)] and len(inputs[i]) == r.groups.count(g)
            assert r.positions[where[0]] == len(inputs[i]) - 1


def test_batches_are_longest_first_and_within_budget():
    rows = [pack_group(n, [0], [[1] * n], [0], [[1]]) for n in (5, 50, 20, 400, 30)]  # one request each
    batches = plan_batches(rows, batch_size=2, tokens_per_row=60)
    assert [[len(r.tokens) for r in b] for b in batches] == [[400], [50, 30], [20, 5]]


# ------------------------------------------------------------------------------- against lm-eval's HFLM
@pytest.mark.slow
def test_packed_scores_equal_hflm_on_random_requests(tiny):
    model, tok, _ = tiny
    stock, ours = _pair(model, tok)
    stock.cache_hook, ours.cache_hook = Hook(), Hook()
    reqs = random_requests(0, model.config.vocab_size)
    want = stock._loglikelihood_tokens(reqs, disable_tqdm=True)
    got = ours._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert_same(want, got)
    calls = [sorted(h.calls, key=lambda c: repr(c[1])) for h in (stock.cache_hook, ours.cache_hook)]
    assert [c[:2] for c in calls[0]] == [c[:2] for c in calls[1]] and len(calls[0]) == len(reqs)
    assert_same([c[2] for c in calls[0]], [c[2] for c in calls[1]])
    # batch size does not change results
    _, ours1 = _pair(model, tok, batch_size=1)
    assert_same(want, ours1._loglikelihood_tokens(reqs, disable_tqdm=True))


def test_greedy_flags_match_when_continuations_are_greedy(tiny):
    model, tok, _ = tiny
    stock, ours = _pair(model, tok)
    rng = random.Random(1)
    reqs = []
    for _ in range(6):
        ctx = [rng.randrange(3, 200) for _ in range(rng.randint(2, 12))]
        with torch.no_grad():
            out = model.generate(torch.tensor([ctx]), max_new_tokens=4, do_sample=False, pad_token_id=0)[0, len(ctx):]
        greedy = out.tolist()
        reqs += [(None, ctx, greedy), (None, ctx, greedy[:1]), (None, ctx, greedy[:2] + [(greedy[2] + 1) % 200 + 3])]
    want = stock._loglikelihood_tokens(reqs, disable_tqdm=True)
    got = ours._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert_same(want, got)
    assert [g for _, g in got] == [True, True, False] * 6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_gives_argmaxs_index_on_ties(dtype):
    """The engine's greedy flag takes max(dim).indices (argmax is 5x slower on bf16 CPUs): the first of equal
    maxima, as lm-eval's argmax."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(300, 4096, generator=g) * 2).round().to(dtype)  # many ties at the maximum
    x[:, 7] = x.max(dim=-1).values  # and a tie with an early column in every row
    assert torch.equal(x.max(dim=-1).indices, x.argmax(dim=-1))


def test_token_boundary_and_trailing_space_score_as_lm_eval(tiny):
    """lm-eval's _encode_pair tokenises context + continuation together and cuts at the context's length (a
    trailing space moves to the continuation); the engine takes those pairs as they are. Reference: HFLM scoring
    each request on its own (logits_cache=False; see the next test for why not its one-token cache)."""
    model, tok, _ = tiny
    stock, ours = _pair(model, tok, max_length=128, logits_cache=False)
    pairs = [("The cat sat on the", " mat"), ("The cat sat on the ", "mat"), ("The cat sat on the m", "at"),
             ("un", "believable"), ("Question: what is 2+2?\nAnswer:", " 4"), ("Question: what is 2+2?\nAnswer:", " four"),
             ("hello wor", "ld and more"), ("x", " y")]
    insts = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    assert ours._encode_pair(*pairs[1]) == ours._encode_pair(*pairs[0])  # the trailing space moved
    want = stock.loglikelihood(insts, disable_tqdm=True)
    got = ours.loglikelihood(insts, disable_tqdm=True)
    assert_same(want, got)


def test_each_string_is_tokenised_once_per_call_in_one_batch_with_lm_evals_tokens(tiny, monkeypatch):
    """lm-eval's _encode_pair encodes the context again for every choice, one string per tokenizer call; the engine
    encodes the call's distinct strings in one batch first (plus one string checked against HFLM's tok_encode) and
    remembers them for the length of one loglikelihood call: the same pairs (trailing space and merge at the
    boundary included), the same scores, 2 items x 3 choices -> 6 whole strings + 2 contexts in one batch instead of
    12 single encodes, nothing kept after the call."""
    model, tok, _ = tiny
    assert tok.is_fast
    stock, ours = _pair(model, tok, max_length=128, logits_cache=False)
    items = [("The cat sat on the ", ["mat", " mat", "m at"]), ("hello wor", ["ld and more", "ld", "k"])]
    insts = [Instance(request_type="loglikelihood", doc={}, arguments=(c, e), idx=i)
             for c, ends in items for i, e in enumerate(ends)]
    singles, batches = [], []
    original_encode, original_call = type(tok).encode, type(tok).__call__

    def counting_encode(self, text, *a, **k):
        singles.append(text)
        return original_encode(self, text, *a, **k)

    def counting_call(self, text, *a, **k):
        batches.append(list(text) if isinstance(text, list) else text)
        return original_call(self, text, *a, **k)

    type(tok).encode, type(tok).__call__ = counting_encode, counting_call
    try:
        got = ours.loglikelihood(insts, disable_tqdm=True)
        n_ours, ours_batches, singles[:], batches[:] = len(singles), list(batches), [], []
        want = stock.loglikelihood(insts, disable_tqdm=True)
        n_stock = len(singles)
    finally:
        type(tok).encode, type(tok).__call__ = original_encode, original_call
    assert (n_stock, n_ours) == (12, 1)
    assert [len(b) for b in ours_batches] == [8] and len(set(ours_batches[0])) == 8
    assert_same(want, got)
    assert ours._encoded is None and ours._wanted is None
    monkeypatch.setattr(engine, "ENCODE_CHUNK", 3)  # a bounded batch: 8 strings in calls of 3, 3 and 2
    type(tok).__call__ = counting_call
    try:
        batches[:] = []
        assert_same(want, ours.loglikelihood(insts, disable_tqdm=True))
    finally:
        type(tok).__call__ = original_call
    assert [len(b) for b in batches] == [3, 3, 2] and sorted(sum(batches, [])) == sorted(ours_batches[0])
    for c, ends in items:  # outside a call: HFLM's own tok_encode, the same pairs
        assert [ours._encode_pair(c, e) for e in ends] == [stock._encode_pair(c, e) for e in ends]


def test_batched_encoding_gives_hflms_tokens_with_bos_and_falls_back_when_they_differ(tiny, monkeypatch):
    """With add_bos_token (BOS added unless the string already starts with it, HFLM's rule) every pre-encoded
    string is HFLM's tok_encode's; a tokenizer whose batch call disagrees with its single call leaves every string
    to tok_encode (nothing pre-encoded) and the scores stay HFLM's."""
    model, tok, _ = tiny
    tok = bos_adding(tok)  # the tiny tokenizer adds no BOS of its own (build_lm hands lm-eval this copy)
    kw = dict(pretrained=model, tokenizer=tok, batch_size=4, max_length=128, add_bos_token=True)
    stock, ours = HFLM(**kw), PackedHFLM(**kw)
    bos = tok.decode(stock.prefix_token_id)
    pairs = [("The cat sat on the ", "mat"), (bos + "Already here", " and more"), ("a b", " c"), ("a b", " d")]
    insts = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    encoded = ours._encode_all(insts)
    assert len(encoded) == 7
    for (string, add_special_tokens, left), ids in encoded.items():
        assert ids == stock.tok_encode(string, add_special_tokens=add_special_tokens, left_truncate_len=left)
    assert any(s.startswith(bos) for s, _, _ in encoded) and stock.tok_encode("x")[0] == stock.prefix_token_id
    assert_same(stock.loglikelihood(insts, disable_tqdm=True), ours.loglikelihood(insts, disable_tqdm=True))
    original_call = type(tok).__call__
    monkeypatch.setattr(type(tok), "__call__", lambda self, text, *a, **k: (
        {"input_ids": [[0] + ids for ids in original_call(self, text, *a, **k)["input_ids"]]}
        if isinstance(text, list) else original_call(self, text, *a, **k)))
    assert ours._encode_all(insts) == {}
    assert_same(stock.loglikelihood(insts, disable_tqdm=True), ours.loglikelihood(insts, disable_tqdm=True))


def test_without_a_split_head_a_release_that_cannot_take_a_mask_is_scored_by_hflm(tiny, monkeypatch):
    """With no split head the engine passes a boolean logits_to_keep; transformers before 5.23 slices
    `hidden[:, logits_to_keep, :]` and raises IndexError on it. The engine tries the mask once (scoring.py
    supports_logits_to_keep) and leaves such a model to HFLM's own path: the same scores, no error."""
    import transformers.models.llama.modeling_llama as llama

    model, tok, _ = tiny
    stock, ours = _pair(model, tok, logits_cache=False)
    monkeypatch.setattr(engine, "split_head", lambda m: None)
    monkeypatch.setattr(llama, "slice_logits_to_keep",
                        lambda h, k: h[:, slice(-k, None) if isinstance(k, int) else k, :])
    reqs = random_requests(3, model.config.vocab_size)
    want = stock._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert_same(want, ours._loglikelihood_tokens(reqs, disable_tqdm=True))
    assert ours._split() is None and ours._keeps_mask() is False


def test_loglikelihood_runs_without_the_cyclic_collector_and_gives_its_state_back(tiny, monkeypatch):
    """The collector walks the process's objects each time it runs: paused for a loglikelihood call, restored
    after, also when it was off before or the call raises."""
    import gc

    model, tok, _ = tiny
    _, ours = _pair(model, tok)
    seen = []
    real = PackedHFLM._loglikelihood_tokens

    def spy(self, *a, **k):
        seen.append(gc.isenabled())
        return real(self, *a, **k)

    monkeypatch.setattr(PackedHFLM, "_loglikelihood_tokens", spy)
    insts = [Instance(request_type="loglikelihood", doc={}, arguments=("The cat", " sat"), idx=0)]
    assert gc.isenabled()
    ours.loglikelihood(insts, disable_tqdm=True)
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        with engine.collection_paused():
            pass
        assert not gc.isenabled()  # off before, off after
    finally:
        gc.enable()
    with pytest.raises(RuntimeError):
        with engine.collection_paused():
            raise RuntimeError("boom")
    assert gc.isenabled()


def test_lm_evals_one_token_cache_misreads_a_colliding_request(tiny):
    """lm-eval 0.4's one-token cache (Collator group_by="contexts") groups requests by context + continuation[:-1];
    when a one-token continuation collides with another context's longer one ("the" + " m|at" vs "the m" + "at"),
    it gathers the shorter one's log-probability at the first continuation position of the longer one (the greedy
    flag uses the right, trailing slice). The engine scores every request at its own positions, as HFLM does for
    that request alone: it follows HFLM without the cache, and differs from HFLM with it only there."""
    model, tok, _ = tiny
    cached, ours = _pair(model, tok, max_length=128)
    alone = _pair(model, tok, max_length=128, logits_cache=False)[0]
    reqs = [(p, *cached._encode_pair(*p)) for p in [("The cat sat on the", " mat"), ("The cat sat on the m", "at")]]
    assert reqs[0][1] + reqs[0][2][:-1] == reqs[1][1] + reqs[1][2][:-1] and len(reqs[1][2]) == 1  # the collision
    got = ours._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert_same(alone._loglikelihood_tokens(reqs, disable_tqdm=True), got)
    assert_same([cached._loglikelihood_tokens(reqs[1:], disable_tqdm=True)[0]], got[1:])  # alone, the cache is right
    misread = cached._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert abs(misread[1][0] - got[1][0]) > 1e-3 and abs(misread[0][0] - got[0][0]) <= TOL


def test_rolling_loglikelihood_equals_hflm(tiny):
    model, tok, _ = tiny
    stock, ours = _pair(model, tok, max_length=32)
    text = "A long document about many things. " * 12
    insts = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i)
             for i, t in enumerate([text, text[:50], "short"])]
    want = stock.loglikelihood_rolling(insts, disable_tqdm=True)
    got = ours.loglikelihood_rolling(insts, disable_tqdm=True)
    assert all(abs(a - b) <= TOL for a, b in zip(want, got)), (want, got)


@pytest.mark.slow
def test_peft_wrapped_model_equals_hflm(tiny):
    from peft import LoraConfig, get_peft_model

    model, tok, _ = tiny
    base = load_model_and_tokenizer(config.compose(["model=tiny-llama"]).model)[0]
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():  # a non-zero adapter, so the LoRA path changes the numbers
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    peft_model.eval()
    assert mask_layout(peft_model) is not None
    stock, ours = _pair(peft_model, tok)
    reqs = random_requests(2, base.config.vocab_size)
    want = stock._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert_same(want, ours._loglikelihood_tokens(reqs, disable_tqdm=True))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gemma3_sliding_window_and_softcapping_equal_hflm(tiny, attn):
    """Sliding-window layers (window 8, shorter than most inputs) get their own mask; the final logit softcapping
    is the model's own (logits_to_keep); eager attention gets an additive float mask."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    _, tok, _ = tiny
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                           layer_types=["sliding_attention", "full_attention"] * 2, final_logit_softcapping=5.0,
                           max_position_embeddings=256, attn_implementation=attn)
    model = Gemma3ForCausalLM(cfg).eval()
    impl, windows = mask_layout(model)
    assert impl == attn and windows == {"sliding_attention": 8, "full_attention": None}
    stock, ours = _pair(model, tok)
    reqs = random_requests(3, len(tok))
    want = stock._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert_same(want, ours._loglikelihood_tokens(reqs, disable_tqdm=True))


def test_gpt2_equals_hflm():
    cfg = config.compose(["model=tiny-gpt2"])
    model, tok = load_model_and_tokenizer(cfg.model)
    stock, ours = _pair(model.eval(), tok)
    reqs = random_requests(4, model.config.vocab_size)
    want = stock._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert_same(want, ours._loglikelihood_tokens(reqs, disable_tqdm=True))


def test_build_lm_gives_the_engine_and_a_stock_one_on_request(tiny):
    model, tok, cfg = tiny
    assert type(build_lm(model, tok, model_cfg=cfg.model)) is PackedHFLM
    assert type(build_lm(model, tok, model_cfg=cfg.model, packed=False)) is HFLM


def test_model_add_bos_scores_with_bos_as_lm_eval_hf_does_when_the_tokenizer_adds_none(tiny):
    """`lm_eval --model hf --model_args add_bos_token=True` loads its tokenizer with add_bos_token=True. A tokenizer
    instance handed to HFLM is taken as it is, so build_lm gives lm-eval a copy that adds BOS (the tiny model's
    tokenizer adds none of itself; before this its exact mode differed from lm-eval by 0.2 nats per request)."""
    from harness.model.load import local_dir

    model, tok, cfg = tiny
    assert cfg.model.add_bos and tok.encode("a")[:1] != [tok.bos_token_id]
    reference = HFLM(pretrained=str(local_dir(cfg.model)), batch_size=4, dtype="float32", device="cpu",
                     add_bos_token=True)
    insts = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i)
             for i, p in enumerate([("Hello there, how", " are you"), ("A man", " walks a dog"), ("x", " y")])]
    want = reference.loglikelihood(insts, disable_tqdm=True)
    for packed in (True, False):
        assert_same(want, build_lm(model, tok, 4, model_cfg=cfg.model, packed=packed).loglikelihood(
            insts, disable_tqdm=True))
    assert tok.encode("a")[:1] != [tok.bos_token_id]  # the caller's tokenizer is left as it was


def test_a_bf16_model_is_log_softmaxed_in_fp32_and_scores_closer_to_fp32(tiny):
    """Fast mode's bf16 copy: lm-eval's default log-softmax would stay in bf16 (a step of 0.06 at -10 nats)."""
    model, tok, cfg = tiny
    assert build_lm(model, tok, model_cfg=cfg.model).softmax_dtype is None  # exact mode: lm-eval's own default
    half = copy.deepcopy(model).to(torch.bfloat16)
    lm = build_lm(half, tok, model_cfg=cfg.model)
    assert lm.softmax_dtype == torch.float32
    reqs = random_requests(6, model.config.vocab_size)
    exact = [ll for ll, _ in build_lm(model, tok, model_cfg=cfg.model)._loglikelihood_tokens(reqs, disable_tqdm=True)]
    lm.softmax_dtype = None  # what lm-eval's default would give
    in_bf16 = [ll for ll, _ in lm._loglikelihood_tokens(reqs, disable_tqdm=True)]
    lm.softmax_dtype = torch.float32
    in_fp32 = [ll for ll, _ in lm._loglikelihood_tokens(reqs, disable_tqdm=True)]
    err = lambda got: max(abs(a - b) for a, b in zip(got, exact, strict=True))  # noqa: E731
    assert err(in_fp32) < err(in_bf16), (err(in_fp32), err(in_bf16))


# ------------------------------------------------------------------------------------------ eval.mode
def test_calibration_stats():
    exact = [[-1.0, -2.0], [-3.0, -1.0, -2.0]]
    fast = [[-1.1, -2.0], [-0.5, -1.0, -2.5]]
    c = calibration_stats(exact, fast)
    assert c["items"] == 2 and c["requests"] == 5
    assert c["max_abs_delta"] == pytest.approx(2.5) and c["mean_abs_delta"] == pytest.approx((0.1 + 2.5 + 0.5) / 5)
    assert c["same_argmax"] == 0.5  # the second item's prediction moved from choice 1 to choice 0
    with pytest.raises(ValueError, match="different items"):
        calibration_stats(exact, fast[:1])


@pytest.mark.slow
def test_forced_bf16_fast_mode_records_mode_precision_and_calibration(tiny):
    from harness.eval.precision import model_for

    model, tok, cfg = tiny
    precision = EvalPrecision("fast", "bfloat16", "forced in a test")
    fast_model = model_for(model, precision)
    assert fast_model is not model and next(fast_model.parameters()).dtype == torch.bfloat16
    lm_cfg = LmEvalConfig(tasks=["arc_easy"], limit=4, batch_size=4)
    suites = run_tasks(fast_model, tok, lm_cfg, cfg.model, None, precision=precision, exact_model=model)
    entry = suites["arc_easy"]
    assert entry["mode"] == "fast" and entry["precision"] == precision.record()
    cal = entry["calibration"]
    assert cal["items"] == 4 and cal["requests"] >= 12
    assert 0 < cal["max_abs_delta"] < 0.5 and cal["mean_abs_delta"] <= cal["max_abs_delta"]  # bf16 moves them a bit
    assert 0.0 <= cal["same_argmax"] <= 1.0
    exact = run_tasks(model, tok, lm_cfg, cfg.model, None, precision=EvalPrecision("exact", "float32", "x"))["arc_easy"]
    assert exact["mode"] == "exact" and "calibration" not in exact


@pytest.mark.slow
def test_calibration_scores_only_the_exact_side_and_compares_the_reported_numbers(tiny, tmp_path, monkeypatch):
    """The fast side of the calibration is the task's own run (its first items), not a second fast-mode run."""
    import json

    from harness.eval import lm_eval as le
    from harness.eval.precision import model_for

    model, tok, cfg = tiny
    precision = EvalPrecision("fast", "bfloat16", "forced in a test")
    scored = []
    real = le.item_loglikelihoods
    monkeypatch.setattr(le, "item_loglikelihoods", lambda lm, *a: scored.append(lm) or real(lm, *a))
    lm_cfg = LmEvalConfig(tasks=["arc_easy"], limit=6, batch_size=4)
    entry = run_tasks(model_for(model, precision), tok, lm_cfg, cfg.model, tmp_path, precision=precision,
                      exact_model=model)["arc_easy"]
    assert len(scored) == 1 and next(scored[0].model.parameters()).dtype == torch.float32  # the exact side only
    rows = [json.loads(line) for line in (tmp_path / "samples" / "arc_easy.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and entry["calibration"]["items"] == 6
    exact_lm = le.build_lm(model, tok, 4, model_cfg=cfg.model)
    exact = real(exact_lm, "arc_easy", lm_cfg, 3)
    fast = [[0.0] * len(xs) for xs in exact] + [[0.0]]  # handed numbers: compared as given, first items only
    assert le.calibrate(exact_lm, None, "arc_easy", lm_cfg, items=3, fast=fast) == le.calibration_stats(exact, fast[:3])


@pytest.mark.slow
def test_run_suites_records_the_mode_in_eval_json(tmp_path, monkeypatch):
    from harness import atomic
    from harness.eval import precision as prec
    from harness.eval.suites import run_suites

    cfg = config.compose(["model=tiny-llama", "data=alpaca-tiny", "tracker=none", "eval=none", "eval.mode=fast",
                          "eval.lm_eval.tasks=[piqa]", "eval.lm_eval.limit=3"])
    model, tok = load_model_and_tokenizer(cfg.model)
    monkeypatch.setattr(prec, "plan", lambda mode, device, native_bf16=None: EvalPrecision(
        mode, "bfloat16" if mode == "fast" else "float32", "forced in a test"))
    run_suites(model, tok, cfg, tmp_path, progress=False)
    entry = atomic.read_json(tmp_path / "eval.json")["suites"]["piqa"]
    assert entry["mode"] == "fast" and entry["precision"]["dtype"] == "bfloat16"
    assert entry["calibration"]["items"] == 3
    assert next(model.parameters()).dtype == torch.float32  # the trained model itself is not converted


def test_the_report_names_runs_evaluated_in_other_modes(tmp_path):
    """eval.json entries carry mode + precision; the report's eval-settings check names a difference in them."""
    from tests.fixtures_runs import make_study
    from tests.test_report_evidence import edit_eval, report

    make_study(tmp_path / "runs", "demo", n_configs=3, seeds=2, items=20, failures=False, baseline=False)
    flip = iter(range(100))

    def set_mode(ev, _):
        fast = next(flip) % 3 == 0
        ev["suites"]["hellaswag"].update(mode="fast" if fast else "exact",
                                         precision={"mode": "fast" if fast else "exact",
                                                    "dtype": "bfloat16" if fast else "float32", "reason": "test"})

    edit_eval(tmp_path / "runs", set_mode)
    res, md, _ = report(tmp_path)
    lines = [w for w in res["warnings"] if "hellaswag" in w]
    assert len(lines) == 1 and 'eval.mode = "exact (float32)" (4 runs), "fast (bfloat16)" (2 runs)' in lines[0], lines
    assert lines[0] in md


# -------------------------------------------------------------------------------- the real model
MC_TASKS = ["hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "openbookqa"]


@pytest.fixture(scope="module")
def smollm():
    cfg = config.compose(["model=smollm2-135m"])
    model, tok = load_model_and_tokenizer(cfg.model)
    return model.eval(), tok, cfg


def _samples(lm, task: str, limit: int):
    from lm_eval import simple_evaluate

    from harness.eval.lm_eval import task_manager, task_name

    full = task_name(task)
    out = simple_evaluate(model=lm, tasks=[full], limit=limit, log_samples=True, task_manager=task_manager([task]),
                          bootstrap_iters=0, verbosity="ERROR")
    return sorted(out["samples"][full], key=lambda s: s["doc_id"])


@pytest.mark.slow  # smollm2-135m, 4 items of each of 6 tasks, both engines: ~2-4 min on 2 shared CPU cores
@pytest.mark.parametrize("task", MC_TASKS)
def test_smollm2_every_task_equals_lm_eval(smollm, task):
    model, tok, cfg = smollm
    stock = build_lm(model, tok, 8, model_cfg=cfg.model, packed=False)
    ours = build_lm(model, tok, 8, model_cfg=cfg.model)
    want, got = _samples(stock, task, 4), _samples(ours, task, 4)
    for a, b in zip(want, got, strict=True):
        la = [float(r[0]) for r in a["filtered_resps"]]
        lb = [float(r[0]) for r in b["filtered_resps"]]
        assert max(abs(x - y) for x, y in zip(la, lb, strict=True)) <= TOL, (task, a["doc_id"], la, lb)
        for key in ("acc", "acc_norm"):
            assert a.get(key) == b.get(key), (task, a["doc_id"], key)


@pytest.mark.slow  # smollm2-135m in emulated bf16 on 4 hellaswag items: ~1-2 min
def test_smollm2_forced_bf16_fast_mode_within_tolerance(smollm):
    from harness.eval.precision import model_for

    model, tok, cfg = smollm
    precision = EvalPrecision("fast", "bfloat16", "forced in a test")
    suites = run_tasks(model_for(model, precision), tok, LmEvalConfig(tasks=["hellaswag"], limit=4), cfg.model, None,
                       precision=precision, exact_model=model)
    cal = suites["hellaswag"]["calibration"]
    assert cal["items"] == 4 and cal["requests"] == 16
    assert 0 < cal["mean_abs_delta"] < 1.0 and cal["max_abs_delta"] < 3.0, cal  # bf16: about 0.1-0.5 nats per choice
