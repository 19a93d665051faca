"""report.html in a real browser: headless Chromium (tests/chromium.py, the DevTools protocol on a pipe)
renders it offline; the leaderboard sorts, filters and folds its column groups; the plots answer hover and
zoom; the per-example view shows two configurations item by item; and markup planted in a model output, a
run name and a config value never runs: not under the page's Content-Security-Policy, and not with that
policy removed either (the page's script writes data as text only).

    python -m pytest tests/test_report_browser.py -q -m browser

Needs Debian's chromium (scripts/system-deps.sh installs it); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness import cli
from tests.chromium import CHROMIUM, Browser
from tests.fixtures_runs import make_study

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (run scripts/system-deps.sh or apt-get install chromium)")]

# Each payload, had it run, would set window.pwned and the title; the page must show it as text.
IMG = "<img src=x onerror=\"window.pwned=1;document.title='PWNED'\">"
SCRIPT = "<script>window.pwned=2;document.title='PWNED'</script>"
SVG = "<svg onload=\"window.pwned=3\"></svg>"


def _plant(runs: Path) -> None:
    """Payloads in a model output (every e2e prediction of one item), a run name (the full runs' summary
    name) and a config value (an axis of the lora runs: it varies, so it is a column, a filter menu entry,
    part of the label and of every hover)."""
    for summ_path in sorted(runs.rglob("summary.json")):
        d = summ_path.parent
        summ = json.loads(summ_path.read_text())
        if summ["status"] == "completed" and summ["axes"]["method"] == "full":
            summ["name"] = f"demo-full{IMG}"
        if summ["status"] == "completed" and summ["axes"]["method"] == "lora":
            summ["axes"]["data.template"] = f"{SCRIPT}{IMG}{SVG}"
        summ_path.write_text(json.dumps(summ))
        if (d / "samples" / "e2e.jsonl").exists():
            rows = [json.loads(line) for line in (d / "samples" / "e2e.jsonl").read_text().splitlines()]
            for r in rows[:3]:
                r["prediction"] = f"{IMG} {SCRIPT} {SVG} {r['prediction']}"
            (d / "samples" / "e2e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    make_study(tmp / "runs", "demo", n_configs=6, seeds=2, items=30)
    _plant(tmp / "runs")
    rc = cli.main(["report", "demo", "--runs-root", str(tmp / "runs"), "--out", str(tmp / "reports"),
                   "--no-svg", "--studies-dir", str(tmp / "none")])
    assert rc == 0
    return tmp, tmp / "reports" / "demo" / "report.html"


@pytest.fixture(scope="module")
def browser(page):
    with Browser(page[0]) as b:
        yield b


def _open(browser: Browser, path: Path) -> dict:
    timing = browser.load(path.resolve().as_uri())
    assert browser.exceptions() == []
    assert browser.eval("document.documentElement.getAttribute('data-ready')") == "1"  # the script ran to its end
    return timing


def _draw_all_plots(browser: Browser) -> None:
    """Plots are drawn as they come near the window, and all of them before printing."""
    browser.eval("window.dispatchEvent(new Event('beforeprint'))")
    assert browser.eval("Array.from(document.querySelectorAll('.iplot')).every(b => b.getAttribute('data-drawn'))")


def _not_pwned(browser: Browser) -> None:
    assert browser.eval("typeof window.pwned") == "undefined"
    assert browser.eval("document.title") == "Report: demo"


def _column(browser: Browser, head: str) -> int:
    return browser.eval(f"""Array.from(document.querySelectorAll('#leaderboard-table tr.cols th'))
                            .findIndex(th => th.getAttribute('data-head') === {json.dumps(head)})""")


def _set(browser: Browser, selector: str, value: str, event: str = "change") -> None:
    """Set a form control's value as a reader would and fire its event."""
    browser.eval(f"(e => {{ e.value = {json.dumps(value)}; e.dispatchEvent(new Event({json.dumps(event)})); }})"
                 f"(document.querySelector({json.dumps(selector)}))")


def _values(browser: Browser, i: int) -> list:
    """data-v of column i in the visible rows, top to bottom."""
    return browser.eval(f"""Array.from(document.querySelectorAll('#leaderboard-table tbody tr'))
                            .filter(r => !r.hidden).map(r => r.cells[{i}].getAttribute('data-v'))""")


