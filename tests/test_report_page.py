"""report.html's interactive parts without a browser (tests/test_report_browser.py drives them in Chromium):
numbers formatted for their metric's scale (HTML and Markdown), the page's JSON data block that no text can
end, the Content-Security-Policy hash of the page's one script, the leaderboard's column groups and the
per-example view's caps.

    python -m pytest tests/test_report_page.py -q
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re

import pytest

from harness import cli
from harness.report import explore
from harness.report.fmt import cell_text, fmt, fmt_metric, sci
from tests.fixtures_runs import make_study
from tests.test_report import page_parts

PAYLOAD = "</script><script>window.pwned=1</script><!-- <img src=x onerror=alert(1)> & ' \" \u2028 </SCRIPT >"


def test_numbers_are_formatted_for_their_scale():
    assert fmt(1_522_704_342.0) == "1.52e9" and fmt(-30_000_000) == "-3e7" and sci(1.5e-5, 2) == "1.5e-5"
    assert fmt(999_999.0) == "999,999" and fmt(12_345.6) == "12,346" and fmt(1012.5) == "1,012.5"
    assert fmt(0.41234) == "0.4123" and fmt(2e-4) == "2e-4" and fmt(0) == "0" and fmt(None) == "—"
    assert fmt(123.4, 2) == "123" and fmt(12.34, 2) == "12" and fmt(0.01234, 2) == "0.012"  # never "1.2e+02"
    assert not any("e+" in fmt(x * 10.0 ** k, d) for x in (1, 1.234, 9.99) for k in range(-8, 12) for d in (2, 3, 4))
    assert fmt(math.nan) == "nan" and fmt(math.inf) == "inf" and fmt("text") == "text" and fmt(True) == "True"
    # scale-aware: 0-1 with 3 decimals, 0-100 with 2, raw by significant digits (and never ten-digit integers)
    assert fmt_metric(0.41234, "binary") == "0.412" and fmt_metric(0.5, "fraction") == "0.500"
    assert fmt_metric(35.2149, "percent") == "35.21" and fmt_metric(0.004, "fraction") == "0.004"
    assert fmt_metric(1_522_704_342.0, "raw") == "1.52e9" and fmt_metric(2.34567, "raw") == "2.346"
    assert fmt_metric(1_522_704_342.0, None) == "1.52e9" and fmt_metric(None, "binary") == "—"
    cell = {"mean": 1.522e9, "lo": 1.2e9, "hi": 1.8e9, "n": 3}
    assert cell_text(cell, 3, "raw") == "1.52e9 ± 3e8"
    assert cell_text({"mean": 0.41234, "lo": 0.40, "hi": 0.43, "n": 2}, 3, "binary") == "0.412 ± 0.015 (n=2)"


def test_a_huge_perplexity_reads_as_1_52e9_in_html_and_markdown(tmp_path):
    make_study(tmp_path / "runs", "demo", n_configs=2, seeds=1, items=6, failures=False)
    for ev_path in (tmp_path / "runs").rglob("eval.json"):
        ev = json.loads(ev_path.read_text())
        ev["suites"]["val"]["metrics"]["perplexity"] = 1_522_704_342.0
        ev_path.write_text(json.dumps(ev))
    assert cli.main(["report", "demo", "--runs-root", str(tmp_path / "runs"), "--out", str(tmp_path / "r"), "--no-svg",
                     "--studies-dir", str(tmp_path / "none")]) == 0
    md, html = ((tmp_path / "r" / "demo" / f).read_text() for f in ("report.md", "report.html"))
    for text in (md, html):
        assert "1,522,704,342" not in text and "1.52e9" in text
    row = next(line for line in md.splitlines() if line.startswith("| lora r=8 | 1 | "))
    cells = [c.strip(" *★") for c in row.split("|")[3:-1]]
    assert re.fullmatch(r"\d+\.\d\d", cells[0])  # e2e.bleu (percent): two decimals
    assert re.fullmatch(r"0\.\d{3}", cells[3])  # hellaswag.acc (binary): three


def test_the_data_block_cannot_be_closed_by_its_data():
    from harness.report.html import environment

    data = {"out": PAYLOAD, "nan": math.nan, "list": [1.5, math.inf], "uni": "naïve — 日本"}
    html = environment().from_string('<script type="application/json" id="d">{{ x|tojson }}</script>').render(x=data)
    inner = html.removeprefix('<script type="application/json" id="d">').removesuffix("</script>")
    assert "<" not in inner and ">" not in inner and "&" not in inner and "'" not in inner
    assert "\\u003c/script\\u003e" in inner and "naïve — 日本" in inner  # non-ASCII text as is: a smaller page
    assert json.loads(inner) == {"out": PAYLOAD, "nan": None, "list": [1.5, None], "uni": "naïve — 日本"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("page")
    make_study(tmp / "runs", "demo", n_configs=6, seeds=2, items=30)
    assert cli.main(["report", "demo", "--runs-root", str(tmp / "runs"), "--out", str(tmp / "r"), "--no-svg",
                     "--studies-dir", str(tmp / "none")]) == 0
    return tmp / "r" / "demo" / "report.html"


def test_the_policy_allows_exactly_the_pages_script(report):
    html = report.read_text()
    page, data, js = page_parts(html)
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', html).group(1)
    digest = base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()
    assert csp == f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"
    assert "<script" not in page.lower() and json.loads(data)["plots"]


def test_leaderboard_groups_fold_to_fit(report):
    html = report.read_text()
    heads = re.findall(r'<th class="gh" colspan="(\d+)" data-g="(g\d+)" data-n="(\d+)">'
                       r'<button type="button" aria-expanded="(true|false)">([^<]+)<', html)
    assert [t for *_, t in heads] == ["axes", "e2e", "hellaswag", "val", "training", "cost", "time"]
    folded = {t: e == "false" for _, _, _, e, t in heads}
    assert folded["e2e"] is False and folded["hellaswag"] and folded["cost"]  # the primary metric's group stays open
    table_class = re.search(r'<table id="leaderboard-table" class="([^"]+)">', html).group(1).split()
    assert table_class == ["lb"] + [f"c-{g}" for _, g, _, e, _ in heads if e == "false"]  # folded in the HTML itself
    assert all(span == ("1" if folded[t] else n) for span, _, n, _, t in heads)
    shown_folded = 2 + sum(1 if folded[t] else int(n) for _, _, n, _, t in heads)
    assert shown_folded <= explore.MAX_COLUMNS < 2 + sum(int(n) for _, _, n, _, _ in heads)
    cost_heads = html.split('<tr class="cols">')[1].split("</tr>")[0].split('class="g5 lead"')[1]
    assert cost_heads.startswith(' data-type="num" data-head="peak memory (MB)"')  # memory leads the cost group


def test_per_example_data_is_capped_and_counts_every_disagreement(report, monkeypatch):
    from harness.report.aggregate import aggregate, rank
    from harness.report.compare import SampleCache
    from harness.report.meta import directions, metric_metas
    from harness.report.runs import find_run_dirs, load_run

    runs = [load_run(p) for p in find_run_dirs(report.parents[2] / "runs")]
    metas, _ = metric_metas(runs, ["hellaswag.acc", "e2e.bleu"])
    configs = rank(aggregate(runs, ["hellaswag.acc", "e2e.bleu"]), "e2e.bleu", "max")
    monkeypatch.setattr(explore, "EXAMPLE_ITEMS", 5)
    monkeypatch.setattr(explore, "EXAMPLE_CONFIGS", 3)
    ex = explore.examples(configs, SampleCache(), metas, directions(metas), "e2e.bleu")
    assert len(ex["configs"]) == 3 + 1 and ex["limits"]["trained"] == 6  # top 3 and the base model
    hs = next(s for s in ex["suites"] if s["name"] == "hellaswag")
    assert [s["name"] for s in ex["suites"]] == ["hellaswag", "e2e"]  # right-or-wrong tasks first
    assert hs["binary"] and len(hs["items"]) == 5 < hs["n_contested"] and hs["n_items"] == 30
    for it in hs["items"]:
        assert len(set(it["s"])) == 2  # every kept item has a right and a wrong answer among the shown
    shown = [configs[i] for i in ex["configs"]]
    by = [{str(r["id"]): r["acc"] for r in SampleCache().get(c.runs[0], "hellaswag")} for c in shown]
    for a in range(4):
        for b in range(4):
            assert hs["pairs"][a][b] == sum(1 for i in by[a] if i in by[b] and by[a][i] != by[b][i])
