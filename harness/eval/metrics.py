"""The metric registry: every generation metric under its name with its metadata, and compute() over a list of them.

    from harness.eval import metrics
    report = metrics.compute(["bleu", "chrf", "rouge"], predictions, references, bootstrap_samples=1000, seed=0)
    report.metrics["bleu"], report.ci95["bleu"], report.signatures["bleu"]
    metrics.describe_metric("rougeL")   # MetricMeta(higher_is_better=True, scale='fraction', per_item='rougeL')

A metric's metadata (whether higher is better, its scale, the key of its per-item value in
samples/<suite>.jsonl; harness/run/metric_meta.py) is declared once, where the metric is defined:
register_metric(...) for the generation metrics below, declare_metric(...) in the suite kinds for what they
write (lm_eval.py: acc, acc_norm, exact_match; perplexity.py; val.py). METRIC_META holds every output name;
the evaluator copies it into eval.json (`metric_meta`), and reports read it from there.

The scoring functions live in harness/eval/scores.py (sacrebleu, rouge-score, exact match, final number)
and harness/eval/nlgmetrics.py (NIST, METEOR, CIDEr).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable, Sequence

from harness.eval import nlgmetrics
from harness.eval.scores import (
    CorpusStats,
    MetricError,
    References,
    _mean_stats,
    bootstrap_ci,
    check_inputs,
    exact_match_items,
    final_number_items,
    rouge_stats,
    sacrebleu_stats,
)
from harness.run.metric_meta import MetricMeta

# ----------------------------------------------------------------------------------- registry
MetricFn = Callable[[Sequence[str], References], dict[str, CorpusStats]]


METRICS: dict[str, MetricFn] = {}


METRIC_META: dict[str, MetricMeta] = {}  # output name (bleu, rouge1, acc, word_perplexity, loss ...) -> its metadata


def declare_metric(name: str, *, higher_is_better: bool | None, scale: str, per_item: str | None = None) -> MetricMeta:
    """Declare what the output `name` of some suite means. Declaring the same name again with the same
    metadata is allowed (exact_match is both a generation metric and an lm-eval one); different metadata is
    refused, because eval.json keys metrics by name within a suite and the report reads them the same way."""
    meta = MetricMeta(higher_is_better, scale, per_item)
    if METRIC_META.get(name, meta) != meta:
        raise MetricError(f"metric {name!r} is declared twice with different metadata: {METRIC_META[name]} and {meta}")
    METRIC_META[name] = meta
    return meta


def describe_metric(name: str) -> MetricMeta | None:
    """The declared metadata of an output name, or None when nobody declared it."""
    return METRIC_META.get(name)


def register_metric(name: str, *, higher_is_better: bool, scale: str, per_item: str | None = None,
                    outputs: dict[str, str | None] | None = None) -> Callable[[MetricFn], MetricFn]:
    """Register `fn(predictions, references) -> {output name: CorpusStats}` under `name`, with its metadata:
    higher_is_better, scale (harness.run.metric_meta.SCALES) and per_item, the key generation.py writes the
    item's value under in samples/<suite>.jsonl (None: no per-item form). A metric with several outputs
    (rouge -> rouge1 ...) gives `outputs`: each output name and its per-item key."""

    def deco(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise MetricError(f"metric {name!r} is registered twice")
        for out, key in (outputs if outputs is not None else {name: per_item}).items():
            declare_metric(out, higher_is_better=higher_is_better, scale=scale, per_item=key)
        METRICS[name] = fn
        return fn

    return deco


@register_metric("bleu", higher_is_better=True, scale="percent", per_item="bleu")  # sentence BLEU per item
def _bleu(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return {"bleu": sacrebleu_stats("bleu", predictions, references)}


@register_metric("chrf", higher_is_better=True, scale="percent", per_item="chrf")
def _chrf(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return {"chrf": sacrebleu_stats("chrf", predictions, references)}


@register_metric("ter", higher_is_better=False, scale="percent")
def _ter(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return {"ter": sacrebleu_stats("ter", predictions, references)}


@register_metric("rouge", higher_is_better=True, scale="fraction",
                 outputs={"rouge1": None, "rouge2": None, "rougeL": "rougeL", "rougeLsum": None})
def _rouge(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return rouge_stats(predictions, references)


@register_metric("exact_match", higher_is_better=True, scale="binary", per_item="exact_match")
def _exact_match(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return {"exact_match": _mean_stats(exact_match_items(predictions, references))}


@register_metric("final_number", higher_is_better=True, scale="binary")
def _final_number(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return {"final_number": _mean_stats(final_number_items(predictions, references))}


@register_metric("nist", higher_is_better=True, scale="raw")
def _nist(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return {"nist": nlgmetrics.nist_stats(predictions, references)}


@register_metric("meteor", higher_is_better=True, scale="fraction")
def _meteor(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return {"meteor": nlgmetrics.meteor_stats(predictions, references)}


@register_metric("cider", higher_is_better=True, scale="raw")
def _cider(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return {"cider": nlgmetrics.cider_stats(predictions, references)}


def check_metric_names(names: Sequence[str]) -> None:
    """Raise MetricError naming every unknown metric, with a "Did you mean ...?" where one is close."""
    errors = []
    for name in names:
        if name not in METRICS:
            close = difflib.get_close_matches(str(name), list(METRICS), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            errors.append(f"unknown metric {name!r}.{hint} Known metrics: {', '.join(sorted(METRICS))}")
    if errors:
        raise MetricError("; ".join(errors))


@dataclass
class MetricReport:
    metrics: dict[str, float] = field(default_factory=dict)
    ci95: dict[str, list[float]] = field(default_factory=dict)
    signatures: dict[str, str] = field(default_factory=dict)


def compute(
    names: Sequence[str],
    predictions: Sequence[str],
    references: References,
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> MetricReport:
    """Every named metric, a 95% bootstrap interval for each output (none when
    bootstrap_samples == 0) and sacrebleu's signature where there is one."""
    check_metric_names(names)
    check_inputs(predictions, references)
    report = MetricReport()
    for name in dict.fromkeys(names):  # de-duplicated, order kept
        for out, stats in METRICS[name](predictions, references).items():
            if out not in METRIC_META:
                raise MetricError(f"metric {name!r} returned {out!r}, which has no metadata: list it in its "
                                  "register_metric(..., outputs=...)")
            report.metrics[out] = stats.score()
            if bootstrap_samples > 0 and stats.resample:
                report.ci95[out] = list(bootstrap_ci(stats, bootstrap_samples, seed))
            if stats.signature:
                report.signatures[out] = stats.signature
    return report
