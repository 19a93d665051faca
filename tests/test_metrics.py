"""Tests for harness/metrics.py: known values (sacrebleu's README, hand-computed cases), the
multi-reference rules, exact match, final-number extraction, bootstrap intervals and the registry.

    python -m pytest tests/test_metrics.py -x -q
"""

from __future__ import annotations

import math
import shutil
import time

import numpy as np
import pytest

from harness.eval.metrics import (
    METRIC_META,
    METRICS,
    check_metric_names,
    compute,
    declare_metric,
    describe_metric,
    register_metric,
)
from harness.eval.scores import (
    CorpusStats,
    MetricError,
    bootstrap_ci,
    corpus_bleu,
    corpus_chrf,
    corpus_ter,
    exact_match,
    exact_match_items,
    extract_final_number,
    final_number_items,
    normalize_text,
    reference_streams,
    rouge,
    sacrebleu_stats,
    sentence_bleu,
    sentence_chrf,
    sentence_rouge,
)

# sacrebleu README ("Using SacreBLEU from Python"): reference *streams* there, per-item lists here
README_SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
README_STREAMS = [
    ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
    ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
]
README_REFS = [list(r) for r in zip(*README_STREAMS)]


# ------------------------------------------------------------------------------- sacrebleu
def test_bleu_chrf_match_sacrebleu_readme():
    bleu = corpus_bleu(README_SYS, README_REFS)
    chrf = corpus_chrf(README_SYS, README_REFS)
    assert round(bleu.score, 2) == 48.53  # README: BLEU = 48.53 82.4/50.0/45.5/37.5
    assert round(chrf.score, 2) == 59.73  # README: chrF2 = 59.73
    assert bleu.signature.startswith("nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert chrf.signature.startswith("nrefs:2|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")


def test_variable_references_match_sacrebleu_readme():
    # README "Variable Number of References": the first item loses its first reference -> 29.44
    refs = [["The dog had bit the man."], README_REFS[1], README_REFS[2]]
    bleu = corpus_bleu(README_SYS, refs)
    assert round(bleu.score, 2) == 29.44
    assert bleu.signature.startswith("nrefs:var|")


def test_stats_path_equals_sacrebleu_corpus_score():
    """Summing sacrebleu's per-item statistics must reproduce corpus_score exactly."""
    from sacrebleu.metrics import BLEU, CHRF, TER

    for name, cls in (("bleu", BLEU), ("chrf", CHRF), ("ter", TER)):
        ours = sacrebleu_stats(name, README_SYS, README_REFS).score()
        theirs = cls().corpus_score(README_SYS, README_STREAMS).score
        assert ours == pytest.approx(theirs, abs=1e-9), name


def test_bleu_by_hand():
    assert corpus_bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]).score == pytest.approx(100.0)
    assert corpus_bleu(["alpha beta gamma delta"], [["one two three four"]]).score == 0.0
    # p1..p4 = 5/6, 3/5, 2/4, 1/3, brevity penalty 1 -> 100 * (1/12) ** (1/4)
    got = corpus_bleu(["the cat sat on the mat"], [["the cat sat on a mat"]]).score
    assert got == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-9)


def test_ter_by_hand():
    assert corpus_ter(["a b c d"], [["a b x d"]]).score == pytest.approx(25.0)  # 1 edit / 4 words
    # best edits over references (1) / average reference length (4.5)
    assert corpus_ter(["a b c d"], [["a b x d", "a b c d e"]]).score == pytest.approx(100 / 4.5)


def test_sentence_level_scores():
    assert sentence_bleu("the cat sat", ["the cat sat"]) == pytest.approx(100.0)
    # effective order: a 2-word exact match is still 100, not 0
    assert sentence_bleu("the cat", ["the cat"]) == pytest.approx(100.0)
    assert sentence_bleu("xyz", ["the cat"]) == 0.0
    assert sentence_chrf("abc", ["abc"]) == pytest.approx(100.0)
    # best reference counts
    assert sentence_chrf("the cat", ["a dog", "the cat"]) == pytest.approx(100.0)


# ------------------------------------------------------------------------------------ ROUGE
def test_rouge_by_hand():
    got = sentence_rouge("the cat sat on the mat", ["the cat was on the mat"])
    # unigrams: 5 of 6 shared; LCS "the cat on the mat" = 5; bigrams: 3 of 5 shared
    assert got["rouge1"] == pytest.approx(5 / 6)
    assert got["rougeL"] == pytest.approx(5 / 6)
    assert got["rouge2"] == pytest.approx(3 / 5)


