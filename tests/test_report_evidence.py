"""What the report may claim from its run records (harness/report/meta.py, verdict.py, checks.py): metric
metadata read from eval.json (never guessed from names), a best configuration only where a paired test
supports it, eval settings nobody varied, contamination, and base rows / configurations by hash.

    python -m pytest tests/test_report_evidence.py -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from markupsafe import escape

from harness import atomic, cli
from harness.report.aggregate import Config, best_marks
from harness.report.stats import paired_t
from harness.report.verdict import decide
from tests.fixtures_runs import make_study

NO_STORAGE = ("--no-svg", "--no-optuna")


def report(tmp: Path, *extra: str, study: str = "demo", runs: Path | None = None) -> tuple[dict, str, str]:
    out = tmp / "reports"
    assert cli.main(["report", study, "--runs-root", str(runs or tmp / "runs"), "--out", str(out), *NO_STORAGE, *extra]) == 0
    d = out / study
    return json.loads((d / "results.json").read_text()), (d / "report.md").read_text(), (d / "report.html").read_text()


def edit_eval(runs: Path, fn) -> None:
    for p in sorted(runs.rglob("eval.json")):
        ev = json.loads(p.read_text())
        fn(ev, p.parent)
        p.write_text(json.dumps(ev))


def starred(md: str, column: str) -> list[str]:
    """Configurations whose cell in `column` of the leaderboard carries the ★."""
    lines = md.split("## Leaderboard", 1)[1].split("## Cost", 1)[0].splitlines()
    head = next(line for line in lines if line.startswith("| configuration"))
    i = [c.strip() for c in head.split("|")].index(column)
    return [row.split("|")[1].strip() for row in lines if row.startswith("| ") and "★" in row.split("|")[i]]


# --------------------------------------------------------------------------------- metadata
@pytest.mark.slow
def test_direction_and_paired_tests_come_from_the_records_not_the_names(tmp_path):
    """A metric the report has never heard of gets a paired test from its recorded per-item key; a
    recorded direction wins over what the name suggests."""
    make_study(tmp_path / "runs", "demo", n_configs=3, seeds=2, items=20, failures=False)

    def add(ev, run_dir):
        e2e = ev["suites"]["e2e"]
        rows = atomic.read_jsonl(run_dir / "samples" / "e2e.jsonl")
        for r in rows:
            r["judge_ok"] = int(r["bleu"] > 40)
        atomic.write_jsonl(run_dir / "samples" / "e2e.jsonl", rows)
        e2e["metrics"]["judge"] = sum(r["judge_ok"] for r in rows) / len(rows)
        e2e["metric_meta"]["judge"] = {"higher_is_better": True, "scale": "binary", "per_item": "judge_ok"}
        e2e["metric_meta"]["bleu"]["higher_is_better"] = False  # recorded: lower is better

    edit_eval(tmp_path / "runs", add)
    res, md, _ = report(tmp_path, "--metric", "e2e.bleu")
    assert res["direction"] == "min"  # from the record, though "bleu" reads as higher-is-better
    means = [r["metrics"]["e2e.bleu"]["mean"] for r in res["leaderboard"] if not r["baseline"]]
    assert means == sorted(means)
    judge = [c for c in res["comparisons"] if c["metric"] == "judge"]
    assert judge and {c["test"] for c in judge} == {"McNemar exact"} and judge[0]["per_item"] == "judge_ok"
    assert {c["metric"] for c in res["comparisons"]} == {"acc", "acc_norm", "bleu", "chrf", "rougeL", "judge"}
    assert res["metric_meta"]["e2e.judge"]["per_item"] == "judge_ok"


def test_records_without_metric_meta_still_report_with_direction_unknown(tmp_path):
    make_study(tmp_path / "runs", "demo", n_configs=3, seeds=2, items=20, metric_meta=False)
    res, md, html = report(tmp_path)
    assert res["primary_metric"] == "e2e.bleu" and res["direction"] is None
    assert res["verdict"]["status"] == "direction unknown" and res["verdict"]["best"] is None
    assert res["comparisons"] == []  # no per-item key recorded: nothing is paired
    notes = [w for w in res["warnings"] if w.startswith("Direction unknown for ")]
    assert len(notes) == 1 and "e2e.bleu" in notes[0] and "hellaswag.acc" in notes[0]
    for col in ("e2e.bleu", "hellaswag.acc", "val.loss"):
        assert starred(md, col) == [], col
    assert starred(md, "summary.best_val_loss")  # the run record's own fields keep their direction
    assert "(direction unknown)" in md and "direction unknown" in html


# ---------------------------------------------------------------------------------- verdicts
def _t(label, delta, p, n, test="paired t-test on seed pairs"):
    return {"label": label, "delta": delta, "p": p, "n": n, "test": test}


def test_decide_names_a_best_only_on_a_significant_paired_test():
    # per-run metric, 3 seed pairs, significant: named
    v = decide("summary.best_val_loss", "min", ["A", "B", "C"], [_t("B", 0.3, 0.01, 3), _t("C", 0.5, 0.001, 3)], "seeds")
    assert v["status"] == "best" and v["best"] == "A" and v["tied"] == ["A"]
    assert v["text"].startswith("Best on summary.best_val_loss: A, ahead of the runner-up B by 0.3")
    # 2 seeds: too few to tell, whatever the p-value
    v = decide("summary.best_val_loss", "min", ["A", "B"], [_t("B", 0.3, 0.0001, 2)], "seeds")
    assert v["status"] == "too few seeds" and v["best"] is None and "Too few seeds to tell" in v["text"]
    # overlapping: no reliable difference, the tied configurations listed (C is significantly worse)
    v = decide("summary.best_val_loss", "min", ["A", "B", "C"], [_t("B", 0.01, 0.4, 5), _t("C", 0.9, 0.001, 5)], "seeds")
    assert v["status"] == "no reliable difference" and v["best"] is None and v["tied"] == ["A", "B"]
    assert v["text"].startswith("No reliable difference between A, B on summary.best_val_loss")
    v = decide("m", "max", ["A", "B", "C"], [_t("B", -0.01, 0.4, 5), _t("C", -0.02, 0.2, 5)], "seeds")
    assert v["tied"] == ["A", "B", "C"] and "between A, B, C on m" in v["text"]
    # per-item test significant: named, in points for a 0-1 metric
    v = decide("hellaswag.acc", "max", ["A", "B"], [_t("B", -0.05, 0.003, 400, "McNemar exact")], "items", (100.0, " points"))
    assert v["status"] == "best" and v["best"] == "A"
    assert "by 5 points (McNemar exact, p = 0.003 Holm-adjusted, 400 item pairs)" in v["text"]
    # a significant difference the wrong way round (runner-up better on the test) does not name the top
    assert decide("m", "max", ["A", "B"], [_t("B", 0.05, 0.001, 400)], "items")["status"] == "no reliable difference"
    # no direction, one configuration, none
    assert decide("m", None, ["A", "B"], [], "seeds")["status"] == "direction unknown"
    assert decide("m", "max", ["A"], [], "seeds")["status"] == "single"
    assert decide("m", "max", [], [], "seeds")["status"] == "none"


def test_paired_t_is_scipys_ttest_rel():
    from scipy.stats import ttest_rel

    a, b = [1.0, 2.0, 3.5, 4.0], [1.5, 2.2, 3.9, 4.8]
    delta, p = paired_t(a, b)
    assert delta == pytest.approx(-0.475) and p == pytest.approx(ttest_rel(a, b).pvalue)
    assert paired_t([1.0, 2.0], [0.5, 1.5]) == (0.5, 0.0)  # constant difference: scipy gives nan
    assert paired_t([1.0, 2.0], [1.0, 2.0]) == (0.0, 1.0)
    assert math.isnan(paired_t([1.0], [2.0])[1])


def _loss_runs(root: Path, losses: dict[str, list[float]]) -> None:
    """Summary-only runs: configuration -> best_val_loss per seed."""
    for method, vals in losses.items():
        for seed, loss in enumerate(vals):
            atomic.write_json(root / f"m-{method}" / f"s{seed}" / "summary.json", {
                "status": "completed", "study": "v", "trial": seed, "seed": seed, "method": method,
                "axes": {"method": method, "seed": seed}, "best_val_loss": loss})


@pytest.mark.parametrize("losses, status, best", [
    ({"full": [1.00, 1.10, 1.20], "lora": [1.50, 1.62, 1.71], "qlora": [2.0, 2.1, 2.2]}, "best", "full"),
    ({"full": [1.00, 1.10], "lora": [1.50, 1.62]}, "too few seeds", None),
    ({"full": [1.00, 1.40, 1.20], "lora": [1.30, 1.05, 1.35], "qlora": [2.0, 2.1, 2.2]}, "no reliable difference", None),
])
def test_the_report_names_a_best_only_when_seeds_support_it(tmp_path, losses, status, best):
    _loss_runs(tmp_path / "runs", losses)
    res, md, html = report(tmp_path, study="v")
    v = res["verdict"]
    assert res["primary_metric"] == "summary.best_val_loss" and v["status"] == status and v["basis"] == "seeds"
    assert v["best"] == best and (f"Best configuration: **{best}**" in md) == (best is not None)
    assert f"**Verdict:** {v['text']}" in md and str(escape(v["text"])) in html
    assert starred(md, "summary.best_val_loss") == ([best] if best else [])  # the tie / the unclear top: no ★
    if status == "no reliable difference":
        assert v["tied"] == ["full", "lora"] and "No reliable difference between full, lora" in md


def test_a_per_item_win_names_the_best(tmp_path):
    """Two configurations on the same 30 items: one right on all, one on none -> McNemar names the best."""
    for method, right in (("full", 1), ("lora", 0)):
        for seed in range(2):
            d = tmp_path / "runs" / f"p-{method}" / f"s{seed}"
            atomic.write_json(d / "summary.json", {"status": "completed", "study": "pi", "trial": seed, "seed": seed,
                                                   "method": method, "axes": {"method": method}})
            atomic.write_jsonl(d / "samples" / "qa.jsonl", [{"id": i, "acc": right} for i in range(30)])
            atomic.write_json(d / "eval.json", {"schema": 1, "suites": {"qa": {
                "kind": "lm_eval", "metrics": {"acc": float(right)}, "n": 30,
                "metric_meta": {"acc": {"higher_is_better": True, "scale": "binary", "per_item": "acc"}}}}})
    res, md, _ = report(tmp_path, study="pi")
    v = res["verdict"]
    assert v["status"] == "best" and v["best"] == "full" and v["basis"] == "items" and v["test"] == "McNemar exact"
    assert "by 100 points" in v["text"] and starred(md, "qa.acc") == ["full"]


def test_ties_are_not_starred():
    a = Config("a", {}, [], False, "a", {"m": {"mean": 1.0}})
    b = Config("b", {}, [], False, "b", {"m": {"mean": 1.0}})
    c = Config("c", {}, [], False, "c", {"m": {"mean": 0.5}})
    assert best_marks([a, b, c], ["m"], {"m": "max"}) == {}
    assert best_marks([a, c], ["m"], {"m": "max"}) == {"m": 1.0}
    assert best_marks([a, c], ["m"], {"m": None}) == {}


# -------------------------------------------------------------------------- eval settings
@pytest.mark.slow
def test_an_eval_setting_nobody_varied_is_named_in_one_line(tmp_path):
    make_study(tmp_path / "runs", "demo", n_configs=3, seeds=2, items=20, failures=False, baseline=False,
               fewshot_mismatch=True)
    res, md, _ = report(tmp_path)
    lines = [w for w in res["warnings"] if "hellaswag" in w]
    assert lines == ["Runs differ in an eval setting of hellaswag that no sweep axis varies: eval.lm_eval.num_fewshot = "
                     "0 (4 runs), 5 (2 runs). Its numbers are not comparable across these runs."]
    assert lines[0] in md

    # the same difference as a sweep axis is by design: no warning
    for p in (tmp_path / "runs").rglob("summary.json"):
        s = json.loads(p.read_text())
        cfg = (p.parent / "config.yaml").read_text()
        s["axes"]["eval.lm_eval.num_fewshot"] = 5 if "num_fewshot: 5" in cfg else 0
        p.write_text(json.dumps(s))
    res, _, _ = report(tmp_path / "b", runs=tmp_path / "runs")
    assert not [w for w in res["warnings"] if "hellaswag" in w]


# -------------------------------------------------------------------------- contamination
def test_contamination_is_shown_per_eval_set_with_a_warning_above_the_threshold(tmp_path):
    make_study(tmp_path / "runs", "demo", n_configs=3, seeds=2, items=20, contamination={"e2e": 0.05, "hellaswag": 0.0})
    res, md, html = report(tmp_path)
    tables = {t["suite"]: t for t in res["contamination"]}
    assert set(tables) == {"e2e", "hellaswag"} and tables["e2e"]["n"] == 13
    row = tables["e2e"]["rows"][0]
    assert row["share"] == pytest.approx(0.05) and row["contaminated"] == 1 and row["items"] == 20
    assert len(tables["e2e"]["rows"]) == 3  # one per trained configuration; the base model has none
    warn = [w for w in res["warnings"] if "overlaps the training data" in w]
    assert warn == ["Eval set e2e overlaps the training data alpaca-demo: 5% of its items share a 13-word sequence "
                    "with it (above 1%); scores on it may be inflated."]
    assert "## Contamination" in md and "| e2e | full | alpaca-demo | 5% | 1 / 20 | 2 |" in md
    assert 'id="contamination-table"' in html


# ------------------------------------------------------------------------------- identity
@pytest.mark.slow
def test_base_rows_are_attached_by_weights_hash_not_by_name(tmp_path):
    # a base evaluation under the study's model name but of other weights is not the study's base
    make_study(tmp_path / "runs", "demo", n_configs=3, seeds=2, items=20, failures=False, baseline_in_study=False,
               baseline_sha="0" * 64)
    res, md, _ = report(tmp_path)
    assert not any(r["baseline"] for r in res["leaderboard"]) and "base tiny-llama" not in md

    # one of the same weights under another name is, and is tested against
    from tests.fixtures_runs import _run

    _run(tmp_path / "runs", "demo", -1, 0, {"model": "my-model", "method": "base"}, "baseline", 20, in_study=False,
         name="my-model-base")
    res, md, _ = report(tmp_path / "b", runs=tmp_path / "runs")
    assert [r["label"] for r in res["leaderboard"] if r["baseline"]] == ["base my-model"]
    assert any(c["kind"] == "vs baseline" and c["b"] == "base my-model" for c in res["comparisons"])

    # an explicit --baseline of other weights is shown for reference, never paired with the trained runs
    other = tmp_path / "runs" / "tiny-llama-base" / "baseline"
    res, md, _ = report(tmp_path / "c", "--no-auto-baseline", "--baseline", str(other), runs=tmp_path / "runs")
    assert "base tiny-llama" in [r["label"] for r in res["leaderboard"]]
    assert not any(c["kind"] == "vs baseline" for c in res["comparisons"])
    assert any("base tiny-llama" in w and "not tested against" in w for w in res["warnings"])


def test_runs_with_other_data_files_are_not_averaged_together(tmp_path):
    make_study(tmp_path / "runs", "demo", n_configs=3, seeds=3, items=20, failures=False, baseline=False,
               changed_data=True)
    res, md, _ = report(tmp_path)
    rows = [r for r in res["leaderboard"] if r["axes"]["method"] == "full"]
    assert sorted((r["label"], r["n"]) for r in rows) == [("full [data 0badc0de]", 1), ("full [data bcc37c64]", 2)]
    assert any(w.startswith("Runs of full read different files for data alpaca-demo (sha256 0badc0de0badc0de, "
                            "bcc37c64db1a739a): shown as 2 separate rows, not averaged together.") for w in res["warnings"])
    assert "| full \\[data 0badc0de\\] | 1 |" in md  # Markdown-escaped brackets
