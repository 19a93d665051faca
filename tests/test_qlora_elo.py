"""Tests for the QLoRA Table 1 Elo reproduction (harness.recipes.qlora_elo), on the data kit's GPT-4 judgments.

    python -m pytest tests/test_qlora_elo.py -x -q
"""

from __future__ import annotations

import json

import pytest

from harness import paths
from harness.recipes import qlora_elo

RATINGS = paths.data_root() / "qlora-vicuna-gpt4-ratings"
needs_data = pytest.mark.skipif(not RATINGS.is_dir(), reason=f"data kit not found at {RATINGS} (set HARNESS_DATA)")


@needs_data
def test_convert_counts_and_mapping():
    judgments, counts = qlora_elo.convert(RATINGS)
    assert counts["files"] == 56 and counts["lines"] == 56 * 80
    assert counts["dropped_unparsable"] == 13 and counts["matches"] == 4480 - 13  # score -1 dropped, counted
    assert counts["ties"] == 600
    assert counts["pairs"] == 28 and counts["pairs_with_both_orders"] == 28
    assert {j["model_a"] for j in judgments} == set(qlora_elo.PAPER_ELO)
    # a known line: bard-vs-gpt4, question 1, score 2 -> the second answer (GPT-4) won
    first = next(j for j in judgments if j["source"].startswith("answer-bard-vs-answer-gpt4") and j["item_id"] == 1)
    assert (first["model_a"], first["model_b"], first["winner"]) == ("Bard", "GPT-4", "b")


@needs_data
def test_reproduction_runs_and_ranks_gpt4_first(tmp_path, capsys):
    out = tmp_path / "reproduce-qlora-elo"
    assert qlora_elo.main(["--orderings", "200", "--out", str(out)]) == 0
    assert str(out / "report.md") in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    refs = json.loads((out / "references.json").read_text())
    assert res["elo"]["orderings"] == 200 and res["elo"]["matches"] == 4467
    assert res["elo"]["ranking"][0]["model"] == "GPT-4"
    assert [r["model"] for r in res["models"]] == list(qlora_elo.PAPER_ELO)
    for r in res["models"]:
        assert r["paper"] == qlora_elo.PAPER_ELO[r["model"]][0]
        assert r["diff"] == pytest.approx(r["ours"] - r["paper"])
        assert r["ours_interval95"][0] <= r["ours"] <= r["ours_interval95"][1]
    ag = res["agreement"]
    assert set(ag) >= {"spearman", "kendall_tau", "order_matches", "max_abs_diff", "max_abs_diff_model"}
    assert ag["spearman"] > 0.9  # the paper's order is recovered (or nearly, with only 200 orderings)
    assert ag["max_abs_diff"] == pytest.approx(max(abs(r["diff"]) for r in res["models"]))
    assert sum(r["ours"] for r in res["models"]) == pytest.approx(8000.0)  # Elo is zero-sum
    assert set(res["variants"]) == {"ties_dropped", "one_order_higher_ranked_first", "one_order_higher_ranked_second"}
    assert len(refs) == 8 and all({"metric", "value", "tolerance", "source", "reference_only"} <= set(r) for r in refs)
    assert (out / "judgments.jsonl").read_text().count("\n") == 4467
    report = (out / "report.md").read_text()
    assert "| GPT-4 | 1348 ± 1 |" in report and "Spearman" in report


def test_convert_rejects_unknown_answer_sets_and_scores(tmp_path):
    bad = tmp_path / "r"
    bad.mkdir()
    (bad / ("answer-gpt4-vs-answer-llama" + qlora_elo.SUFFIX)).write_text('{"question_id": 1, "score": 1}\n')
    (bad / ("answer-gpt4-vs-answer-bard" + qlora_elo.SUFFIX)).write_text('{"question_id": 1, "score": 7}\n')
    with pytest.raises(qlora_elo.ReproductionError) as e:
        qlora_elo.convert(bad)
    assert "unknown answer set(s) ['answer-llama']" in str(e.value)
    assert "answer-gpt4-vs-answer-bard" in str(e.value) and ":1: score 7" in str(e.value)
    with pytest.raises(qlora_elo.ReproductionError, match="no .* files"):
        qlora_elo.convert(tmp_path / "empty")


@needs_data
def test_one_order_subsets_partition_the_data():
    judgments, _ = qlora_elo.convert(RATINGS)
    first = qlora_elo._one_order(judgments, True)
    second = qlora_elo._one_order(judgments, False)
    assert len(first) + len(second) == len(judgments)
    assert {j["source"] for j in first}.isdisjoint({j["source"] for j in second})
    assert len({j["source"] for j in first}) == 28
