"""Generation metrics' scoring functions: pure functions, lists of strings in, numbers out (no model, no I/O).
The registry that names them is harness/eval/metrics.py (`metrics.compute([...], predictions, references)`).

Used by the generation suites (`harness eval ... eval=<suite config>`, harness/eval/generation.py).
`references[i]` is the list of references of item i; items may have different numbers of them.

Every corpus metric is expressed as per-item sufficient statistics whose column sums determine the
score (`CorpusStats`): BLEU's n-gram counts and lengths, chrF's n-gram counts, TER's edits and
reference lengths (all taken from sacrebleu itself), and (value, 1) pairs for metrics that are
means of per-item values (ROUGE, exact match). A bootstrap resample then only re-sums rows, so
1000 resamples of 630 items cost milliseconds, not 1000 corpus re-scorings.

Scales: BLEU, chrF and TER 0-100 (sacrebleu's); ROUGE and exact match 0-1. NIST, METEOR and CIDEr
(the E2E challenge's other metrics) live in harness/eval/nlgmetrics.py: METEOR runs a Java program, and
NIST's and METEOR's corpus scores do not decompose per item, so those two get no bootstrap interval.

This module holds the scoring functions and the bootstrap; harness/eval/metrics.py is the registry.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Callable, Sequence

import numpy as np

References = Sequence[Sequence[str]]


class MetricError(ValueError):
    """Inputs a metric cannot score, or a metric name that does not exist."""


# ------------------------------------------------------------------------------ input checks
def check_inputs(predictions: Sequence[str], references: References) -> None:
    """Same length, at least one item, strings only, at least one reference per item."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise MetricError("predictions and references must be lists (one entry per item), not a single string")
    if len(predictions) != len(references):
        raise MetricError(
            f"{len(predictions)} predictions but {len(references)} reference lists: pass one list of references per prediction"
        )
    if not predictions:
        raise MetricError("no items to score: predictions and references are empty")
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if not isinstance(pred, str):
            raise MetricError(f"item {i}: prediction must be a string, got {type(pred).__name__}")
        if isinstance(refs, str):
            raise MetricError(f"item {i}: references must be a list of strings, got a single string; wrap it: [{refs[:40]!r}]")
        if len(refs) == 0:
            raise MetricError(f"item {i}: no references; every item needs at least one reference to be scored")
        for j, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise MetricError(f"item {i}: reference {j} must be a string, got {type(ref).__name__}")


def reference_streams(references: References) -> list[list[str | None]]:
    """Per-item reference lists -> sacrebleu's layout: one stream per reference position, padded
    with None where an item has fewer references (sacrebleu then reports nrefs:var)."""
    width = max(len(refs) for refs in references)
    return [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]


# ---------------------------------------------------------------------------- corpus statistics
@dataclass(frozen=True)
class CorpusStats:
    """Per-item sufficient statistics of one corpus metric.

    The corpus score is `aggregate(stats.sum(axis=0))`; a bootstrap resample re-sums rows only.
    """

    stats: np.ndarray  # (n_items, k) float64
    aggregate: Callable[[np.ndarray], float]
    signature: str = ""
    resample: bool = True  # False: a corpus score with no per-item decomposition (no bootstrap interval)

    def score(self) -> float:
        return float(self.aggregate(self.stats.sum(axis=0)))


@dataclass(frozen=True)
class CorpusScore:
    score: float
    signature: str


def _mean_stats(values: Sequence[float]) -> CorpusStats:
    """Per-item values whose corpus score is their mean: rows (value, 1)."""
    arr = np.column_stack([np.asarray(values, dtype=np.float64), np.ones(len(values))])
    return CorpusStats(arr, _ratio)


def _ratio(summed: np.ndarray) -> float:
    return float(summed[0] / summed[1])


def _sacrebleu_metric(name: str, **options):
    from sacrebleu.metrics import BLEU, CHRF, TER

    return {"bleu": BLEU, "chrf": CHRF, "ter": TER}[name](**options)