@pytest.mark.slow
def test_renders_offline_with_its_one_script(browser, page):
    _open(browser, page[1])
    html = page[1].read_text()
    assert not re.search(r'<(img|script|link)[^>]+(src|href)="?https?:', html)  # nothing loaded from outside
    assert browser.eval("document.querySelectorAll('#leaderboard-table tbody tr').length") == 6 + 1  # + the base model
    assert browser.eval("document.querySelectorAll('.iplot svg circle').length") == 0  # not yet: far below the window
    browser.eval("location.hash = '#figures'")  # the reader goes to the figures: they are drawn
    assert browser.wait("document.querySelectorAll('#figures .iplot[data-drawn] svg circle').length") > 3
    _draw_all_plots(browser)
    assert browser.eval("document.querySelectorAll('.iplot svg circle').length") > 20  # plots drawn by the script
    assert browser.eval("document.querySelectorAll('#figures img').length") >= 1  # loss curves stay a PNG
    assert browser.eval("document.querySelectorAll('#ex-table tbody tr').length") == 0  # drawn when the reader gets there
    browser.eval("location.hash = '#examples'")
    assert browser.wait("document.querySelectorAll('#ex-table tbody tr').length") > 5
    assert browser.eval("performance.getEntriesByType('resource').length") == 0  # no request at all
    shot = browser.screenshot()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 50_000  # a rendered page, not a blank one
    _not_pwned(browser)


def test_without_javascript_every_column_and_figure_shows(browser, page):
    browser.send("Emulation.setScriptExecutionDisabled", session=True, value=True)
    try:
        browser.load(page[1].resolve().as_uri())
        assert browser.eval("document.documentElement.getAttribute('data-ready')") is None  # the script did not run
        hidden = browser.eval("""Array.from(document.querySelectorAll('#leaderboard-table tr.cols th, #leaderboard-table td'))
                                 .filter(c => getComputedStyle(c).display === 'none').length""")
        assert hidden == 0  # folded groups unfold: the <noscript> style in the head
        imgs = browser.eval("Array.from(document.querySelectorAll('#figures img')).filter(i => i.naturalWidth > 0).length")
        assert imgs >= 5  # the PNG of every figure, the interactive ones' from <noscript>
    finally:
        browser.send("Emulation.setScriptExecutionDisabled", session=True, value=False)


def test_sorting_by_a_column(browser, page):
    _open(browser, page[1])
    bleu, loss, label = _column(browser, "bleu"), _column(browser, "best_val_loss"), _column(browser, "configuration")
    head = f"document.querySelectorAll('#leaderboard-table tr.cols th')"
    browser.eval(f"{head}[{bleu}].click()")  # higher is better: best (highest) first
    vals = [float(v) for v in _values(browser, bleu)]
    assert vals == sorted(vals, reverse=True) and browser.eval(f"{head}[{bleu}].getAttribute('aria-sort')") == "descending"
    browser.eval(f"{head}[{bleu}].click()")
    assert [float(v) for v in _values(browser, bleu)] == sorted(vals)
    for _ in range(2):  # the base model has no best_val_loss: last in either order
        browser.eval(f"{head}[{loss}].click()")
        v = _values(browser, loss)
        assert v[-1] == "" and "" not in v[:-1]
        nums = [float(x) for x in v[:-1]]
        assert nums in (sorted(nums), sorted(nums, reverse=True))
    params = _column(browser, "trainable params")
    browser.eval(f"{head}[{params}].click()")  # numbers, not text: 32,000 < 64,000 < 1e6
    nums = [float(x) for x in _values(browser, params)]
    assert nums == sorted(nums) and len(set(nums)) > 2
    browser.eval(f"{head}[{label}].click()")
    labels = browser.eval(f"""Array.from(document.querySelectorAll('#leaderboard-table tbody tr')).map(r => r.cells[{label}].textContent)""")
    assert labels == sorted(labels, key=str.lower) or labels[0] <= labels[-1]


