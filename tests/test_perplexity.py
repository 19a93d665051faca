"""Perplexity stage (harness/perplexity.py): pure math by hand, lm-eval's windows and wikitext
definitions, and sliding-window scoring on the tiny Llama against a direct full-sequence computation.

    python -m pytest tests/test_perplexity.py -x -q
"""

from __future__ import annotations

import functools
import math
import random
import re

import pytest

from harness import config, paths
from harness.config import PerplexitySuite
from harness.eval.perplexity import (
    aggregate,
    calibration,
    corpus_path,
    count_words,
    equal_length_batches,
    perplexity_metrics,
    prefix_token_id,
    read_corpus_text,
    run_perplexity,
    run_suite,
    run_suite_in_mode,
    score_token_lists,
    select_documents,
    split_head,
    wikitext_detokenize,
    wikitext_documents,
    window_spans,
)
from harness.eval.precision import plan
from harness.model.load import load_model_and_tokenizer
from harness.model.scoring import score_rows


# ------------------------------------------------------------------------------------ pure math
def test_perplexity_metrics_by_hand():
    m = perplexity_metrics(nll=10.0, tokens=5, words=4, n_bytes=20)
    assert m["token_perplexity"] == pytest.approx(math.exp(2.0))
    assert m["word_perplexity"] == pytest.approx(math.exp(2.5))
    assert m["byte_perplexity"] == pytest.approx(math.exp(0.5))
    assert m["bits_per_byte"] == pytest.approx(0.5 / math.log(2))
    # byte perplexity and bits per byte are the same quantity in two units
    assert m["byte_perplexity"] == pytest.approx(2 ** m["bits_per_byte"])


def test_aggregate_sums_before_dividing():
    rows = [{"nll": 2.0, "tokens": 1, "words": 1, "bytes": 4}, {"nll": 30.0, "tokens": 10, "words": 3, "bytes": 12}]
    m = aggregate(rows)
    assert m["word_perplexity"] == pytest.approx(math.exp(32.0 / 4))  # lm-eval's weighted_perplexity
    mean_of_docs = (math.exp(2.0) + math.exp(10.0)) / 2
    assert m["word_perplexity"] != pytest.approx(mean_of_docs)


def test_perplexity_metrics_reject_empty_counts():
    with pytest.raises(ValueError, match="tokens=0"):
        perplexity_metrics(1.0, 0, 1, 1)


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("n,L,stride", [(1, 8, 8), (7, 8, 8), (8, 8, 8), (9, 8, 8), (50, 8, 8), (50, 8, 3),
                                         (50, 16, 1), (33, 5, 5), (100, 32, 16)])
def test_window_spans_score_every_target_once(n, L, stride, bos):
    scored, prev_end = [], 0
    for start, end, n_score in window_spans(n, L, stride, bos):
        length = (end - start) + (1 if bos and start > 0 else 0)
        assert length <= L, "a window is longer than max_length"
        assert 1 <= n_score <= end - start
        scored.extend(range(end - n_score + 1, end + 1))  # targets are s[1..n]
        assert end > prev_end
        prev_end = end
    assert scored == list(range(1, n + 1))


def test_windows_equal_lm_evals_rolling_windows():
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    rng = random.Random(0)
    for n in (1, 5, 16, 17, 40, 129):
        for L in (4, 16, 32):
            toks = [rng.randrange(100, 200) for _ in range(n)]
            s = [1] + toks
            ours = [(s[a:b], s[b - k + 1:b + 1]) for a, b, k in window_spans(n, L, L)]
            theirs = []
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(toks, 1, L, 1)):
                theirs.append(((ctx + cont)[-(L + 1):][:-1], cont))  # what HFLM feeds the model
            assert ours == theirs, (n, L)


# ------------------------------------------------------------------------------ wikitext text
@pytest.fixture(scope="module")
def wiki_text():
    return read_corpus_text("wikitext-2-raw/wiki.test.raw")