def test_rouge_multi_reference_is_max_and_corpus_is_mean():
    pred = "the cat sat on the mat"
    one = sentence_rouge(pred, ["the cat was on the mat"])
    both = sentence_rouge(pred, ["completely different words here", "the cat was on the mat"])
    assert both == pytest.approx(one)
    corpus = rouge([pred, "nothing shared"], [["the cat was on the mat"], ["totally other"]])
    assert corpus["rouge1"] == pytest.approx((5 / 6 + 0.0) / 2)


def test_rouge_uses_stemming():
    assert sentence_rouge("cats running", ["cat runs"])["rouge1"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------ exact match
def test_exact_match_normalisation_and_multi_reference():
    preds = ["  The   Answer\n", "paris", "no"]
    refs = [["the answer"], ["London", "PARIS "], ["yes"]]
    assert exact_match_items(preds, refs) == [1.0, 1.0, 0.0]
    assert exact_match(preds, refs) == pytest.approx(2 / 3)
    assert normalize_text(" A \t B\n\nC ") == "a b c"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("The answer is 1,200.50.", "1200.5"),
        ("It costs $18 in total.", "18"),
        ("first 3 then -4", "-4"),
        ("#### 5 and later 9", "5"),
        ("no number here", None),
        ("3.0", "3"),
        ("720", "720"),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_final_number_match():
    preds = ["so we get 72.", "the answer is 10", "no idea"]
    refs = [["... #### 72"], ["#### 11"], ["#### 3"]]
    assert final_number_items(preds, refs) == [1.0, 0.0, 0.0]


# ------------------------------------------------------------------------------- bootstrap
def _mean_stats(values):
    return CorpusStats(np.column_stack([np.asarray(values, float), np.ones(len(values))]), lambda s: s[0] / s[1])


def test_bootstrap_contains_point_estimate_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    small = _mean_stats(rng.random(40))
    large = _mean_stats(rng.random(4000))
    lo_s, hi_s = bootstrap_ci(small, 500, seed=0)
    lo_l, hi_l = bootstrap_ci(large, 500, seed=0)
    assert lo_s <= small.score() <= hi_s
    assert lo_l <= large.score() <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3  # ~ 1/sqrt(n): 10x narrower expected


def test_bootstrap_matches_normal_theory_for_a_mean():
    values = np.random.default_rng(2).random(2000)
    lo, hi = bootstrap_ci(_mean_stats(values), 2000, seed=0)
    half = 1.96 * values.std() / math.sqrt(len(values))
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)


def test_bootstrap_of_a_mean_is_scipy_percentile_bootstrap():
    # the same generator and batches as scipy.stats.bootstrap on the values themselves
    from scipy.stats import bootstrap

    values = np.random.default_rng(9).random(300)
    lo, hi = bootstrap_ci(_mean_stats(values), 700, seed=4, confidence=0.9, chunk=64)
    ref = bootstrap((values,), np.mean, n_resamples=700, batch=64, vectorized=True, method="percentile",
                    confidence_level=0.9, rng=np.random.default_rng(4)).confidence_interval
    assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert bootstrap_ci(_mean_stats([0.25]), 50, seed=0) == (0.25, 0.25)  # one item: every resample is it


def test_bootstrap_deterministic_by_seed():
    stats = sacrebleu_stats("bleu", README_SYS * 5, README_REFS * 5)
    a = bootstrap_ci(stats, 200, seed=3)
    b = bootstrap_ci(stats, 200, seed=3)
    c = bootstrap_ci(stats, 200, seed=4)
    assert a == b
    assert a != c


def test_bootstrap_resample_sums_equal_direct_rescoring():
    """The sufficient-statistics shortcut gives the same score as re-scoring a resampled corpus."""
    from sacrebleu.metrics import BLEU

    sys_, refs = README_SYS * 3, README_REFS * 3
    stats = sacrebleu_stats("bleu", sys_, refs)
    idx = [0, 0, 4, 8, 8, 8, 2, 5, 1]
    direct = BLEU().corpus_score([sys_[i] for i in idx], reference_streams([refs[i] for i in idx])).score
    assert stats.aggregate(stats.stats[idx].sum(axis=0)) == pytest.approx(direct, abs=1e-9)


def test_bootstrap_bleu_630_items_1000_resamples_is_fast():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    preds = [" ".join(rng.choice(words, 12)) for _ in range(630)]
    refs = [[" ".join(rng.choice(words, 12)) for _ in range(int(rng.integers(1, 8)))] for _ in range(630)]
    stats = sacrebleu_stats("bleu", preds, refs)
    t0 = time.perf_counter()
    lo, hi = bootstrap_ci(stats, 1000, seed=0)
    elapsed = time.perf_counter() - t0
    assert lo <= stats.score() <= hi
    assert elapsed < 5.0, f"bootstrap took {elapsed:.2f} s"