def test_filtering_rows(browser, page):
    _open(browser, page[1])
    visible = "Array.from(document.querySelectorAll('#leaderboard-table tbody tr')).filter(r => !r.hidden)"
    _set(browser, "#lb-filter", "qlora", "input")
    labels = browser.eval(f"{visible}.map(r => r.cells[0].textContent)")
    assert labels and all("qlora" in x for x in labels) and len(labels) < 7
    assert browser.eval("document.getElementById('lb-count').textContent") == f"{len(labels)} of 7 configurations shown"
    _set(browser, "#lb-filter", "", "input")
    assert browser.eval(f"{visible}.length") == 7
    method = _column(browser, "method")
    options = browser.eval("Array.from(document.querySelectorAll('#lb-menus select')[0].options).map(o => o.value)")
    assert "full" in options and "lora" in options
    _set(browser, "#lb-menus select", "full")
    assert set(browser.eval(f"{visible}.map(r => r.cells[{method}].textContent)")) == {"full"}


def test_column_groups_fold(browser, page):
    _open(browser, page[1])
    shown = "(i => getComputedStyle(document.querySelectorAll('#leaderboard-table tr.cols th')[i]).display !== 'none')"
    acc_norm, bleu, chrf = _column(browser, "acc_norm"), _column(browser, "bleu"), _column(browser, "chrf")
    assert browser.eval(f"{shown}({bleu}) && {shown}({chrf})")  # the primary metric's group is open
    assert not browser.eval(f"{shown}({acc_norm})")  # another group is folded to its first column
    assert browser.eval(f"{shown}({_column(browser, 'acc')})")
    browser.eval("document.querySelector('#leaderboard-table th[data-g] button[aria-expanded=false]') && "
                 "Array.from(document.querySelectorAll('#leaderboard-table tr.groups th[data-g]'))"
                 ".find(th => th.textContent.startsWith('hellaswag')).querySelector('button').click()")
    assert browser.eval(f"{shown}({acc_norm})")
    fits = "(w => w.scrollWidth <= w.clientWidth + 1)(document.querySelector('.lb-wrap'))"
    browser.eval("document.getElementById('lb-expand').click()")
    assert browser.eval(f"{shown}({acc_norm}) && {shown}({_column(browser, 'adapter size (bytes)')})")
    assert not browser.eval(fits)  # every column: wider than the page at 1280 px
    browser.eval("document.getElementById('lb-collapse').click()")
    assert browser.eval(fits) and not browser.eval(f"{shown}({acc_norm})")  # folded: it fits


