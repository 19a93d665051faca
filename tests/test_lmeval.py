"""lm-eval stage (harness/lmeval.py, harness/eval/tasks/): every data row parses, every shipped task runs
on the tiny Llama, samples are paired by doc id, and our perplexity agrees with lm-eval's.

    python -m pytest tests/test_lmeval.py -x -q            (slow: -m slow, the smollm2-135m cross-check)
"""

from __future__ import annotations

import bz2
import json
import os
import re
import shutil

import pytest

from harness import atomic, config
from harness.config import LmEvalConfig
from harness.eval.lm_eval import (
    SHORT_NAMES,
    build_lm,
    check_task_names,
    crosscheck_wikitext,
    merge_filters,
    run_task,
    sample_rows,
    short_name,
    task_files,
    task_metrics,
    task_name,
)
from harness.eval.tasks import utils as tu
from harness.model.load import load_model_and_tokenizer

MC_SHAPE = {  # task -> (rows, allowed numbers of choices)
    "arc_easy": (2376, {3, 4, 5}), "arc_challenge": (1172, {3, 4, 5}), "openbookqa": (500, {4}),
    "social_iqa": (1954, {3}), "piqa": (1838, {2}), "winogrande": (1267, {2}),
}


# ----------------------------------------------------------------------------- parsers, all rows
@pytest.mark.parametrize("name", sorted(MC_SHAPE))
def test_every_multiple_choice_row_parses(name):
    raw = json.loads(tu.data_file(tu.MC_FILES[name]).read_text(encoding="utf-8"))
    docs = tu.parse_mc_file(name)  # raises ParseError on the first row that does not parse
    rows, sizes = MC_SHAPE[name]
    assert len(docs) == len(raw) == rows
    for doc, row in zip(docs, raw):
        assert len(doc["choices"]) in sizes
        assert 0 <= doc["gold"] < len(doc["choices"])
        assert row["answer"].endswith(str(doc["gold"] + 1))
        assert doc["question"].strip() and all(c.strip() for c in doc["choices"])
        # the parse is lossless: every choice and the question appear verbatim in the instruction
        assert doc["question"] in row["instruction"] and all(c in row["instruction"] for c in doc["choices"])
    assert [d["id"] for d in docs] == list(range(rows))


def test_every_hellaswag_item_parses():
    text = bz2.decompress(tu.data_file(tu.HELLASWAG_FILE).read_bytes()).decode("utf-8")
    docs = tu.parse_hellaswag(text)
    assert len(docs) == 10042
    assert all(len(d["choices"]) == 4 and 0 <= d["gold"] <= 3 and d["query"] for d in docs)
    assert docs[0]["query"] == "Roof shingle removal: A man is sitting on a roof. He"  # ctx_b capitalised
    assert docs[0]["gold"] == 3
    assert not any(re.search(r"\[.*?\]", c) for d in docs for c in d["choices"])  # lm-eval's preprocess


def test_every_gsm8k_answer_has_a_final_number():
    docs = tu.parse_gsm8k(tu.data_file(tu.GSM8K_FILE).read_text(encoding="utf-8"))
    assert len(docs) == 1319
    for d in docs:
        assert re.fullmatch(r"-?\d+(\.\d+)?", tu.gsm8k_final_number(d["answer"])), d["answer"][-40:]


def test_bad_rows_fail_loudly_with_the_row():
    good = {"instruction": "Please choose the correct answer to the question: Why?\n\nAnswer1: a Answer2: b"
                           "\n\nAnswer format: answer1/answer2", "answer": "answer2"}
    assert tu.parse_mc_row(good) == {"question": "Why?", "choices": ["a", "b"], "gold": 1}
    for bad in (
        {**good, "answer": "answer3"},  # gold outside the choices
        {**good, "answer": "maybe"},
        {**good, "instruction": good["instruction"].replace("Answer2: ", "Answer9: ")},
        {**good, "instruction": good["instruction"].replace("Answer format", "Format")},
        {"instruction": 3, "answer": "answer1"},
    ):
        with pytest.raises(tu.ParseError, match="row 7"):
            tu.parse_mc_row(bad, where="x.json row 7")
    with pytest.raises(tu.ParseError, match="multiple of 6"):
        tu.parse_hellaswag("a: b\n1\nx\ny\nz\n")