def test_wikitext_documents_split_into_articles(wiki_text):
    docs = wikitext_documents(wiki_text)
    assert len(docs) == 62  # EleutherAI/wikitext_document_level wikitext-2-raw-v1 test
    assert all(d.strip() for d in docs)
    assert docs[0].startswith(" = Robert Boulter = ")
    assert "\r" not in wiki_text
    # nothing lost: the articles joined again are the file after its leading blank line
    assert "\n".join(docs) == wiki_text[wiki_text.index(" = Robert Boulter = "):]


def test_detokenizer_and_word_count_match_lm_eval(wiki_text):
    from lm_eval.tasks.wikitext import preprocess_wikitext as ref

    for page in wikitext_documents(wiki_text):
        assert wikitext_detokenize(page) == ref.wikitext_detokenizer({"page": page})
        ll = -123.0
        words = ref.process_results({"page": page}, [ll])["word_perplexity"][1]
        assert count_words(page) == words == len(re.split(r"\s+", page))


def test_missing_corpus_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="HARNESS_DATA"):
        read_corpus_text("wikitext-2-raw/wiki.test.raw")


def test_select_documents_whole_documents_up_to_budget():
    toks = [[0] * 10, [0] * 10, [0] * 10]
    assert select_documents(toks, 0) == 3
    assert select_documents(toks, 10) == 1
    assert select_documents(toks, 11) == 2
    assert select_documents(toks, 1000) == 3


def test_equal_length_batches_never_mix_lengths():
    lengths = [16, 5, 16, 16, 9, 5, 16, 3]
    batches = equal_length_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every window once
    assert all(len(b) <= 3 and len({lengths[i] for i in b}) == 1 for b in batches)
    assert batches[0] == [0, 2, 3] and batches[1] == [6]  # longest first, then input order
    assert [lengths[b[0]] for b in batches] == [16, 16, 9, 5, 3]


# --------------------------------------------------------------------------- tiny-model scoring
@pytest.fixture(scope="module")
def tiny():
    cfg = config.compose(["model=tiny-llama"])
    model, tok = load_model_and_tokenizer(cfg.model)
    return model.eval(), tok, cfg


def _direct_nll(model, ids):
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return float(F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum"))


def test_sliding_window_equals_full_sequence(tiny):
    model, tok, cfg = tiny
    texts = ["The quick brown fox jumps over the lazy dog.", "A language model assigns probabilities to words."]
    lists = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    prefix = prefix_token_id(tok)
    L = max(len(x) for x in lists) + 1  # one window covers each document
    got = score_token_lists(model, lists, prefix, tok.bos_token_id, L, L, batch_size=2)
    for toks, (nll, n) in zip(lists, got):
        assert n == len(toks)
        assert nll == pytest.approx(_direct_nll(model, [prefix] + toks), rel=1e-5)


def test_windows_batching_and_context(tiny):
    model, tok, cfg = tiny
    text = "Fine-tuning adapts a pretrained model to a new task. " * 6
    toks = tok(text, add_special_tokens=False)["input_ids"]
    prefix = prefix_token_id(tok)
    full = _direct_nll(model, [prefix] + toks)
    one = score_token_lists(model, [toks], prefix, tok.bos_token_id, 16, 16, batch_size=1)[0]
    many = score_token_lists(model, [toks, toks[:5]], prefix, tok.bos_token_id, 16, 16, batch_size=3)[0]
    assert one[1] == len(toks) and many[1] == len(toks)
    assert one[0] == pytest.approx(many[0], rel=1e-5)  # right padding in a batch changes nothing
    assert one[0] != pytest.approx(full, rel=1e-4)  # short windows do lose context
    # a stride smaller than the window gives each token more context; the count stays exact
    strided = score_token_lists(model, [toks], prefix, tok.bos_token_id, 16, 4, batch_size=4)[0]
    assert strided[1] == len(toks)
    bos = score_token_lists(model, [toks], prefix, tok.bos_token_id, 16, 16, 2, bos_every_window=True)[0]
    assert bos[1] == len(toks) and bos[0] != pytest.approx(one[0], rel=1e-6)


def _reference_scores(model, lists, prefix, bos, L, stride, bos_every_window):
    """The definition, written out: one forward per window, full fp32 logits, the last n_score positions scored."""
    import torch
    import torch.nn.functional as F

    out = []
    for toks in lists:
        s, nll = [prefix] + toks, 0.0
        for start, end, n_score in window_spans(len(toks), L, stride, bos_every_window):
            inp = ([bos] if bos_every_window and start > 0 else []) + s[start:end]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([inp])).logits[0].float()
            nll += float(F.cross_entropy(logits[-n_score:], torch.tensor(s[end - n_score + 1:end + 1]), reduction="sum"))
        out.append((nll, len(toks)))
    return out


