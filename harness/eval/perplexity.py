"""Perplexity stage: sliding-window log-likelihood of a text corpus (the `val` loss is harness/model/scoring.py).

    harness eval RUN_DIR eval=perplexity          # wikitext2 suite (conf/eval/perplexity.yaml)
    harness eval model=smollm2-135m eval=quick     # + `val` and lm-eval tasks

Definitions follow lm-eval's `wikitext` task exactly, so the numbers are comparable with published
ones: the corpus is split into documents at top-level headings (`= Title =`) as
EleutherAI/wikitext_document_level does; each document is detokenized (lm-eval's
`wikitext_detokenizer`) and scored from a prefix token (BOS, else EOS); words and bytes are counted on
the ORIGINAL document (`len(re.split(r"\\s+", page))`, UTF-8 bytes). Then, over all documents,
  word_perplexity = exp(-sum(loglik) / sum(words)), byte_perplexity = exp(-sum(loglik) / sum(bytes)),
  bits_per_byte = -sum(loglik) / sum(bytes) / ln 2, token_perplexity = exp(-sum(loglik) / sum(tokens)).
With stride == max_length the windows are lm-eval's `loglikelihood_rolling` windows (one token of carried
context); a smaller stride gives each scored token more context (lower perplexity). Models that need BOS
(model.add_bos) get it at the start of every window. The math is in pure functions at the top.

Speed at equal numbers (score_token_lists): windows run in batches of exactly equal length (never padded, no
attention mask); the decoder's hidden states of the scored positions go through the output layer a slice at a
time, cross-entropy in fp32, so the [positions, vocab] logits never exist whole. eval.mode picks the dtype
(harness/eval/precision.py); a non-fp32 mode records its deviation from fp32 on the first window (calibration).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from harness import atomic, paths
from harness.config import ModelConfig, PerplexitySuite
from harness.eval import attention
from harness.eval.metrics import declare_metric
from harness.eval.precision import EvalPrecision, exact_model_of, model_for, plan
from harness.eval.registry import SuiteContext, config_hash, register_suite_kind
from harness.model.load import model_device
from harness.model.scoring import split_head
from harness.run.progress import bar

LN2 = math.log(2.0)
# fp32 logits per output-layer chunk: 6M (24 MB; 128 positions of SmolLM2's 49,152). Below glibc's 32 MB mmap
# ceiling, so each chunk reuses the last one's memory instead of faulting in fresh pages: with 341-position chunks
# (64 MB) the output layer + cross-entropy of 1,024 bf16 positions took 240 ms, with 128 118 ms (AVX512-BF16 EPYC)
HEAD_CHUNK_ELEMENTS = 6 << 20


# The suite's four corpus metrics (perplexity_metrics). They are ratios of sums over documents; the samples
# file holds each document's nll and counts, not a per-document value of the metric, so no per-item form.
for _metric in ("word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity"):
    declare_metric(_metric, higher_is_better=False, scale="raw")


# ------------------------------------------------------------------------------- pure math
def perplexity_metrics(nll: float, tokens: int, words: int, n_bytes: int) -> dict[str, float]:
    """Summed negative log-likelihood (nats) and counts -> the four corpus metrics (lm-eval's formulas)."""
    if tokens <= 0 or words <= 0 or n_bytes <= 0:
        raise ValueError(f"perplexity needs positive counts, got tokens={tokens} words={words} bytes={n_bytes}")
    return {
        "token_perplexity": math.exp(nll / tokens),
        "word_perplexity": math.exp(nll / words),
        "byte_perplexity": math.exp(nll / n_bytes),
        "bits_per_byte": nll / n_bytes / LN2,
    }


def aggregate(rows: Iterable[dict]) -> dict[str, float]:
    """Per-document rows {nll, tokens, words, bytes} -> corpus metrics (sums first, as lm-eval's weighted_perplexity)."""
    rows = list(rows)
    return perplexity_metrics(
        sum(r["nll"] for r in rows), sum(r["tokens"] for r in rows),
        sum(r["words"] for r in rows), sum(r["bytes"] for r in rows),
    )


def document_rows(docs: Sequence[Doc], scored: Sequence[tuple[float, int]]) -> list[dict]:
    """score_token_lists' (nll, tokens) per document -> the rows aggregate() sums: {id, nll, tokens, words, bytes}."""
    return [{"id": d.id, "nll": nll, "tokens": n, "words": count_words(d.page), "bytes": len(d.page.encode("utf-8"))}
            for d, (nll, n) in zip(docs, scored, strict=True)]


def window_spans(n_targets: int, max_length: int, stride: int, bos_every_window: bool = False) -> list[tuple[int, int, int]]:
    """Windows over a sequence s = [prefix] + tokens whose targets are s[1..n_targets].

    Each span (start, end, n_score): the model reads s[start:end] (plus a BOS in front when
    bos_every_window and start > 0) and predicts s[start+1:end+1]; the last n_score predictions are
    scored. Every target is scored exactly once. With stride == max_length and no per-window BOS these
    are lm-eval's rolling windows (each later window conditions on one earlier token).
    """
    if max_length < 2:
        raise ValueError(f"max_length={max_length}: need at least 2 tokens per window")
    if n_targets <= 0:
        return []
    ctx = max_length - 1 if bos_every_window else max_length  # tokens of s per window after the first
    stride = max(1, min(stride, ctx))
    first = min(max_length, n_targets)
    spans = [(0, first, first)]
    done = first
    while done < n_targets:
        end = min(done + stride, n_targets)
        start = max(0, end - ctx)
        spans.append((start, end, end - done))
        done = end
    return spans


# ----------------------------------------------------------------------------- wikitext text
def wikitext_documents(text: str) -> list[str]:
    """Split wiki.*.raw into articles exactly as EleutherAI/wikitext_document_level does (lm-eval's source)."""
    docs, current = [], []
    for line in text.split("\n"):
        rline = line.replace("= = =", "===").replace("= =", "==").strip()
        if rline.startswith("= ") and rline.strip().endswith(" ="):
            page = "\n".join(current)
            if page.strip():
                docs.append(page)
            current = []
        current.append(line)
    docs.append("\n".join(current))
    return docs


def wikitext_detokenize(string: str) -> str:
    """lm-eval's tasks/wikitext/preprocess_wikitext.wikitext_detokenizer, verbatim in behaviour."""
    string = string.replace("s '", "s'")
    string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
    string = string.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    for p in (":", ";", ".", "!", "?", ","):
        string = string.replace(f" {p} ", f"{p} ")
    string = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", string)
    string = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", string)
    string = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", string)
    string = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', string)
    string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
    string = string.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    string = string.replace(" " + chr(176) + " ", chr(176))
    string = string.replace(" \n", "\n").replace("\n ", "\n")
    string = string.replace(" N ", " 1 ").replace(" 's", "'s")
    return string


def count_words(page: str) -> int:
    """Words as lm-eval's wikitext task counts them (on the original, not detokenized, page)."""
    return len(re.split(r"\s+", page))


@dataclass
class Doc:
    id: int
    text: str  # what the model scores
    page: str  # what words and bytes are counted on


def read_corpus_text(path: str) -> str:
    p = paths.resolve_data_path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"perplexity corpus {path!r} not found at {p}. Set HARNESS_DATA to the data root "
            f"(now {paths.data_root()}) or give an absolute path in eval.perplexity[].path."
        )
    return p.read_bytes().decode("utf-8").replace("\r\n", "\n")