def test_a_task_file_is_parsed_once_per_process_until_it_changes(tmp_path, monkeypatch):
    """lm-eval builds a task again for every simple_evaluate; the loader keeps the parsed data set per version of its
    file: a second load is the same object without a parse, a changed file (mtime) or another data root is parsed
    again."""
    rel = tu.GSM8K_FILE
    (tmp_path / rel).parent.mkdir(parents=True)
    shutil.copy(tu.data_file(rel), tmp_path / rel)
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path))
    monkeypatch.setattr(tu, "_KEPT", {})
    parsed, real = [], tu.parse_gsm8k
    monkeypatch.setattr(tu, "parse_gsm8k", lambda text: parsed.append(len(text)) or real(text))
    first = tu.load_gsm8k()
    assert tu.load_gsm8k() is first and len(parsed) == 1
    st = (tmp_path / rel).stat()
    os.utime(tmp_path / rel, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = tu.load_gsm8k()
    assert again is not first and len(parsed) == 2 and again["test"]["answer"] == first["test"]["answer"]
    other = tmp_path / "other"
    (other / rel).parent.mkdir(parents=True)
    shutil.copy2(tmp_path / rel, other / rel)
    monkeypatch.setenv("HARNESS_DATA", str(other))
    assert tu.load_gsm8k() is not again and len(parsed) == 3


def test_lm_eval_keeps_the_loader_module_so_a_task_is_parsed_once_over_evaluations(tiny_lm, monkeypatch):
    """The cache above lives in the module lm-eval executes for `!function utils.load_...`; lm-eval 0.4.13 reuses
    that module while its file is unchanged, so three evaluations of HellaSwag decompress its file once (at most:
    an earlier test may have loaded it already)."""
    calls, real = [], bz2.decompress
    monkeypatch.setattr(bz2, "decompress", lambda data: calls.append(1) or real(data))
    for _ in range(3):
        entry = run_task(tiny_lm, "hellaswag", LmEvalConfig(tasks=["hellaswag"], limit=2), None)
        assert entry["n"] == 2
    assert len(calls) <= 1


def test_hellaswag_query_matches_lm_evals_construction():
    from lm_eval.tasks.hellaswag.utils import preprocess

    label, ctx_a, ctx_b = "Clean and jerk", "A lady walks to a barbell. She bends down and grabs the pole.", "the lady"
    stored = f"{label}: {ctx_a} {ctx_b}"
    assert tu.hellaswag_query(stored) == preprocess(label + ": " + ctx_a + " " + ctx_b.capitalize())
    wikihow = "Home and Garden: How to clean silver. [step] Fill a bowl. Place the silver in the bowl."
    assert tu.hellaswag_query(wikihow) == preprocess(wikihow)


def test_task_names_and_files():
    assert task_name("hellaswag") == "harness_hellaswag"
    assert task_name("harness_piqa") == "harness_piqa" and short_name("harness_piqa") == "piqa"
    assert task_name("mmlu") == "mmlu"  # anything else goes to lm-eval as is
    for name in SHORT_NAMES:
        files = task_files(name)
        assert files and all(f.exists() for f in files), name
        head = files[0].read_text().splitlines()[:4]
        assert head[0].startswith("# ") and any("harness eval" in line for line in head), f"{name}: header comment"


# ------------------------------------------------------------------------------- pure helpers
def test_sample_rows_and_metrics_from_lm_eval_output():
    samples = [
        {"doc_id": 1, "target": 0, "filtered_resps": [[-1.0, False], [-5.0, False]], "acc": 1.0, "acc_norm": 0.0,
         "doc": {"choices": ["a", "bbbbbbbbbbbbbbbb"]}},
        {"doc_id": 0, "target": 1, "filtered_resps": [[-3.0, False], [-2.0, False]], "acc": 1.0, "acc_norm": 1.0,
         "doc": {"choices": ["x", "y"]}},
    ]
    rows = sample_rows(samples, "multiple_choice")
    assert [r["id"] for r in rows] == [0, 1]
    assert rows[1] == {"id": 1, "target": 0, "pred": 0, "acc": 1, "acc_norm": 0, "pred_norm": 1}
    m = task_metrics({"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": "x", "exact_match,flexible-extract": 0.2})
    assert m == {"acc": 0.5, "acc_stderr": 0.1, "exact_match_flexible-extract": 0.2}
    gen = merge_filters([
        {"id": 0, "target": "t", "pred": "18", "filter": "strict-match", "exact_match": 1.0},
        {"id": 0, "target": "t", "pred": "18.", "filter": "flexible-extract", "exact_match": 0.0},
    ])
    assert gen == [{"id": 0, "target": "t", "exact_match": 1.0, "pred": "18", "exact_match_strict-match": 1.0,
                    "pred_strict-match": "18", "exact_match_flexible-extract": 0.0, "pred_flexible-extract": "18."}]


# --------------------------------------------------------------------------- tiny-model tasks
@pytest.fixture(scope="module")
def tiny():
    cfg = config.compose(["model=tiny-llama"])
    model, tok = load_model_and_tokenizer(cfg.model)
    return model.eval(), tok, cfg


@pytest.fixture(scope="module")
def tiny_lm(tiny):
    model, tok, cfg = tiny
    return build_lm(model, tok, batch_size=8, model_cfg=cfg.model)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SHORT_NAMES if n != "wikitext"])