@pytest.mark.parametrize("L,stride,bos", [(16, 16, False), (16, 5, False), (16, 16, True), (12, 4, True)])
def test_batched_chunked_scoring_equals_one_forward_per_window(tiny, L, stride, bos):
    model, tok, cfg = tiny
    rng = random.Random(L * 100 + stride)
    lists = [[rng.randrange(3, 200) for _ in range(n)] for n in (1, 7, 16, 17, 40, 33, 16)]  # equal and odd lengths
    prefix = prefix_token_id(tok)
    want = _reference_scores(model, lists, prefix, tok.bos_token_id, L, stride, bos)
    assert split_head(model) is not None  # the tiny Llama takes the decoder + chunked output layer path
    for batch_size, chunk in ((1, None), (3, 4), (8, 1)):
        got = score_token_lists(model, lists, prefix, tok.bos_token_id, L, stride, batch_size, bos, chunk_rows=chunk)
        assert [n for _, n in got] == [n for _, n in want]
        for (a, _), (b, _) in zip(got, want):
            assert a == pytest.approx(b, rel=1e-5)


def test_models_with_scaled_logits_use_their_own_forward(tiny):
    """A model whose logits are not output_layer(hidden) (soft-capping, scaling) is scored through its forward."""
    import torch

    model, tok, cfg = tiny

    class Scaled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def get_decoder(self):
            return self.inner.get_decoder()

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def forward(self, input_ids, **kw):
            kw.pop("logits_to_keep", None)
            out = self.inner(input_ids=input_ids, **kw)
            out.logits = 2.0 * torch.tanh(out.logits)  # soft-capping and scaling, as Gemma 2 / Cohere do
            return out

    scaled = Scaled(model)
    assert split_head(scaled) is None
    lists = [tok("Soft-capped logits change the perplexity. " * 3, add_special_tokens=False)["input_ids"]]
    prefix = prefix_token_id(tok)
    got = score_token_lists(scaled, lists, prefix, tok.bos_token_id, 16, 16, 2)
    want = _reference_scores(scaled, lists, prefix, tok.bos_token_id, 16, 16, False)
    plain = score_token_lists(model, lists, prefix, tok.bos_token_id, 16, 16, 2)
    assert got[0][0] == pytest.approx(want[0][0], rel=1e-5)
    assert got[0][0] != pytest.approx(plain[0][0], rel=1e-3)


def test_without_a_split_head_windows_keep_their_last_logits_on_every_release(tiny, monkeypatch):
    """With no split head, perplexity asks the model's forward for the last positions only (an int logits_to_keep),
    which transformers releases before 5.23 take as well: their slicing (patched in, it raises on a boolean mask)
    keeps the trimmed path and the same scores."""
    import transformers.models.llama.modeling_llama as llama

    from harness.eval import perplexity

    model, tok, cfg = tiny
    lists = [tok("Older releases keep the last logits too. " * 3, add_special_tokens=False)["input_ids"]]
    prefix = prefix_token_id(tok)
    want = _reference_scores(model, lists, prefix, tok.bos_token_id, 16, 5, False)
    monkeypatch.setattr(perplexity, "split_head", lambda m: None)
    monkeypatch.setattr(llama, "slice_logits_to_keep",
                        lambda h, k: h[:, slice(-k, None) if isinstance(k, int) else k, :])
    seen, real = [], type(model).forward

    @functools.wraps(real)  # keeps the signature the check reads
    def spy(self, *a, **k):
        seen.append(k.get("logits_to_keep"))
        return real(self, *a, **k)

    monkeypatch.setattr(type(model), "forward", spy)
    got = score_token_lists(model, lists, prefix, tok.bos_token_id, 16, 5, 2)
    assert seen and all(isinstance(k, int) and k > 0 for k in seen)
    assert got[0][1] == want[0][1] and got[0][0] == pytest.approx(want[0][0], rel=1e-5)


