"""The model judge (harness/eval/judge.py, `harness judge`) and judge/human agreement (harness/human/agreement.py):
both orders for every pair, verdicts from label log-probabilities, position bias, and the judgments JSONL round trip
into `harness human elo`.

    python -m pytest tests/test_judge.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main as cli
from harness.eval import judge as judge_mod
from harness.eval.judge import LABELS, decide, judge, label_sequences, load_items, position_bias, render
from harness.human.agreement import consensus, judge_agreement
from harness.human.collect import read_judgments
from harness.human.ratings import cohen_kappa

ANSWERS = {"good": "A careful, correct answer {i}.", "bad": "wrong {i}"}


@pytest.fixture
def run_dirs(tmp_path) -> list[Path]:
    """Two runs with generation samples on the same 4 items (run-bad also answers an extra item)."""
    dirs = []
    for name in ("run-good", "run-bad"):
        d = tmp_path / "runs" / name / "20261201-000000-abcdef"
        (d / "samples").mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"name": name, "run_id": "20261201-000000-abcdef", "status": "completed"}))
        ids = range(4) if name == "run-good" else range(5)
        rows = [{"id": f"q-{i}", "prompt": f"<|im_start|>user\nQuestion {i}?<|im_end|>\n",
                 "prediction": ANSWERS[name.split("-")[1]].format(i=i), "references": []} for i in ids]
        (d / "samples" / "vicuna.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        dirs.append(d)
    return dirs


class FakeTokenizer:
    """Characters as tokens; no chat template (so the judge prompt ends with 'Verdict:')."""

    chat_template = None
    bos_token = None
    pad_token_id = 0
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) for ch in text]}


def fake_scorer(policy):
    """An answer_logps stand-in: decodes each (prompt, label) sequence and scores the label with policy(prompt, label)."""
    def score(model, seqs, pad_id, batch_size=4):
        return [policy("".join(map(chr, p)), "".join(map(chr, a)).strip()) for p, a in seqs]
    return score


class FakeModel:
    training = False

    def eval(self):
        return self

    def train(self, mode=True):
        return self


def _answer_shown(prompt: str, slot: str) -> str:
    return prompt.split(f"[Answer {slot}]\n")[1].split("\n")[0]


def test_decide_and_render():
    assert decide({"a": -1.0, "b": -2.0, "tie": -5.0}) == "a"
    assert decide({"a": -3.0, "b": -2.0, "tie": -5.0}) == "b"
    assert decide({"a": -3.0, "b": -2.0, "tie": -1.0}) == "tie"
    assert decide({"a": -2.0, "b": -2.3, "tie": -9.0}, tie_margin=0.5) == "tie"
    text = render(judge_mod.DEFAULT_TEMPLATE, "Q?", "first", "second")
    assert "[Answer A]\nfirst" in text and "[Answer B]\nsecond" in text and "Q?" in text
    with pytest.raises(Exception, match="answer_b"):
        judge(FakeModel(), FakeTokenizer(), ["x", "y"], [], judge_name="j", suite="s", template="{question} {answer_a}")


def test_label_tokens_follow_the_prompt():
    seqs = label_sequences("Which?\nVerdict:", FakeTokenizer())
    assert ["".join(map(chr, a)) for _, a in seqs] == [" A", " B", " tie"]
    assert all("".join(map(chr, p)) == "Which?\nVerdict:" for p, _ in seqs)


def test_both_orders_fair_and_position_biased_judges(run_dirs, monkeypatch):
    labels, items, notes = load_items(run_dirs, "vicuna")
    assert labels == ["run-good/20261201-000000-abcdef", "run-bad/20261201-000000-abcdef"]
    assert [it.id for it in items] == ["q-0", "q-1", "q-2", "q-3"] and notes  # q-4 is not in both runs
    assert items[0].question.startswith("<|im_start|>user")  # no run config: the sample's prompt is the question

    # a fair judge: prefers the careful answer wherever it is shown
    def fair(prompt, label):
        slot = {"A": "A", "B": "B"}.get(label)
        return -1.0 if slot and "careful" in _answer_shown(prompt, slot) else -5.0
    monkeypatch.setattr(judge_mod, "answer_logps", fake_scorer(fair))
    js = judge(FakeModel(), FakeTokenizer(), labels, items, judge_name="fair", suite="vicuna")
    assert len(js) == 8 and [j["order"] for j in js[:2]] == ["ab", "ba"]
    assert {(j["model_a"], j["model_b"]) for j in js} == {tuple(labels), tuple(reversed(labels))}
    assert all(judge_mod.run_winner(j) == labels[0] for j in js)
    bias = position_bias(js)
    assert bias["first_wins"] == 0.5 and bias["second_wins"] == 0.5 and bias["flip_rate"] == 0.0
    assert bias["pairs_both_orders"] == 4

    # a judge that always answers "A": the first answer wins every time, so every verdict flips with the order
    monkeypatch.setattr(judge_mod, "answer_logps", fake_scorer(lambda p, label: -1.0 if label == "A" else -4.0))
    js = judge(FakeModel(), FakeTokenizer(), labels, items, judge_name="biased", suite="vicuna")
    bias = position_bias(js)
    assert bias["first_wins"] == 1.0 and bias["flips"] == 4 and bias["flip_rate"] == 1.0
    assert consensus(js) == {("q-%d" % i, *sorted(labels)): "tie" for i in range(4)}  # inconsistent -> tie


def test_calibration_removes_a_fixed_label_preference(run_dirs, monkeypatch):
    labels, items, _ = load_items(run_dirs, "vicuna")

    def biased_but_informed(prompt, label):  # likes "A" by 3 nats, and the careful answer by 2
        bias = {"A": 3.0, "B": 0.0, "tie": -10.0}[label]
        return bias + (2.0 if label in "AB" and "careful" in _answer_shown(prompt, label) else 0.0)
    monkeypatch.setattr(judge_mod, "answer_logps", fake_scorer(biased_but_informed))
    raw = judge(FakeModel(), FakeTokenizer(), labels, items, judge_name="j", suite="vicuna")
    assert position_bias(raw)["first_wins"] == 1.0 and position_bias(raw)["flip_rate"] == 1.0
    cal = judge(FakeModel(), FakeTokenizer(), labels, items, judge_name="j", suite="vicuna", calibrate=True)
    assert position_bias(cal)["flip_rate"] == 0.0 and all(judge_mod.run_winner(j) == labels[0] for j in cal)
    assert cal[0]["judge"] == "model:j+calibrated" and cal[0]["prior"] == {"a": 3.0, "b": 0.0, "tie": -10.0}
    assert decide({"a": -2.0, "b": -2.0, "tie": -9.0}) == "tie"


def test_agreement_is_cohens_kappa_on_the_consensus():
    x, y = "m1", "m2"
    model = [{"item_id": i, "model_a": a, "model_b": b, "winner": w} for i, a, b, w in [
        (1, x, y, "a"), (1, y, x, "b"),  # m1 both orders -> first
        (2, x, y, "b"), (2, y, x, "a"),  # m2 both orders -> second
        (3, x, y, "a"), (3, y, x, "a"),  # flips -> tie
        (4, x, y, "a"), (4, y, x, "b")]]  # m1 -> first
    human = [{"item_id": i, "model_a": a, "model_b": b, "winner": w} for i, a, b, w in [
        (1, y, x, "b"), (2, x, y, "b"), (3, x, y, "tie"), (4, y, x, "a"), (9, x, y, "a")]]
    res = judge_agreement(model, human)
    # model consensus: first, second, tie, first; humans: first, second, tie, second
    assert res["compared"] == 4 and res["units_both"] == 4 and res["units_human"] == 5
    assert res["agreement"] == 0.75
    assert res["cohen_kappa"] == pytest.approx(cohen_kappa(["first", "second", "tie", "first"],
                                                           ["first", "second", "tie", "second"]))


@pytest.mark.slow
def test_cli_round_trip_with_a_tiny_judge_into_human_elo(run_dirs, tmp_path, capsys):
    out = tmp_path / "judge" / "vicuna.jsonl"
    human = tmp_path / "human.judgments.jsonl"
    good, bad = "run-good/20261201-000000-abcdef", "run-bad/20261201-000000-abcdef"
    human.write_text("".join(json.dumps({"item_id": f"q-{i}", "model_a": good, "model_b": bad, "winner": "a",
                                         "judge": "annotator-1"}) + "\n" for i in range(4)))
    rc = cli(["judge", *map(str, run_dirs), "--judge", "model=tiny-llama", "--out", str(out), "--human", str(human),
              "--orderings", "20", "--json", str(tmp_path / "summary.json")])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "position bias" in text and "Cohen's kappa" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and {r["judge"] for r in rows} == {"model:tiny-llama"}
    assert all(set(r["logp"]) == set(LABELS) and r["winner"] in ("a", "b", "tie") for r in rows)
    judgments, errors = read_judgments([out])
    assert errors == [] and len(judgments) == 8
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["position_bias"]["pairs_both_orders"] == 4 and summary["agreement"]["units_both"] == 4
    # the same file ranks with human judgments in `harness human elo`
    assert cli(["human", "elo", str(out), str(human), "--orderings", "20", "--json", str(tmp_path / "elo.json")]) == 0
    elo = json.loads((tmp_path / "elo.json").read_text())
    assert elo["matches"] == 12 and {r["model"] for r in elo["ranking"]} == {good, bad}


def test_cli_errors(run_dirs, tmp_path, capsys):
    assert cli(["judge", str(run_dirs[0])]) == 2
    assert "two run directories" in capsys.readouterr().err
    assert cli(["judge", *map(str, run_dirs), "--suite", "e2e"]) == 2
    assert "no samples/e2e.jsonl" in capsys.readouterr().err
