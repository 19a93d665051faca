"""The metric registry: every generation metric under its name, and compute() over a list of them.

    from harness.eval import metrics
    report = metrics.compute(["bleu", "chrf", "rouge"], predictions, references, bootstrap_samples=1000, seed=0)
    report.metrics["bleu"], report.ci95["bleu"], report.signatures["bleu"]

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

# ----------------------------------------------------------------------------------- registry
MetricFn = Callable[[Sequence[str], References], dict[str, CorpusStats]]


METRICS: dict[str, MetricFn] = {}


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Register `fn(predictions, references) -> {output name: CorpusStats}` under `name`."""

    def deco(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise MetricError(f"metric {name!r} is registered twice")
        METRICS[name] = fn
        return fn

    return deco


@register_metric("bleu")
def _bleu(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return {"bleu": sacrebleu_stats("bleu", predictions, references)}


@register_metric("chrf")
def _chrf(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return {"chrf": sacrebleu_stats("chrf", predictions, references)}


@register_metric("ter")
def _ter(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return {"ter": sacrebleu_stats("ter", predictions, references)}


@register_metric("rouge")
def _rouge(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return rouge_stats(predictions, references)


@register_metric("exact_match")
def _exact_match(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return {"exact_match": _mean_stats(exact_match_items(predictions, references))}


@register_metric("final_number")
def _final_number(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return {"final_number": _mean_stats(final_number_items(predictions, references))}


@register_metric("nist")
def _nist(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return {"nist": nlgmetrics.nist_stats(predictions, references)}


@register_metric("meteor")
def _meteor(predictions: Sequence[str], references: References) -> dict[str, CorpusStats]:
    return {"meteor": nlgmetrics.meteor_stats(predictions, references)}


@register_metric("cider")
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
            report.metrics[out] = stats.score()
            if bootstrap_samples > 0 and stats.resample:
                report.ci95[out] = list(bootstrap_ci(stats, bootstrap_samples, seed))
            if stats.signature:
                report.signatures[out] = stats.signature
    return report