# ------------------------------------------------------------------------ registry / compute
def test_registry_and_did_you_mean():
    assert {"bleu", "chrf", "ter", "rouge", "exact_match"} <= set(METRICS)
    with pytest.raises(MetricError, match="Did you mean 'rouge'"):
        check_metric_names(["bleu", "rogue"])
    with pytest.raises(MetricError, match="register"):
        register_metric("bleu", higher_is_better=True, scale="percent", per_item="bleu")(lambda p, r: {})


# ------------------------------------------------------------------------------ metric metadata
# every metric any suite kind writes to eval.json (generation, lm_eval, perplexity, val)
WRITTEN = {
    "generation": ["bleu", "chrf", "ter", "rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match", "final_number",
                   "nist", "meteor", "cider"],
    "lm_eval": ["acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "exact_match", "exact_match_stderr",
                "exact_match_flexible-extract", "exact_match_flexible-extract_stderr"],
    "perplexity": ["word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity"],
    "val": ["loss", "perplexity"],
}


def test_every_metric_a_suite_writes_declares_its_metadata():
    import harness.eval.suites  # noqa: F401  (the suite kinds declare their outputs on import)

    missing = [m for names in WRITTEN.values() for m in names if describe_metric(m) is None]
    assert missing == []
    r = {m: describe_metric(m).to_record() for names in WRITTEN.values() for m in names}
    assert r["acc"] == {"higher_is_better": True, "scale": "binary", "per_item": "acc"}
    assert r["acc_norm"]["per_item"] == "acc_norm" and r["acc_stderr"]["higher_is_better"] is None
    assert r["exact_match_flexible-extract"]["per_item"] == "exact_match_flexible-extract"
    assert r["bleu"] == {"higher_is_better": True, "scale": "percent", "per_item": "bleu"}
    assert r["ter"]["higher_is_better"] is False and r["ter"]["per_item"] is None
    # one registered metric, several outputs: each its own entry; only rougeL has per-item values in samples
    assert {k: r[k]["per_item"] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")} == {
        "rouge1": None, "rouge2": None, "rougeL": "rougeL", "rougeLsum": None}
    assert all(r[k]["scale"] == "fraction" and r[k]["higher_is_better"] for k in ("rouge1", "rougeL"))
    for m in WRITTEN["perplexity"] + WRITTEN["val"]:
        assert r[m] == {"higher_is_better": False, "scale": "raw", "per_item": None}, m
    # every registered generation metric's outputs are declared (compute() refuses an undeclared one)
    assert set(compute(["bleu", "chrf", "ter", "rouge", "exact_match", "final_number"], README_SYS, README_REFS,
                       0).metrics) <= set(METRIC_META)


def test_per_item_keys_are_what_lm_eval_rows_hold():
    import harness.eval.suites  # noqa: F401
    from harness.eval.lm_eval import merge_filters, sample_rows

    mc = sample_rows([{"doc_id": 0, "target": 0, "filtered_resps": [[-1.0, False], [-2.0, False]], "acc": 1.0,
                       "acc_norm": 0.0, "doc": {"choices": ["a", "b"]}}], "multiple_choice")
    gen = merge_filters([{"id": 0, "target": "1", "pred": "1", "filter": f, "exact_match": 1.0}
                         for f in ("strict-match", "flexible-extract")])
    for m, rows in (("acc", mc), ("acc_norm", mc), ("exact_match", gen), ("exact_match_flexible-extract", gen)):
        assert describe_metric(m).per_item in rows[0], m


def test_the_fixture_records_carry_the_registrys_metadata():
    import harness.eval.suites  # noqa: F401
    from tests.fixtures_runs import META

    for suite, metas in META.items():
        for m, rec in metas.items():
            assert describe_metric(m).to_record() == rec, (suite, m)


def test_metadata_is_required_and_declared_once():
    with pytest.raises(TypeError):
        register_metric("needs_meta")  # higher_is_better and scale are keyword-only and required
    with pytest.raises(MetricError, match="different metadata"):
        declare_metric("bleu", higher_is_better=False, scale="percent", per_item="bleu")
    assert declare_metric("bleu", higher_is_better=True, scale="percent", per_item="bleu") == describe_metric("bleu")
    with pytest.raises(ValueError, match="scale"):
        declare_metric("new_metric_x", higher_is_better=True, scale="furlongs")
    assert "new_metric_x" not in METRIC_META

    def two_outputs(p, r):
        stats = METRICS["exact_match"](p, r)["exact_match"]
        return {"declared_out": stats, "undeclared_out": stats}

    try:
        register_metric("two_outputs", higher_is_better=True, scale="binary", outputs={"declared_out": None})(two_outputs)
        with pytest.raises(MetricError, match="undeclared_out"):
            compute(["two_outputs"], README_SYS, README_REFS, 0)
    finally:
        METRICS.pop("two_outputs", None)
        METRIC_META.pop("declared_out", None)