def sacrebleu_stats(name: str, predictions: Sequence[str], references: References, **options) -> CorpusStats:
    """sacrebleu's own per-segment statistics for bleu | chrf | ter, with its signature.

    Uses `Metric._extract_corpus_statistics` and `_compute_score_from_stats`, the two methods
    sacrebleu's own bootstrap (sacrebleu.significance) is built on; tests check that summing them
    reproduces `corpus_score` exactly, so an API change there fails loudly here.
    """
    check_inputs(predictions, references)
    metric = _sacrebleu_metric(name, **options)
    rows = metric._extract_corpus_statistics(list(predictions), reference_streams(references))
    stats = np.asarray(rows, dtype=np.float64)

    def aggregate(summed: np.ndarray) -> float:
        return float(metric._compute_score_from_stats(summed.tolist()).score)

    return CorpusStats(stats, aggregate, metric.get_signature().format())


def corpus_bleu(predictions: Sequence[str], references: References, **options) -> CorpusScore:
    """Corpus BLEU (sacrebleu defaults: 13a tokenizer, exp smoothing, 0-100) and its signature.
    `options` go to sacrebleu.metrics.BLEU (e.g. tokenize="zh", lowercase=True)."""
    s = sacrebleu_stats("bleu", predictions, references, **options)
    return CorpusScore(s.score(), s.signature)


def corpus_chrf(predictions: Sequence[str], references: References, **options) -> CorpusScore:
    """Corpus chrF (chrF2, character 6-grams; word_order=2 gives chrF++), 0-100, and its signature."""
    s = sacrebleu_stats("chrf", predictions, references, **options)
    return CorpusScore(s.score(), s.signature)


def corpus_ter(predictions: Sequence[str], references: References, **options) -> CorpusScore:
    """Corpus TER (edits / average reference length, 0-100+, lower is better) and its signature."""
    s = sacrebleu_stats("ter", predictions, references, **options)
    return CorpusScore(s.score(), s.signature)


@functools.lru_cache(maxsize=None)
def _sentence_metric(name: str):
    from sacrebleu.metrics import BLEU, CHRF

    # sentence BLEU needs effective order, or any item shorter than 4 tokens scores 0
    return BLEU(effective_order=True) if name == "bleu" else CHRF()


def sentence_bleu(prediction: str, references: Sequence[str]) -> float:
    """BLEU of one item (sacrebleu, effective order, exp smoothing), 0-100: for per-sample records."""
    check_inputs([prediction], [references])
    return float(_sentence_metric("bleu").sentence_score(prediction, list(references)).score)


def sentence_chrf(prediction: str, references: Sequence[str]) -> float:
    """chrF of one item against its references (best-matching reference), 0-100."""
    check_inputs([prediction], [references])
    return float(_sentence_metric("chrf").sentence_score(prediction, list(references)).score)