def load_documents(suite: PerplexitySuite) -> list[Doc]:
    """The suite's documents: wikitext* suites use lm-eval's split + detokenizer; others are one document."""
    text = read_corpus_text(suite.path)
    if suite.name.startswith("wikitext"):
        return [Doc(i, wikitext_detokenize(p), p) for i, p in enumerate(wikitext_documents(text))]
    return [Doc(0, text, text)]


# ----------------------------------------------------------------------------- model scoring
def prefix_token_id(tokenizer) -> int:
    """lm-eval's prefix token for rolling log-likelihood: BOS if the tokenizer has one, else EOS."""
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token; cannot score the first token")
    return tid


def model_max_length(model, model_cfg: ModelConfig | None, requested: int) -> int:
    limits = [requested]
    if model_cfg is not None and model_cfg.context_length:
        limits.append(model_cfg.context_length)
    n_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None) or getattr(
        getattr(model, "config", None), "n_positions", None)
    if isinstance(n_pos, int) and n_pos > 0:
        limits.append(n_pos)
    return min(limits)


@dataclass(frozen=True)
class Window:
    doc: int  # index into the token lists
    ids: list[int]  # what the model reads
    n_score: int  # the last n_score predictions are scored
    targets: list[int]  # the tokens those predictions are scored against


