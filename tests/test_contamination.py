"""Train/eval contamination (harness/contamination.py): planted overlap is found after case, punctuation
and whitespace changes, nothing else is; n and the short-item rule behave as documented; hashes do not
depend on the process.

    python -m pytest -q tests/test_contamination.py
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys

import pytest

from harness import paths
from harness.config import DataConfig
from harness.data import DataError, EvalExample, load_eval_examples
from harness.data.prepare import training_rows
from harness.eval import contamination as C


def _words(rng: random.Random, k: int) -> list[str]:
    """k made-up words (6 letters from a 26^6 space): two independent draws share no 8-gram."""
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(k)]


def _noisy(words: list[str]) -> str:
    """The same words as a human might type them: other case, punctuation, odd whitespace."""
    out = []
    for i, w in enumerate(words):
        w = w.upper() if i % 3 == 0 else w.capitalize() if i % 3 == 1 else w
        out.append(w + (",", ".", " --", "!", "")[i % 5])
    return "  \t".join(out[:4]) + "\n\n" + " ".join(out[4:]) + "?"


@pytest.fixture()
def planted():
    """Training texts, and 10 eval items of which items 1, 4 and 8 contain a 13-word run of them."""
    rng = random.Random(0)
    train = [" ".join(_words(rng, 60)) for _ in range(5)]
    items, planted_ids = [], [1, 4, 8]
    for i in range(10):
        before, after = _words(rng, 7), _words(rng, 9)
        if i in planted_ids:
            src = train[i % 5].split()
            middle = _noisy(src[10 + i:23 + i])  # 13 words of a training text
        else:
            middle = " ".join(_words(rng, 13))
        items.append(" ".join(before) + " " + middle + " " + " ".join(after))
    return train, items, planted_ids


# ------------------------------------------------------------------------------------ overlap
def test_planted_overlap_is_found_after_case_punctuation_and_whitespace_changes(planted):
    train, items, planted_ids = planted
    res = C.contamination(items, C.build_index(train))
    assert (res["items"], res["contaminated"], res["share"]) == (10, 3, 0.3)
    assert res["contaminated_ids"] == planted_ids
    assert res["per_item"] == [int(i in planted_ids) for i in range(10)]
    assert (res["n"], res["min_words"], res["too_short"]) == (13, 8, 0)
    json.dumps(res)  # goes into eval.json as it is


def test_no_overlap_gives_zero(planted):
    train, _, _ = planted
    rng = random.Random(1)
    items = [" ".join(_words(rng, 30)) for _ in range(20)]
    res = C.contamination(items, C.build_index(train))
    assert (res["contaminated"], res["share"], res["contaminated_ids"]) == (0, 0.0, [])
    assert res["per_item"] == [0] * 20


def test_n_is_configurable_and_a_run_one_word_short_of_n_does_not_count():
    rng = random.Random(2)
    train = _words(rng, 40)
    item = " ".join(_words(rng, 10) + train[5:17] + _words(rng, 10))  # 12 training words in a row
    index13 = C.build_index([" ".join(train)])
    assert C.contamination([item], index13)["contaminated"] == 0
    index12 = C.build_index([" ".join(train)], n=12)
    res = C.contamination([item], index12, n=12)
    assert (res["n"], res["contaminated"]) == (12, 1)
    assert C.contamination([item], index12)["n"] == 12  # n defaults to the index's
    with pytest.raises(ValueError, match="build_index"):
        C.contamination([item], index12, n=13)


def test_ngrams_do_not_span_two_training_texts():
    rng = random.Random(3)
    a, b = _words(rng, 10), _words(rng, 10)
    item = " ".join(a[3:] + b[:6])  # 13 words that only exist across the boundary of a and b
    assert C.contamination([item], C.build_index([" ".join(a), " ".join(b)]))["contaminated"] == 0
    assert C.contamination([item], C.build_index([" ".join(a + b)]))["contaminated"] == 1


def test_short_items_rule():
    rng = random.Random(4)
    train = _words(rng, 50)
    index = C.build_index([" ".join(train)])  # n=13, min_words=8
    inside10 = _noisy(train[20:30])  # 10 words, all in training, in order
    changed10 = " ".join(train[20:25] + ["zzzzzz"] + train[26:30])  # one word differs
    inside8 = " ".join(train[0:8])  # exactly min_words
    inside7 = " ".join(train[0:7])  # under min_words: never counted
    apart9 = " ".join(train[40:48] + [train[10]])  # its second 8-word window is not in training
    res = C.contamination([inside10, changed10, inside8, inside7, apart9], index)
    assert res["per_item"] == [1, 0, 1, 0, 0]
    assert res["too_short"] == 1
    # The documented approximation: each 8-word window found, but at different places in training.
    stitched = C.build_index([" ".join(train[:8]), " ".join(train[1:9])])
    assert C.contamination([" ".join(train[:9])], stitched)["per_item"] == [1]
    # min_words == n: nothing under n words is checked.
    strict = C.build_index([" ".join(train)], n=13, min_words=13)
    assert strict.short_hashes == frozenset()
    assert C.contamination([inside10, " ".join(train[:13])], strict)["per_item"] == [0, 1]


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        C.build_index(["a b c"], n=5, min_words=6)
    with pytest.raises(ValueError):
        C.ngrams(["a"], 0)
    with pytest.raises(ValueError, match="empty"):
        C.contamination([], C.build_index(["a b c"]))


def test_index_counts():
    index = C.build_index(["one two three four five", "one two three", ""], n=3, min_words=2)
    assert (index.texts, index.words, index.ngrams) == (3, 8, 3)  # the second text repeats the first 3-gram
    assert len(index.short_hashes) == 4  # 2-grams: one two, two three, three four, four five


# ------------------------------------------------------------------------------ normalisation
@pytest.mark.parametrize("a,b", [
    ("The Quick BROWN fox", "the quick brown fox"),
    ("don't stop", "don 't stop"),  # WikiText-style tokenisation
    ("well-known", "well @-@ known"),
    ("a,b;c.d", "a b c d"),
    ("tab\tnew\nline\r\nend", "tab new line end"),
    ("ＦＵＬＬ ｗｉｄｔｈ １２", "full width 12"),  # NFKC
    ("ﬁsh", "fish"),  # ligature
    ("Straße", "STRASSE"),  # casefold
    ("zero\u200bwidth", "zero width"),  # a format character separates
    ("café", "cafe\u0301"),  # composed and decomposed accents agree
])
def test_normalisation_makes_these_equal(a, b):
    assert C.normalise_words(a) == C.normalise_words(b)


def test_normalisation_invariants():
    text = "«Hello», she said — 3.5% of $1,000 isn't much!  ¿Qué? 東京 is big_ish.\n"
    words = C.normalise_words(text)
    assert words == ["hello", "she", "said", "3", "5", "of", "1", "000", "isn", "t", "much", "qué", "東京",
                     "is", "big", "ish"]
    assert C.normalise_words(" ".join(words)) == words  # idempotent
    assert all(w and not any(ch.isspace() for ch in w) and w == w.casefold() for w in words)
    assert C.normalise_words("") == C.normalise_words(" ... !!! \n") == []
    assert C.normalise_words("naïve") != C.normalise_words("naive")  # accents are kept


# -------------------------------------------------------------------------------------- hashes
_HASH_SCRIPT = ("import json, sys; from harness.eval.contamination import ngrams, normalise_words; "
                "print(json.dumps(sorted(ngrams(normalise_words(sys.argv[1]), 3))))")


def test_hashes_are_stable_across_processes_and_hash_seeds():
    text = "Hashes must not depend on PYTHONHASHSEED, or indices built in two processes disagree."
    here = sorted(C.ngrams(C.normalise_words(text), 3))
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", _HASH_SCRIPT, text], env=env, capture_output=True, text=True,
                             check=True, cwd=str(paths.REPO_ROOT))
        assert json.loads(out.stdout) == here
    # and across versions and machines: each word's BLAKE2b-64 (big-endian), combined as documented in window_hashes
    assert C.ngrams("the quick brown fox".split(), 4) == {3252730684529326860}
    words = "the quick brown fox".split()
    acc = 0
    for w in words:  # the definition, in Python's integers
        acc = (acc * C._MULT + int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "big")) % 2**64
    acc ^= acc >> 30
    acc = acc * C._MIX1 % 2**64
    acc ^= acc >> 27
    acc = acc * C._MIX2 % 2**64
    assert {acc ^ (acc >> 31)} == C.ngrams(words, 4)


def test_an_index_holds_exactly_the_ngrams_of_each_text():
    rng = random.Random(6)
    texts = [" ".join(_words(rng, k)) for k in (0, 3, 12, 13, 14, 40)] + ["a b c d e f g h i j k l m n o p"]
    index = C.build_index(texts, n=13, min_words=8)
    per_text = [C.normalise_words(t) for t in texts]
    assert index.hashes == frozenset().union(*(C.ngrams(w, 13) for w in per_text))
    assert index.short_hashes == frozenset().union(*(C.ngrams(w, 8) for w in per_text))
    assert index.ngrams == 1 + 2 + 28 + 4  # 13-, 14-, 40- and 16-word texts; none under 13 words


def test_ngrams_of_short_sequences():
    assert C.ngrams(["a", "b"], 3) == set()
    assert len(C.ngrams(["a", "b", "a", "b"], 2)) == 2  # a b, b a (a set)
    assert all(0 <= h < 2 ** 64 for h in C.ngrams(list("abcdefgh"), 2))


# ------------------------------------------------------------------------------ rows -> texts
def test_texts_of_rows_covers_every_format_and_drops_system_turns():
    rows = [
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "Hi"},
        {"prompt": "name[Aromi]", "completion": "Aromi is a pub."},
        {"text": "A document."},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"},
                      {"role": "assistant", "content": "A."}]},
        EvalExample(id="x-0", messages=[{"role": "system", "content": "Summarise."}, {"role": "user", "content": "D."}],
                    prompt="### Instruction:\nSummarise.\n\n### Input:\nD.\n\n### Response:\n",
                    references=["S1", "S2"]),
    ]
    assert C.texts_of_rows(rows) == ["Add.\n2 and 3\n5", "Say hi.\nHi", "name[Aromi]\nAromi is a pub.",
                                     "A document.", "Q?\nA.", "D.\nS1\nS2"]
    with pytest.raises(ValueError, match="harness.data"):
        C.texts_of_rows([{"mr": "name[Aromi]", "ref": "Aromi."}])


# ------------------------------------------------------------------ training rows (harness.data)
def _data_file(tmp_path, rows: list[dict]) -> str:
    p = tmp_path / "set.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(p)


def test_training_rows_are_the_train_split_and_its_own_val_split_is_clean(tmp_path):
    rng = random.Random(5)
    rows = [{"q": " ".join(_words(rng, 15)), "a": " ".join(_words(rng, 15))} for _ in range(40)]
    cfg = DataConfig(name="toy", format="prompt_completion", path=_data_file(tmp_path, rows),
                     fields={"prompt": "q", "completion": "a"}, val_size=0.25)
    train = training_rows(cfg)
    val = load_eval_examples(cfg)  # with no eval_path: the held-out split (data.split_seed, as in training)
    assert len(train) == 30 and len(val) == 10
    assert {r["prompt"] for r in train}.isdisjoint(ex.messages[-1]["content"] for ex in val)
    index = C.build_index(C.texts_of_rows(train))
    assert C.contamination(C.texts_of_rows(val), index)["share"] == 0.0
    # with val_size=0 every row is trained on, the held-out ones included
    everything = C.build_index(C.texts_of_rows(training_rows(dataclasses.replace(cfg, val_size=0))))
    assert C.contamination(C.texts_of_rows(val), everything)["share"] == 1.0


def test_training_rows_refuses_eval_only_data(tmp_path):
    cfg = DataConfig(name="questions", format="prompt_completion", path=_data_file(tmp_path, [{"text": "Why?"}] * 5),
                     fields={"prompt": "text"})
    with pytest.raises(DataError, match="eval"):
        training_rows(cfg)


# ------------------------------------------------------------- every trained run's eval.json
@pytest.fixture()
def planted_run(tmp_path):
    """A data file whose even rows share a 20-word sentence (so do the validation rows among them), a held-out
    eval file whose items 0 and 2 repeat training rows word for word, and a text corpus that quotes one."""
    from harness import config

    rng = random.Random(11)
    shared = " ".join(_words(rng, 20))
    rows = [{"instruction": " ".join(_words(rng, 5)), "input": "",
             "output": " ".join(_words(rng, 15)) + (". " + shared if i % 2 == 0 else "")} for i in range(40)]
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg0 = DataConfig(name="x", format="alpaca", path=str(train_file), val_size=0.25)
    trained_on = training_rows(cfg0)
    fresh = [{"instruction": " ".join(_words(rng, 5)), "input": "", "output": " ".join(_words(rng, 15))} for _ in range(3)]
    eval_rows = [trained_on[0], fresh[0], trained_on[1], fresh[1], fresh[2]]
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in eval_rows), encoding="utf-8")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(_words(rng, 30)) + "\n" + trained_on[3]["output"] + "\n", encoding="utf-8")
    overrides = [
        "model=tiny-llama", "data=alpaca-tiny", "tracker=none", "train.max_length=256", "eval=quick",
        # data.name kept: the generation suite below names the run's data config (a path alone renames it)
        "data.name=alpaca-tiny", f"data.path={train_file}", f"data.eval_path={eval_file}", "data.val_size=0.25",
        "eval.lm_eval.tasks=[]",
        f"eval.perplexity=[{{name:corpus,path:{corpus},max_length:64,stride:64,batch_size:4}}]",
        "eval.generation=[{name:planted,data:alpaca-tiny,max_new_tokens:2,batch_size:8,metrics:[]}]",
    ]
    return lambda *extra: config.compose(overrides + list(extra)), shared


def _tiny_model(cfg):
    from harness.model.load import load_model_and_tokenizer

    return load_model_and_tokenizer(cfg.model)


@pytest.mark.slow
def test_every_suite_of_a_trained_run_records_its_contamination(planted_run, tmp_path, capsys, monkeypatch):
    from harness.eval.suites import run_suites
    from harness.eval.val import val_items
    from harness.run.record import read_eval

    make_cfg, shared = planted_run
    cfg = make_cfg()
    built = []
    monkeypatch.setattr(C, "run_index", lambda *a, **k: built.append(a) or C.build_index(
        C.texts_of_rows(training_rows(cfg.data)), 13, 8))
    model, tok = _tiny_model(cfg)
    run_suites(model, tok, cfg, tmp_path / "run", progress=False)
    suites = read_eval(tmp_path / "run")["suites"]
    assert len(built) == 1  # one training index per run, not per suite

    keys = ["n", "min_words", "items", "contaminated", "too_short", "share", "contaminated_ids", "train_data", "warn_above"]
    for name in ("val", "corpus", "planted"):
        c = suites[name]["contamination"]
        assert sorted(c) == sorted(keys), name
        assert (c["n"], c["min_words"], c["train_data"], c["warn_above"]) == (13, 8, "alpaca-tiny", 0.01)
    gen = suites["planted"]["contamination"]
    assert (gen["items"], gen["contaminated"], gen["share"]) == (5, 2, 0.4)
    assert gen["contaminated_ids"] == ["alpaca-tiny-0000", "alpaca-tiny-0002"]  # the generation samples' ids
    assert suites["corpus"]["contamination"]["contaminated"] == 1
    ids, texts = val_items(cfg, "val", suites["val"])  # the held-out rows: contaminated exactly where they hold `shared`
    val = suites["val"]["contamination"]
    assert val["items"] == 10 and val["contaminated_ids"] == [i for i, t in zip(ids, texts) if shared in t] != []
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 3 and all("eval.contamination_warn=0.01" in w for w in warnings)
    assert any(w.startswith("[harness] warning: planted: 2 of 5 items (40.0%)") for w in warnings)


def test_contamination_is_not_recorded_for_a_base_model_or_when_off(planted_run, tmp_path):
    from harness.eval.suites import run_suites

    make_cfg, _ = planted_run
    for i, (cfg, trained) in enumerate([(make_cfg(), False), (make_cfg("eval.contamination=false"), True)]):
        model, tok = _tiny_model(cfg)
        suites = run_suites(model, tok, cfg, tmp_path / str(i), progress=False, trained=trained)
        assert set(suites) == {"val", "corpus", "planted"}
        assert not any("contamination" in e for e in suites.values())


def test_contamination_n_and_the_warning_threshold_are_config(planted_run, tmp_path, capsys):
    from harness.config import ConfigError
    from harness.eval.suites import run_suites

    make_cfg, _ = planted_run
    cfg = make_cfg("eval.contamination_n=21", "eval.contamination_warn=0.5", "eval.val_loss=false",
                   "eval.perplexity=[]")
    model, tok = _tiny_model(cfg)
    c = run_suites(model, tok, cfg, tmp_path, progress=False)["planted"]["contamination"]
    assert (c["n"], c["min_words"], c["warn_above"], c["contaminated"]) == (21, 8, 0.5, 2)
    assert "warning" not in capsys.readouterr().out  # 40% is under 50%
    for bad in ("eval.contamination_n=3", "eval.contamination_warn=1.5", "eval.contamination_warn=-0.1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            make_cfg(bad)


def test_lm_eval_items_are_the_scored_docs_with_their_choices():
    from harness.eval.lm_eval import lm_eval_items, task_items

    if not (paths.data_root() / "multiple-choice").is_dir():
        pytest.skip(f"the shared data kit is not at {paths.data_root()} (set HARNESS_DATA)")
    ids, texts = lm_eval_items(None, "arc_easy", {"n": 3})
    assert ids == [0, 1, 2] and texts == task_items("arc_easy")[:3]
    assert texts[0].count("\n") >= 3  # the question, then every choice
    assert task_items("some_hub_task") is None


# ------------------------------------------------------------------------------ the docs table
@pytest.mark.slow  # reads every shipped data set: about 20 s on 2 CPU cores
def test_the_docs_table_is_what_the_command_prints(repo_root):

    if not (paths.data_root() / "MANIFEST.md").is_file():
        pytest.skip(f"the shared data kit is not at {paths.data_root()} (set HARNESS_DATA)")
    doc = (repo_root / "docs" / "contamination.md").read_text(encoding="utf-8")
    documented = [line for line in doc.splitlines() if line.startswith("| ")]
    printed = [line for line in C.table(log=lambda _: None).splitlines() if line.startswith("| ")]
    assert documented == printed, "rerun `python -m harness.eval.contamination --table` and update docs/contamination.md"
