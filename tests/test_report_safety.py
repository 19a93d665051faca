"""Tests for what `harness report` does with hostile or awkward strings in run records: results.csv keeps
numbers numeric and neutralises formulas, figures draw `$` literally, report.md escapes every user string.

    python -m pytest tests/test_report_safety.py -q
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from harness import cli
from harness.report.fmt import csv_safe, md_escape
from tests.fixtures_runs import make_study


def _edit(runs: Path, fn) -> None:
    """fn(summary, eval, config_index) edits each run's summary.json and eval.json (None when absent) in place."""
    for p in sorted(runs.rglob("summary.json")):
        summ = json.loads(p.read_text())
        ev_path = p.parent / "eval.json"
        ev = json.loads(ev_path.read_text()) if ev_path.exists() else None
        c = summ["trial"] // 2 if summ["trial"] >= 0 else -1  # make_study(seeds=2): trials 2c, 2c+1 are config c
        fn(summ, ev, c)
        p.write_text(json.dumps(summ))
        if ev is not None:
            ev_path.write_text(json.dumps(ev))


def _report(tmp: Path, *extra: str) -> Path:
    out = tmp / "reports"
    rc = cli.main(["report", "demo", "--runs-root", str(tmp / "runs"), "--out", str(out), "--studies-dir",
                   str(tmp / "none"), *extra])
    assert rc == 0
    return out / "demo"


# -------------------------------------------------------------------------------- results.csv
FORMULAS = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1:A9)", "\tx", "\rx", "-0.5"]


@pytest.mark.filterwarnings("ignore:Glyph")  # the tab and CR planted in names have no glyph in the figures
def test_csv_numbers_stay_numbers_and_formula_strings_are_neutralised(tmp_path):
    make_study(tmp_path / "runs", "demo", n_configs=3, seeds=2, items=10)

    def edit(summ, ev, c):
        if summ["status"] == "completed":
            summ["axes"]["data.template"] = FORMULAS[c]
            summ["axes"]["data.note"] = FORMULAS[3 + c]  # "-0.5" is a string here: neutralised, not a number
            ev["suites"]["val"]["metrics"].update({"margin": -0.25, "delta": -3})
    _edit(tmp_path / "runs", edit)
    out = _report(tmp_path, "--no-svg")
    with open(out / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "completed"]
    assert rows and all(r["val.margin"] == "-0.25" and r["val.delta"] in ("-3", "-3.0") for r in rows), [(r["val.margin"], r["val.delta"]) for r in rows]
    assert {r["axes.data.template"] for r in rows} == {"'" + s for s in FORMULAS[:3]}
    assert {r["axes.data.note"] for r in rows} == {"'" + s for s in FORMULAS[3:6]}
    assert float(rows[0]["val.loss"]) > 0


@pytest.mark.parametrize("value,cell", [
    (-0.25, "-0.25"), (-3, "-3"), (0.5, "0.5"), (1e-05, "1e-05"), (-1e-05, "-1e-05"), (True, "True"), (None, ""),
    ("-0.25", "'-0.25"), ("-2+3", "'-2+3"), ("+1+1", "'+1+1"), ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"), ("plain", "plain"),
    (float("-inf"), "'-inf"), (float("nan"), "nan"), ({"a": -1}, '{"a": -1}'),
])
def test_csv_safe(value, cell):
    assert csv_safe(value) == cell


# ------------------------------------------------------------------------------------ figures
DOLLARS = ["a$b$c", "$x$", "$_$", "$\\notacommand$"]