# -------------------------------------------------------------------------------------- ROUGE
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@functools.lru_cache(maxsize=None)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def sentence_rouge(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L/Lsum F-measure of one item, 0-1, Porter stemming on.

    Several references: the maximum F-measure over the references, taken per ROUGE type
    (rouge_score's `score_multi`). rouge_score's tokenizer lowercases and keeps [a-z0-9] only, so
    it suits English; rougeLsum splits summaries on newlines (no sentence splitter is applied).
    """
    check_inputs([prediction], [references])
    scores = _rouge_scorer().score_multi(list(references), prediction)
    return {k: float(scores[k].fmeasure) for k in ROUGE_TYPES}


def rouge_stats(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    check_inputs(predictions, references)
    per_item = [sentence_rouge(p, r) for p, r in zip(predictions, references)]
    return {k: _mean_stats([row[k] for row in per_item]) for k in ROUGE_TYPES}


def rouge(predictions: Sequence[str], references: References) -> dict[str, float]:
    """Corpus ROUGE: the mean over items of each item's best-reference F-measure (0-1)."""
    return {k: s.score() for k, s in rouge_stats(predictions, references).items()}


# -------------------------------------------------------------------------------- exact match
_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Strip, lowercase and collapse runs of whitespace to one space."""
    return _WS.sub(" ", text.strip().lower())


def exact_match_items(predictions: Sequence[str], references: References) -> list[float]:
    """1.0 where the normalised prediction equals any normalised reference, else 0.0."""
    check_inputs(predictions, references)
    return [float(normalize_text(p) in {normalize_text(r) for r in refs}) for p, refs in zip(predictions, references)]


def exact_match(predictions: Sequence[str], references: References) -> float:
    """Share of items (0-1) whose normalised prediction equals one of their normalised references."""
    items = exact_match_items(predictions, references)
    return sum(items) / len(items)


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def _canonical_number(token: str) -> str | None:
    token = token.replace(",", "").replace("$", "").rstrip(".")
    try:
        value = Decimal(token)
    except InvalidOperation:
        return None
    out = format(value.normalize(), "f")
    return "0" if out in ("-0", "0") else out


def extract_final_number(text: str) -> str | None:
    """The final numeric answer of a GSM8K-style solution, canonicalised ("1,200.50" -> "1200.5").

    The first number after the last "####" when there is one (GSM8K's answer marker), otherwise
    the last number in the text; None when the text holds no number.
    """
    if "####" in text:
        after = text.rsplit("####", 1)[1]
        found = _NUMBER.findall(after)
        if found:
            return _canonical_number(found[0])
    found = _NUMBER.findall(text)
    return _canonical_number(found[-1]) if found else None


def final_number_items(predictions: Sequence[str], references: References) -> list[float]:
    """1.0 where the prediction's final number equals the final number of any reference."""
    check_inputs(predictions, references)
    out = []
    for pred, refs in zip(predictions, references):
        got = extract_final_number(pred)
        wanted = {extract_final_number(r) for r in refs} - {None}
        out.append(float(got is not None and got in wanted))
    return out


# ---------------------------------------------------------------------------------- bootstrap
def bootstrap_ci(
    stats: CorpusStats, n_samples: int = 1000, seed: int = 0, confidence: float = 0.95, chunk: int = 100
) -> tuple[float, float]:
    """Percentile bootstrap interval of a corpus metric.

    Resamples items with replacement `n_samples` times (numpy default_rng(seed)), recomputes the
    corpus score from the re-summed per-item statistics, and returns the (1-confidence)/2 and
    (1+confidence)/2 percentiles. Deterministic for a given seed. The resampling and the
    percentiles are scipy.stats.bootstrap's (method="percentile"), run on item indices so that
    each resample's score comes from its item counts (one matrix product per `chunk` resamples).
    """
    n = stats.stats.shape[0]
    if n == 0:
        raise MetricError("bootstrap_ci: no items")
    if n_samples < 1:
        raise MetricError(f"bootstrap_ci: n_samples={n_samples}; use >= 1 (e.g. 1000)")
    if not 0 < confidence < 1:
        raise MetricError(f"bootstrap_ci: confidence={confidence}; use a share in (0, 1), e.g. 0.95")
    if n == 1:  # scipy.stats.bootstrap needs two items; every resample of one item is that item
        score = stats.score()
        return score, score

    def corpus_scores(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        # idx: (b, n) item indices, one resample per row -> how often each item was drawn, then
        # one matrix product for all re-summed statistics
        b = idx.shape[0]
        counts = np.bincount((np.arange(b)[:, None] * n + idx).ravel(), minlength=b * n).reshape(b, n)
        sums = counts.astype(np.float64) @ stats.stats
        return np.array([stats.aggregate(row) for row in sums], dtype=np.float64)

    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        if n_samples < 2:  # scipy's standard error (ddof=1) of one resample warns; it is not used here
            warnings.simplefilter("ignore", RuntimeWarning)
        res = bootstrap((np.arange(n),), corpus_scores, n_resamples=n_samples, batch=chunk, vectorized=True,
                        method="percentile", confidence_level=confidence, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)