def test_compute_report():
    report = compute(["bleu", "chrf", "ter", "rouge", "exact_match"], README_SYS, README_REFS, 200, seed=0)
    assert set(report.metrics) == {"bleu", "chrf", "ter", "rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match"}
    assert set(report.ci95) == set(report.metrics)
    assert set(report.signatures) == {"bleu", "chrf", "ter"}
    assert report.metrics["bleu"] == pytest.approx(48.5308, abs=1e-3)
    assert report.metrics["exact_match"] == pytest.approx(1 / 3)
    for name, (lo, hi) in report.ci95.items():
        assert lo <= report.metrics[name] + 1e-9 and report.metrics[name] <= hi + 1e-9, name
    assert compute(["bleu"], README_SYS, README_REFS, bootstrap_samples=0).ci95 == {}


@pytest.mark.parametrize(
    "preds, refs, match",
    [
        (["a"], [], "1 predictions but 0"),
        ([], [], "no items"),
        (["a"], [[]], "item 0: no references"),
        (["a"], ["a"], "single string"),
        ([None], [["a"]], "prediction must be a string"),
    ],
)
def test_bad_inputs_raise_clear_errors(preds, refs, match):
    with pytest.raises(MetricError, match=match):
        compute(["bleu"], preds, refs)


# ------------------------------------------------------------- NIST, METEOR, CIDEr (harness/eval/nlgmetrics.py)
E2E_PREDS = ["The Eagle is a cheap coffee shop near Burger King.", "Zizzi serves French food in the city centre."]
E2E_REFS = [["The Eagle is a low-priced coffee shop near Burger King.",
             "Near Burger King there is a cheap coffee shop called The Eagle."],
            ["Zizzi is a French restaurant in the city centre."]]


def test_nist_against_nltk_on_tokenized_text():
    from nltk.translate.nist_score import corpus_nist

    from harness.eval.nlgmetrics import tokenize

    got = compute(["nist"], E2E_PREDS, E2E_REFS, bootstrap_samples=100)
    expected = corpus_nist([[tokenize(r).split() for r in rs] for rs in E2E_REFS],
                           [tokenize(p).split() for p in E2E_PREDS], n=5)
    assert got.metrics["nist"] == pytest.approx(expected) and got.metrics["nist"] > 0
    assert "nist" not in got.ci95  # corpus-wide information weights: no per-item bootstrap
    assert tokenize("The Eagle, near Burger-King.") == "the eagle , near burger-king ."
    worse = compute(["nist"], ["Food.", "Shop."], E2E_REFS, bootstrap_samples=0).metrics["nist"]
    assert worse < got.metrics["nist"]


def test_cider_is_a_mean_of_item_scores_with_an_interval():
    exact = compute(["cider"], [rs[0] for rs in E2E_REFS], [[rs[0]] for rs in E2E_REFS], bootstrap_samples=0)
    assert exact.metrics["cider"] == pytest.approx(10.0)  # CIDEr-D's x10 scale: identical text scores 10
    got = compute(["cider"], E2E_PREDS, E2E_REFS, bootstrap_samples=200)
    assert 0 < got.metrics["cider"] < 10
    lo, hi = got.ci95["cider"]
    assert lo <= got.metrics["cider"] <= hi


@pytest.mark.slow  # starts the METEOR 1.5 jar in Java: ~5-20 s
@pytest.mark.skipif(shutil.which("java") is None,
                    reason="no java on PATH: scripts/system-deps.sh installs default-jre-headless (as root)")
def test_meteor_runs_the_jar_and_orders_predictions():
    perfect = compute(["meteor"], [rs[0] for rs in E2E_REFS], E2E_REFS, bootstrap_samples=0).metrics["meteor"]
    good = compute(["meteor"], E2E_PREDS, E2E_REFS, bootstrap_samples=100)
    bad = compute(["meteor"], ["Food.", ""], E2E_REFS, bootstrap_samples=0).metrics["meteor"]
    assert perfect == pytest.approx(1.0, abs=1e-6) and bad < good.metrics["meteor"] < perfect
    assert "meteor" not in good.ci95


def test_meteor_without_java_says_what_to_install(monkeypatch):
    from harness.eval import nlgmetrics

    monkeypatch.setattr(nlgmetrics.shutil, "which", lambda name: None)
    with pytest.raises(MetricError, match="default-jre-headless"):
        compute(["meteor"], E2E_PREDS, E2E_REFS)