def plan_windows(token_lists: Sequence[list[int]], prefix_id: int, bos_id: int | None, max_length: int, stride: int,
                 bos_every_window: bool = False) -> list[Window]:
    """Every document's windows (window_spans), as the token ids the model reads and the targets it is scored on."""
    if bos_every_window and bos_id is None:
        raise ValueError("model.add_bos=true but the tokenizer has no BOS token")
    out = []
    for d, toks in enumerate(token_lists):
        s = [prefix_id] + list(toks)
        for start, end, n_score in window_spans(len(toks), max_length, stride, bos_every_window):
            inp = s[start:end]
            if bos_every_window and start > 0:
                inp = [bos_id] + inp
            out.append(Window(d, inp, n_score, s[end - n_score + 1:end + 1]))
    return out


def equal_length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of windows of EXACTLY the same length (longest first, then input order), at most
    batch_size each: no padding, so no attention mask either (the causal kernel runs) and no position is wasted.
    On a CPU a window of hundreds of tokens fills the matrix units alone, so a length that occurs once runs alone."""
    by_len: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_len.setdefault(n, []).append(i)
    size = max(1, batch_size)
    return [idx[b:b + size] for n in sorted(by_len, reverse=True) for idx in [by_len[n]] for b in range(0, len(idx), size)]


def head_nll(head, hidden, targets, chunk_rows: int):
    """Summed cross-entropy (fp32) of head(hidden) against targets, `chunk_rows` positions at a time, so the
    [positions, vocab] logits never exist at once (49,152 x 1,024 fp32 is 200 MB per window for SmolLM2)."""
    import torch.nn.functional as F

    total = None
    for a in range(0, hidden.shape[0], chunk_rows):
        logits = head(hidden[a:a + chunk_rows]).float()
        part = F.cross_entropy(logits, targets[a:a + chunk_rows], reduction="sum")
        total = part if total is None else total + part
    return total


def score_token_lists(model, token_lists: Sequence[list[int]], prefix_id: int, bos_id: int | None,
                      max_length: int, stride: int, batch_size: int, bos_every_window: bool = False,
                      pad_id: int = 0, progress: bool = False, desc: str = "perplexity",
                      chunk_rows: int | None = None) -> list[tuple[float, int]]:
    """(summed NLL in nats, scored tokens) per token list; every token scored once given its window.

    Windows run in batches of equal length (equal_length_batches: never padded, so `pad_id` is not needed and
    only kept for callers). The decoder's final hidden states of the scored positions go through the output layer
    `chunk_rows` positions at a time with the cross-entropy in fp32 (split_head); a model whose logits are not
    output_layer(hidden) gets full forwards with logits for the scored positions only. Same numbers as one forward
    per window with fp32 logits (tests/test_perplexity.py checks it to 1e-5)."""
    import torch
    import torch.nn.functional as F

    from harness.model.scoring import plain_forward, takes_logits_to_keep

    windows = plan_windows(token_lists, prefix_id, bos_id, max_length, stride, bos_every_window)
    out = [[0.0, 0] for _ in token_lists]
    device = model_device(model)
    was_training = model.training
    model.eval()
    shown = bar(total=sum(w.n_score for w in windows), desc=desc, unit="tok", disable=not progress, leave=False)
    try:
        with torch.inference_mode():
            parts = split_head(model) if windows else None
            if parts is not None and chunk_rows is None:
                chunk_rows = max(16, HEAD_CHUNK_ELEMENTS // max(1, int(parts[1].weight.shape[0])))
            forward = plain_forward(model)
            trim = parts is None and takes_logits_to_keep(model)  # an int: every release with the argument takes it
            for batch in equal_length_batches([len(w.ids) for w in windows], batch_size):
                ws = [windows[i] for i in batch]
                n, keep = len(ws[0].ids), max(w.n_score for w in ws)
                ids = torch.tensor([w.ids for w in ws], dtype=torch.long, device=device)
                if parts is not None:
                    hidden = parts[0](input_ids=ids, use_cache=False).last_hidden_state[:, n - keep:]
                else:
                    logits = forward(input_ids=ids, use_cache=False, **({"logits_to_keep": keep} if trim else {})
                                     ).logits[:, -keep:]
                for row, w in enumerate(ws):
                    targets = torch.tensor(w.targets, dtype=torch.long, device=device)
                    if parts is not None:
                        nll = head_nll(parts[1], hidden[row, keep - w.n_score:], targets, chunk_rows)
                    else:
                        nll = F.cross_entropy(logits[row, keep - w.n_score:].float(), targets, reduction="sum")
                    out[w.doc][0] += float(nll)
                    out[w.doc][1] += w.n_score
                    shown.update(w.n_score)
    finally:
        shown.close()
        if was_training:
            model.train()
    return [(nll, n) for nll, n in out]


def select_documents(token_lists: Sequence[list[int]], max_tokens: int) -> int:
    """How many leading documents to score: all (max_tokens=0), else whole documents until the
    running token count reaches max_tokens (the document that crosses the budget is included)."""
    if max_tokens <= 0:
        return len(token_lists)
    total = 0
    for i, toks in enumerate(token_lists):
        total += len(toks)
        if total >= max_tokens:
            return i + 1
    return len(token_lists)


def run_suite(model, tokenizer, suite: PerplexitySuite, model_cfg: ModelConfig | None = None,
              progress: bool = True, bos_every_window: bool | None = None) -> tuple[dict, list[dict]]:
    """Score one corpus. Returns (eval.json suite entry without config_hash, per-document sample rows)."""
    docs = load_documents(suite)
    token_lists = [tokenizer(d.text, add_special_tokens=False)["input_ids"] for d in docs]
    k = select_documents(token_lists, suite.max_tokens)
    docs, token_lists = docs[:k], token_lists[:k]
    max_length = model_max_length(model, model_cfg, suite.max_length)
    if bos_every_window is None:
        bos_every_window = bool(model_cfg.add_bos) if model_cfg is not None else False
    t0 = time.time()
    scored = score_token_lists(
        model, token_lists, prefix_token_id(tokenizer), tokenizer.bos_token_id, max_length,
        min(suite.stride, max_length), suite.batch_size, bos_every_window,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        progress=progress, desc=suite.name,
    )
    wall = time.time() - t0
    rows = document_rows(docs, scored)
    n_tokens = sum(r["tokens"] for r in rows)
    entry = {
        "kind": "perplexity", "metrics": aggregate(rows), "n": len(rows), "tokens": n_tokens,
        "max_length": max_length, "stride": min(suite.stride, max_length), "bos_every_window": bos_every_window,
        "wall_time_s": wall, "tokens_per_s": n_tokens / wall if wall > 0 else None,
    }
    return entry, rows


def corpus_path(suite: PerplexitySuite) -> Path:
    return paths.resolve_data_path(suite.path)


def perplexity_items(cfg, name: str, entry: dict) -> tuple[list, list[str]]:
    """The documents the suite scored (the first entry["n"]), as (their ids, their original text), for the
    contamination check."""
    suite = next(s for s in cfg.eval.perplexity if s.name == name)
    docs = load_documents(suite)[: entry["n"]]
    return [d.id for d in docs], [d.page for d in docs]


def perplexity_cost(cfg) -> dict[str, float]:
    """Rough forward tokens per suite, for the ETA: max_tokens (else the corpus at ~4 bytes a token), times the
    overlap of the windows (max_length / stride)."""
    out = {}
    for s in cfg.eval.perplexity:
        tokens = float(s.max_tokens)
        if tokens <= 0:
            try:
                tokens = corpus_path(s).stat().st_size / 4
            except (OSError, ValueError):
                tokens = 300_000.0  # about WikiText-2's test set
        out[s.name] = tokens * max(1.0, s.max_length / max(s.stride, 1))
    return out


def calibration(exact_model, fast_model, tokenizer, suite: PerplexitySuite, model_cfg: ModelConfig | None = None,
                bos_every_window: bool = False) -> dict:
    """How far fast mode moves the suite's number: the first window of the first document (up to max_length tokens)
    scored by both models -> {tokens, nll_exact, nll_fast, token_perplexity_exact, token_perplexity_fast, rel_diff}
    (rel_diff of the token perplexity)."""
    docs = load_documents(suite)
    max_length = model_max_length(exact_model, model_cfg, suite.max_length)
    first = next((t for t in (tokenizer(d.text, add_special_tokens=False)["input_ids"] for d in docs) if t), None)
    if first is None:
        raise ValueError(f"perplexity suite {suite.name}: the corpus has no tokens to calibrate on")
    toks = [first[:max_length]]
    args = (prefix_token_id(tokenizer), tokenizer.bos_token_id, max_length, max_length, 1, bos_every_window)
    (nll_exact, n), = score_token_lists(exact_model, toks, *args)
    (nll_fast, _), = score_token_lists(fast_model, toks, *args)
    ppl_exact, ppl_fast = math.exp(nll_exact / n), math.exp(nll_fast / n)
    return {"tokens": n, "nll_exact": nll_exact, "nll_fast": nll_fast, "token_perplexity_exact": ppl_exact,
            "token_perplexity_fast": ppl_fast, "rel_diff": abs(ppl_fast - ppl_exact) / ppl_exact}


def run_suite_in_mode(model, tokenizer, suite: PerplexitySuite, precision: EvalPrecision,
                      model_cfg: ModelConfig | None = None, progress: bool = True,
                      exact_model=None) -> tuple[dict, list[dict]]:
    """run_suite on model_for(model, precision), with `mode` and `precision` (harness/eval/precision.py) in the
    entry; in a mode whose dtype is not fp32 also `calibration`: its deviation from fp32 on the first window, against
    exact_model when given (a 4-bit model's fp32 copy: precision.calibration_reference), else model_for(model, exact)."""
    evaluated = model_for(model, precision)
    entry, rows = run_suite(evaluated, tokenizer, suite, model_cfg, progress=progress)
    entry["mode"] = precision.mode
    entry["precision"] = precision.record()
    entry["attention"] = attention.describe(evaluated)
    if precision.dtype != "float32":
        entry["calibration"] = calibration(exact_model_of(model, exact_model), evaluated, tokenizer, suite, model_cfg, entry["bos_every_window"])
    return entry, rows


@register_suite_kind("perplexity", order=1, names=lambda cfg: [s.name for s in cfg.eval.perplexity],
                     items=perplexity_items, cost=perplexity_cost)
def run_perplexity(ctx: SuiteContext) -> None:
    precision = plan(ctx.cfg.eval.mode, str(model_device(ctx.model)))
    for suite in ctx.cfg.eval.perplexity:
        ctx.begin(suite.name)
        entry, rows = run_suite_in_mode(ctx.model, ctx.tokenizer, suite, precision, ctx.cfg.model,
                                        progress=ctx.progress, exact_model=ctx.exact_model)
        hash_cfg = {**dataclasses.asdict(suite), "bos_every_window": entry["bos_every_window"],
                    "max_length": entry["max_length"], "stride": entry["stride"]}
        if precision.dtype != "float32":  # exact mode's hashes stay those of the records written before eval.mode
            hash_cfg["dtype"] = precision.dtype
        entry["config_hash"] = config_hash(hash_cfg)
        atomic.write_jsonl(ctx.run_dir / "samples" / f"{suite.name}.jsonl", rows)
        entry["samples"] = f"samples/{suite.name}.jsonl"
        ctx.record(suite.name, entry)