def _corpus(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("Evaluation in bf16 moves log-likelihoods a little. " * 12)
    return PerplexitySuite(name="mycorpus", path=str(f), max_length=16, stride=16, batch_size=2)


def test_exact_mode_records_fp32_and_no_calibration(tiny, tmp_path):
    model, tok, cfg = tiny
    suite = _corpus(tmp_path)
    entry, rows = run_suite_in_mode(model, tok, suite, plan("exact", "cpu"), cfg.model, progress=False)
    assert entry["mode"] == "exact" and entry["precision"]["dtype"] == "float32"
    assert "calibration" not in entry
    assert entry["metrics"] == pytest.approx(run_suite(model, tok, suite, cfg.model, progress=False)[0]["metrics"])


def test_fast_mode_in_bf16_records_its_deviation(tiny, tmp_path):
    import torch

    model, tok, cfg = tiny
    suite = _corpus(tmp_path)
    bf16 = plan("fast", "cpu", native_bf16=True)  # what a CPU with AMX / AVX512-BF16 (or a GPU) gets
    assert bf16.dtype == "bfloat16"
    entry, rows = run_suite_in_mode(model, tok, suite, bf16, cfg.model, progress=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the evaluated copy is bf16, not the model
    assert entry["mode"] == "fast" and entry["precision"] == bf16.record()
    cal = entry["calibration"]
    exact = run_suite_in_mode(model, tok, suite, plan("exact", "cpu"), cfg.model, progress=False)[0]
    assert cal["tokens"] == 16  # the first window: max_length tokens of the first document
    first = tok(suite_text := (tmp_path / "corpus.txt").read_text(), add_special_tokens=False)["input_ids"][:16]
    want = _reference_scores(model, [first], prefix_token_id(tok), tok.bos_token_id, 16, 16, False)[0][0]
    assert cal["nll_exact"] == pytest.approx(want, rel=1e-5)
    assert cal["nll_fast"] != cal["nll_exact"]  # bf16 really ran
    assert cal["rel_diff"] == pytest.approx(abs(cal["token_perplexity_fast"] - cal["token_perplexity_exact"])
                                            / cal["token_perplexity_exact"])
    assert 0 < cal["rel_diff"] < 0.05
    assert entry["metrics"]["token_perplexity"] != exact["metrics"]["token_perplexity"]
    assert entry["metrics"]["token_perplexity"] == pytest.approx(exact["metrics"]["token_perplexity"], rel=0.05)
    assert suite_text


@pytest.mark.slow
def test_perplexity_suite_follows_eval_mode(tiny, tmp_path, monkeypatch):
    from harness.eval.registry import SuiteContext
    from harness.model import device as device_module

    model, tok, _ = tiny
    suite = _corpus(tmp_path)
    entries = {}
    for mode, native in (("exact", True), ("fast", False), ("fast", True)):
        monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda native=native: native)
        cfg = config.compose(["model=tiny-llama", f"eval.mode={mode}"])
        cfg.eval.perplexity = [suite]
        got = {}
        run_perplexity(SuiteContext(model, tok, cfg, tmp_path / f"{mode}-{native}", False, got.__setitem__))
        entries[(mode, native)] = got["mycorpus"]
    assert entries[("exact", True)]["precision"]["dtype"] == "float32"
    assert entries[("fast", False)]["precision"]["dtype"] == "float32"  # an AVX2 CPU: fast mode is fp32, says why
    assert "without native bf16" in entries[("fast", False)]["precision"]["reason"]
    assert entries[("fast", True)]["precision"]["dtype"] == "bfloat16" and "calibration" in entries[("fast", True)]
    assert "calibration" not in entries[("fast", False)]
    assert entries[("exact", True)]["config_hash"] == entries[("fast", False)]["config_hash"]  # same numbers
    assert entries[("fast", True)]["config_hash"] != entries[("exact", True)]["config_hash"]
    assert (tmp_path / "fast-True" / "samples" / "mycorpus.jsonl").is_file()


def test_run_suite_on_a_plain_text_file(tiny, tmp_path):
    model, tok, cfg = tiny
    f = tmp_path / "corpus.txt"
    f.write_bytes("Machine learning models learn patterns from data.\r\nThe capital of France is Paris.\r\n".encode())
    suite = PerplexitySuite(name="mycorpus", path=str(f), max_length=8, stride=4, batch_size=2)
    entry, rows = run_suite(model, tok, suite, cfg.model, progress=False)
    text = f.read_text().replace("\r\n", "\n")
    assert len(rows) == 1 and entry["n"] == 1
    assert rows[0]["bytes"] == len(text.encode()) and rows[0]["words"] == len(re.split(r"\s+", text))
    assert rows[0]["tokens"] == len(tok(text, add_special_tokens=False)["input_ids"]) == entry["tokens"]
    assert entry["bos_every_window"] is True  # tiny-llama sets model.add_bos
    assert entry["metrics"] == pytest.approx(aggregate(rows))
    assert entry["tokens_per_s"] > 0


def test_val_loss_equals_the_models_own_loss(tiny):  # the `val` suite's number: harness/model/scoring.py
    import torch

    model, tok, cfg = tiny
    ids = tok("Question: What is 12 plus 30? Answer: 42.", add_special_tokens=False)["input_ids"]
    labels = [-100] * 6 + ids[6:]
    with torch.no_grad():
        ref = float(model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss)
    res = score_rows(model, [{"input_ids": ids, "labels": labels}], batch_size=4)
    assert res["loss"] == pytest.approx(ref, rel=1e-5)
    assert res["tokens"] == len(ids) - 6
    assert res["perplexity"] == pytest.approx(math.exp(ref), rel=1e-5)
    # padding beside a longer row must not change it
    res2 = score_rows(model, [{"input_ids": ids, "labels": labels}, {"input_ids": ids * 2, "labels": ids * 2}],
                      batch_size=2)
    assert res2["tokens"] == res["tokens"] + 2 * len(ids) - 1


def test_data_root_is_used(monkeypatch, tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "c.txt").write_text("x y z")
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path))
    assert corpus_path(PerplexitySuite(name="c", path="w/c.txt")) == paths.data_root() / "w" / "c.txt"
    assert read_corpus_text("w/c.txt") == "x y z"


def test_peft_wrapped_model_scores_with_its_adapter(tiny):
    """LoRA on attention and on the output layer: the decoder + output-layer path must use the adapted layers."""
    from peft import LoraConfig, get_peft_model

    model, tok, cfg = tiny
    fresh, _ = load_model_and_tokenizer(cfg.model)
    peft_model = get_peft_model(fresh, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"],
                                                  init_lora_weights=False)).eval()
    assert split_head(peft_model) is not None
    lists = [tok("LoRA adapters change the score of every token here. " * 3, add_special_tokens=False)["input_ids"]]
    prefix = prefix_token_id(tok)
    got = score_token_lists(peft_model, lists, prefix, tok.bos_token_id, 16, 16, 2)
    want = _reference_scores(peft_model, lists, prefix, tok.bos_token_id, 16, 16, False)
    assert got[0][0] == pytest.approx(want[0][0], rel=1e-5)
    with peft_model.disable_adapter():
        base = score_token_lists(peft_model, lists, prefix, tok.bos_token_id, 16, 16, 2)
    assert base[0][0] != pytest.approx(got[0][0], rel=1e-4)