@pytest.mark.slow
def test_dollar_signs_in_names_and_values_are_drawn_literally(tmp_path):
    make_study(tmp_path / "runs", "demo", n_configs=4, seeds=2, items=10, failures=False)

    def edit(summ, ev, c):
        if c >= 0:
            summ["name"] = f"run${c}$"
            summ["method"] = summ["axes"]["method"] = f"{summ['method']}$_$"  # legend entries
            summ["axes"]["data.template"] = DOLLARS[c]  # a categorical panel's tick labels, point labels
            ev["suites"]["e2e"]["metrics"]["$x$"] = float(ev["suites"]["e2e"]["metrics"]["bleu"])  # titles, axis labels
            ev["suites"]["e2e"]["metric_meta"]["$x$"] = ev["suites"]["e2e"]["metric_meta"]["bleu"]
    _edit(tmp_path / "runs", edit)
    out = _report(tmp_path, "--metric", "e2e.$x$")
    figs = {p.name for p in (out / "figures").iterdir()}
    for stem in ("loss_curves", "quality_vs_memory", "quality_vs_params", "optimization_history", "params_vs_objective"):
        assert {f"{stem}.png", f"{stem}.svg"} <= figs, stem
    panels = (out / "figures" / "params_vs_objective.svg").read_text()
    for s in DOLLARS:  # svg.fonttype none: the text as written, not typeset as math
        assert s in panels, s
    assert "e2e.$x$" in (out / "figures" / "quality_vs_memory.svg").read_text()
    assert "lora$_$" in (out / "figures" / "loss_curves.svg").read_text()


# ----------------------------------------------------------------------------------- report.md
IMG = "<img src=x onerror=alert(1)>"


def _cells(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


@pytest.mark.slow
def test_every_user_string_in_report_md_is_escaped(tmp_path):
    make_study(tmp_path / "runs", "demo", n_configs=3, seeds=2, items=10)
    metric = f"{IMG}|*m*"

    def edit(summ, ev, c):
        summ["name"] = f"{IMG}|name"
        if summ["status"] == "failed":
            summ["status"] = f"{IMG}|status"
            summ["reason"] = f"{IMG}|`x`|[link](javascript:alert(1))"
            summ["pruned_at_step"] = f"{IMG}|7"
        if summ["status"] == "completed":
            summ["axes"]["data.template"] = f"{IMG}|a_b*c*`d`[e](f)&amp;#{c}"
        if ev is not None:
            ev["suites"]["e2e"]["metrics"][metric] = float(ev["suites"]["e2e"]["metrics"]["bleu"])
            ev["suites"]["e2e"]["metric_meta"][metric] = ev["suites"]["e2e"]["metric_meta"]["bleu"]
    _edit(tmp_path / "runs", edit)
    md = (_report(tmp_path, "--no-svg", "--metric", f"e2e.{metric}") / "report.md").read_text()
    assert "<img" not in md.lower() and "&lt;img src=x onerror=alert(1)&gt;" in md
    assert not re.search(r"(?<!\\)\]\(javascript", md) and "\\[link\\](javascript" in md  # no link: the ] is escaped
    assert "&amp;amp;#" in md  # an entity in a value shows as written
    assert "a_b\\*c\\*\\`d\\`\\[e\\](f)" in md  # an intraword _ is no emphasis: left as it is
    assert "Primary metric: e2e.&lt;img src=x onerror=alert(1)&gt;\\|\\*m\\*" in md
    assert "&lt;img src=x onerror=alert(1)&gt;\\|status" in md
    # every table keeps its columns: unescaped | only between cells
    tables, block = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            tables.append(block)
            block = []
    assert len(tables) >= 4
    for t in tables:
        assert len({_cells(line) for line in t}) == 1, t


def test_md_escape():
    assert md_escape(IMG) == "&lt;img src=x onerror=alert(1)&gt;"
    assert md_escape("a|b*c*_d_`e`[f](g)\\h~i") == "a\\|b\\*c\\*\\_d\\_\\`e\\`\\[f\\](g)\\\\h\\~i"
    assert md_escape("</b><!-- <?x <http://e.x> &#60; &lt;") == "&lt;/b&gt;&lt;!-- &lt;?x &lt;http://e.x&gt; &amp;#60; &amp;lt;"
    assert md_escape("p < 0.001 & q, best_val_loss") == "p < 0.001 & q, best_val_loss"  # nothing there can be markup
    assert md_escape("end\\") + " |" == "end\\\\ |"  # a trailing backslash cannot escape the cell border
    assert md_escape("two\nlines\r") == "two lines "
    assert md_escape(None) == "—" and md_escape(-0.5) == "-0.5" and md_escape(math.nan) == "nan"
