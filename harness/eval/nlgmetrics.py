"""The E2E NLG challenge's other metrics: NIST, METEOR and CIDEr, from the libraries that implement them.

    metrics.compute(["bleu", "nist", "meteor", "cider", "rouge"], predictions, references)

| metric | implementation | scale | bootstrap CI |
|---|---|---|---|
| nist   | nltk.translate.nist_score.corpus_nist, n = 5 | 0-~15 | none (information weights are corpus-wide) |
| meteor | METEOR 1.5 (meteor-1.5.jar from pycocoevalcap, run by Java, `-l en -norm`), corpus score | 0-1 | none (the jar's corpus score is not a mean) |
| cider  | pycocoevalcap's CIDEr-D (n = 4, sigma = 6), mean of per-item scores | 0-~10 | yes, document frequencies held fixed |

Text is lowercased and split by sacrebleu's 13a tokenizer before scoring. The official E2E scripts
(tuetschek/e2e-metrics) compute NIST with mteval-v13a.pl and METEOR / CIDEr with the MS-COCO caption code
after their own tokenisation, so small differences from published numbers are expected. METEOR needs a
Java runtime (`java` on PATH); without one it fails with that message rather than reporting nothing.
"""

from __future__ import annotations

import functools
import shutil
from typing import Sequence

import numpy as np

from harness.eval.scores import CorpusStats, MetricError, References, _mean_stats, check_inputs

NIST_N = 5


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def tokenize(text: str) -> str:
    """Lowercased, 13a-tokenized, single-spaced."""
    return " ".join(_tokenizer()(text.lower()).split())


def _fixed(score: float, n: int) -> CorpusStats:
    """A corpus score with no per-item decomposition: reported, never resampled."""
    return CorpusStats(np.zeros((n, 0)), lambda _summed, s=float(score): s, resample=False)


def nist_stats(predictions: Sequence[str], references: References) -> CorpusStats:
    from nltk.translate.nist_score import corpus_nist

    check_inputs(predictions, references)
    hyps = [tokenize(p).split() for p in predictions]
    refs = [[tokenize(r).split() for r in rs] for rs in references]
    # an n with no hypothesis n-grams at all adds 0 to NIST (mteval), but nltk divides by its zero count:
    # score with the largest n that has some, which gives the same sum
    n = max((k for k in range(1, NIST_N + 1) if any(len(h) >= k for h in hyps)), default=0)
    return _fixed(corpus_nist(refs, hyps, n=n) if n else 0.0, len(hyps))


def _coco_inputs(predictions: Sequence[str], references: References) -> tuple[dict, dict]:
    check_inputs(predictions, references)
    gts = {i: [tokenize(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [tokenize(p)] for i, p in enumerate(predictions)}
    return gts, res


def cider_stats(predictions: Sequence[str], references: References) -> CorpusStats:
    from pycocoevalcap.cider.cider import Cider

    gts, res = _coco_inputs(predictions, references)
    _, per_item = Cider().compute_score(gts, res)
    return _mean_stats([float(x) for x in per_item])


def meteor_stats(predictions: Sequence[str], references: References) -> CorpusStats:
    if shutil.which("java") is None:
        raise MetricError("metric 'meteor' runs METEOR 1.5 (a Java program) but no `java` is on PATH: install a "
                          "Java runtime (Debian: apt-get install default-jre-headless) or drop meteor from the "
                          "suite's metrics")
    from pycocoevalcap.meteor.meteor import Meteor

    gts, res = _coco_inputs(predictions, references)
    # the jar's line protocol breaks on empty lines: an empty prediction is scored as a lone period
    res = {i: [h[0] or "."] for i, h in res.items()}
    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:
        scorer.meteor_p.kill()
    return _fixed(score, len(res))