def test_plot_hover_and_zoom(browser, page):
    _open(browser, page[1])
    browser.eval("document.getElementById('fig-quality_vs_memory').scrollIntoView()")
    browser.wait("document.querySelector('[data-plot=quality_vs_memory] circle.pt')")
    c = browser.eval("""(() => { const p = document.querySelector('[data-plot=quality_vs_memory] circle.pt').getBoundingClientRect();
                         return [p.x + p.width / 2, p.y + p.height / 2]; })()""")
    browser.send("Input.dispatchMouseEvent", session=True, type="mouseMoved", x=c[0], y=c[1])
    tip = browser.eval("(t => t.hidden ? null : t.textContent)(document.querySelector('[data-plot=quality_vs_memory] .tip'))")
    assert tip and "configuration:" in tip and "e2e.bleu:" in tip and "peak memory (MB):" in tip
    box = browser.eval("""(() => { const r = document.querySelector('[data-plot=quality_vs_memory] svg').getBoundingClientRect();
                         return [r.x, r.y, r.width, r.height]; })()""")
    ticks = "Array.from(document.querySelectorAll('[data-plot=quality_vs_memory] .axes text')).map(t => t.textContent).join('|')"
    before = browser.eval(ticks)
    x0, y0 = box[0] + box[2] * 0.2, box[1] + box[3] * 0.1
    for kind, x, y in (("mousePressed", x0, y0), ("mouseMoved", x0 + box[2] * 0.3, y0 + box[3] * 0.5),
                       ("mouseReleased", x0 + box[2] * 0.3, y0 + box[3] * 0.5)):
        browser.send("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y, button="left", clickCount=1)
    assert browser.eval(ticks) != before  # the axes now show the zoomed range
    assert browser.eval("document.querySelector('[data-plot=quality_vs_memory] .plot-reset').hidden") is False
    browser.eval("document.querySelector('[data-plot=quality_vs_memory] .plot-reset').click()")
    assert browser.eval(ticks) == before
    # every point of every plot hovered once: the run names and config values in the tooltips stay text
    _draw_all_plots(browser)
    tips = browser.eval("""(() => { const seen = []; document.querySelectorAll('circle.pt').forEach(c => {
                          c.dispatchEvent(new MouseEvent('mousemove', {bubbles: true}));
                          seen.push(c.closest('.plot').querySelector('.tip').textContent); });
                          return seen; })()""")
    assert len(tips) > 20 and any("run: demo-full" + IMG in t for t in tips)  # a run name, as text
    assert any(SCRIPT + IMG + SVG in t for t in tips)  # a config value, as text
    _not_pwned(browser)


def test_per_example_view_of_two_runs(browser, page):
    _open(browser, page[1])
    data = json.loads(browser.eval("document.getElementById('report-data').textContent"))
    ex = data["examples"]
    hs = next(s for s in ex["suites"] if s["name"] == "hellaswag")
    assert hs["binary"] and hs["items"]
    names = [data["configs"][c]["label"] for c in ex["configs"]]
    a, b = 0, len(names) - 1  # the top-ranked configuration and the base model
    for sel, v in (("#ex-a", a), ("#ex-b", b), ("#ex-suite", "hellaswag"), ("#ex-which", "a")):
        _set(browser, sel, str(v))
    rows = browser.eval("""Array.from(document.querySelectorAll('#ex-table tbody tr')).map(r =>
                           Array.from(r.cells).map(c => c.textContent))""")
    want = [it for it in hs["items"] if it["s"][a] == 1 and it["s"][b] == 0]
    assert len(rows) == len(want) > 0
    assert all(r[0] == "hellaswag" and r[4].startswith("right") and r[5].startswith("wrong") for r in rows)
    assert [r[1] for r in rows] == [str(it["id"]) for it in want]
    assert browser.eval("document.getElementById('ex-ha').textContent") == f"A: {names[a]}"
    summary = browser.eval("document.getElementById('ex-summary').textContent")
    assert f"disagree on {hs['pairs'][a][b]} of {hs['n_items']} items" in summary
    # the generation task: outputs with the planted markup, shown as text
    _set(browser, "#ex-suite", "e2e")
    _set(browser, "#ex-which", "both")
    texts = browser.eval("Array.from(document.querySelectorAll('#ex-table tbody td')).map(c => c.textContent).join('\\n')")
    assert IMG in texts and SCRIPT in texts
    assert browser.eval("document.querySelectorAll('#ex-table img, #ex-table script, #ex-table svg').length") == 0
    _not_pwned(browser)


@pytest.mark.parametrize("csp", ["kept", "removed"])
def test_planted_markup_never_runs(browser, page, csp):
    """With the page's policy, and with it removed (so only the page's own care keeps the payloads inert):
    every view that shows the planted strings is opened, and none of them runs."""
    path = page[1]
    if csp == "removed":
        html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", path.read_text())
        path = page[0] / "report-nocsp.html"
        path.write_text(html)
    _open(browser, path)
    _draw_all_plots(browser)
    browser.eval("""(() => {
        document.querySelectorAll('#lb-menus select').forEach(s => { Array.from(s.options).forEach(o => {
          s.value = o.value; s.dispatchEvent(new Event('change')); }); });
        document.querySelectorAll('circle.pt').forEach(c => c.dispatchEvent(new MouseEvent('mousemove', {bubbles: true})));
        const a = document.getElementById('ex-a'), b = document.getElementById('ex-b');
        for (let i = 0; i < a.options.length; i++) for (let j = 0; j < b.options.length; j++) {
          a.value = String(i); b.value = String(j); b.dispatchEvent(new Event('change')); }
        document.querySelectorAll('#leaderboard-table tr.cols th').forEach(th => th.click());
    })()""")
    assert browser.eval("document.querySelectorAll('main img:not(#figures img), main script, main svg:not(.plot-svg)').length") == 0
    assert IMG in browser.eval("document.body.textContent")  # shown, as text
    _not_pwned(browser)