def test_each_task_runs_on_tiny_llama(tiny_lm, tmp_path, name):
    entry = run_task(tiny_lm, name, LmEvalConfig(tasks=[name], limit=5), tmp_path,
                            gen_kwargs={"max_gen_toks": 8} if name == "gsm8k" else None)
    assert entry["n"] == 5 and entry["kind"] == "lm_eval" and entry["task"] == f"harness_{name}"
    rows = atomic.read_jsonl(tmp_path / entry["samples"])
    assert [r["id"] for r in rows] == list(range(5))  # stable doc ids: the first 5 items
    key = "exact_match" if name == "gsm8k" else "acc"
    assert 0.0 <= entry["metrics"][key] <= 1.0
    assert entry["metrics"][key] == pytest.approx(sum(r[key] for r in rows) / 5)
    if name != "gsm8k":
        assert all(r["acc"] == int(r["pred"] == r["target"]) for r in rows)
    else:
        assert all("pred" in r and "####" in r["target"] for r in rows)
    saved = atomic.read_json(tmp_path / entry["lm_eval_results"])
    assert f"harness_{name}" in saved["results"] and "samples" not in saved


def test_unknown_task_is_a_clear_error():
    known = {"harness_hellaswag", "harness_piqa", "mmlu"}
    check_task_names(["hellaswag", "piqa", "mmlu"], known)  # short names map to ours
    with pytest.raises(ValueError, match="'hellaswa' is unknown. Did you mean 'hellaswag'") as err:
        check_task_names(["hellaswa", "piqa"], known)
    assert "Offline tasks shipped here" in str(err.value)


@pytest.mark.slow
def test_crosscheck_agrees_with_lm_eval_on_tiny_llama(tiny):
    model, tok, cfg = tiny
    res = crosscheck_wikitext(model, tok, max_length=128, batch_size=8, limit=2, model_cfg=cfg.model,
                                     progress=False)
    assert res["n_docs"] == 2 and res["tokens"] > 128 * 10  # several windows per document
    for metric, diff in res["rel_diff"].items():
        assert diff < 1e-3, (metric, res["ours"][metric], res["lm_eval"][metric])


@pytest.mark.slow  # the real 135M model on the first 5 articles (21k tokens) twice: ~5-10 min on 2 CPU cores
def test_crosscheck_agrees_with_lm_eval_on_smollm2():
    cfg = config.compose(["model=smollm2-135m"])
    model, tok = load_model_and_tokenizer(cfg.model)
    res = crosscheck_wikitext(model.eval(), tok, max_length=1024, batch_size=4, limit=5, model_cfg=cfg.model,
                                     progress=False)
    assert res["n_docs"] == 5 and res["tokens"] > 20000
    assert res["rel_diff"]["word_perplexity"] < 1e-3, res
    assert 10 < res["ours"]["word_perplexity"] < 100  # a trained model, not noise (35-40 measured)
