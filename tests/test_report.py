"""Tests for `harness report` (harness/report/, harness/commands/report.py) on synthetic run records.

    python -m pytest tests/test_report.py -q

The records come from tests/fixtures_runs.py: a small study with seeds, failed/diverged/pruned/
interrupted runs, a baseline and a planted `<script>` in one model output.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from harness import cli
from harness.report.fmt import _num, csv_safe, fmt, timestamp
from harness.report.stats import holm, mean_ci
from tests.fixtures_runs import FORMULA_REASON, make_optuna_storage, make_study

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
STAMP = re.compile(r"Generated: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def page_parts(html: str) -> tuple[str, str, str]:
    """(the page without its two script blocks, the JSON data block's text, the script's text). The data
    block holds no `<` (tojson escapes it), so its first `</script>` is its end; the page has no other script."""
    head, rest = html.split('<script type="application/json" id="report-data">', 1)
    data, rest = rest.split("</script>", 1)
    between, rest = rest.split("<script>", 1)
    js, tail = rest.split("</script>", 1)
    return head + between + tail, data, js


def build(tmp: Path, *extra: str, runs: Path | None = None, study: str = "demo") -> Path:
    out = tmp / "reports"
    rc = cli.main(["report", study, "--runs-root", str(runs or tmp / "runs"), "--out", str(out), *extra])
    assert rc == 0
    return out / study


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One study and its report, shared by the read-only tests below."""
    tmp = tmp_path_factory.mktemp("report")
    dirs = make_study(tmp / "runs", "demo", n_configs=6, seeds=3, items=40)
    out = build(tmp, "--studies-dir", str(tmp / "studies"))
    return tmp, dirs, out


@pytest.mark.slow
def test_writes_every_output(built):
    tmp, _, out = built
    for f in ("report.md", "report.html", "results.csv", "results.json"):
        assert (out / f).is_file(), f
    figs = sorted(p.name for p in (out / "figures").iterdir())
    for stem in ("loss_curves", "quality_vs_memory", "quality_vs_params", "optimization_history", "params_vs_objective"):
        assert f"{stem}.png" in figs and f"{stem}.svg" in figs
    assert all((out / "figures" / f).read_bytes()[:4] in (b"\x89PNG", b"<?xm") for f in figs)


def test_leaderboard_means_and_ci_match_the_records(built):
    tmp, dirs, out = built
    res = json.loads((out / "results.json").read_text())
    board = res["leaderboard"]
    assert sum(1 for r in board if r["baseline"]) == 1
    assert sum(1 for r in board if not r["baseline"]) == 6
    assert res["primary_metric"] == "e2e.bleu" and res["direction"] == "max"
    # recompute one configuration's mean/CI straight from its eval.json files
    row = next(r for r in board if not r["baseline"] and r["axes"]["method"] == "lora" and r["axes"]["train.lr"] == 0.0001)
    vals = [json.loads((Path(d) / "eval.json").read_text())["suites"]["e2e"]["metrics"]["bleu"] for d in row["run_dirs"]]
    assert len(vals) == 3 == row["n"]
    m, lo, hi, n = mean_ci(vals)
    cell = row["metrics"]["e2e.bleu"]
    assert cell["mean"] == pytest.approx(m) and cell["lo"] == pytest.approx(lo) and cell["n"] == 3
    # sorted best first by the primary metric (trained rows), baseline last
    means = [r["metrics"]["e2e.bleu"]["mean"] for r in board if not r["baseline"]]
    assert means == sorted(means, reverse=True) and board[-1]["baseline"]
    # one results row per run, failures included
    assert len(res["runs"]) == len(dirs)
    assert {r["status"] for r in res["runs"]} == {"completed", "failed", "diverged", "pruned", "interrupted", "baseline"}


def test_verdicts_and_tests(built):
    tmp, _, out = built
    res = json.loads((out / "results.json").read_text())
    cmp_ = res["comparisons"]
    tests = {(c["suite"], c["metric"]): c["test"] for c in cmp_}
    assert tests[("hellaswag", "acc")] == "McNemar exact"
    assert tests[("e2e", "bleu")].startswith("paired bootstrap")
    assert {c["kind"] for c in cmp_} == {"vs best", "vs baseline"}
    # Holm-adjusted p-values are the Holm adjustment of the raw ones over all comparisons shown
    assert [c["p_holm"] for c in cmp_] == pytest.approx(holm([c["p"] for c in cmp_]))
    # 40 items x 3 seeds paired on id
    c = next(c for c in cmp_ if c["kind"] == "vs best" and c["metric"] == "bleu")
    assert c["n_items"] == 40 and c["run_pairs"] == 3 and c["n"] == 120 and c["unmatched"] == 0
    md = (out / "report.md").read_text()
    assert re.search(r"vs base tiny-llama on e2e bleu: \+\d+\.\d\d points, better, significant \(p < 0\.001", md)
    assert re.search(r"on hellaswag acc: [+-]\d+\.\d\d points, (not significant|(better|worse), significant) \(p ", md)
    html = (out / "report.html").read_text()
    assert 'id="leaderboard-table"' in html and "McNemar exact" in html


def test_model_outputs_and_user_strings_are_escaped(built):
    _, _, out = built
    html = (out / "report.html").read_text()
    page, data, js = page_parts(html)
    assert "window.__pwned" in page  # the planted output is shown ...
    assert "<script" not in page.lower()  # ... but only as text
    assert "&lt;script&gt;window.__pwned=1" in page
    assert "<" not in data and "\\u003cscript\\u003ewindow.__pwned=1" in data  # in the page's data: JSON, < escaped
    assert "<i>(fixture)</i>" not in html and "&lt;i&gt;(fixture)&lt;/i&gt;" in html  # reference source
    assert "Content-Security-Policy" in html and "http://" not in (page + data).replace("http://evil.example", "")
    assert "http" not in js.replace('"http://www.w3.org/2000/svg"', "")  # the SVG namespace is a name, not a fetch
    assert "innerHTML" not in js and "eval(" not in js and "insertAdjacentHTML" not in js
    md = (out / "report.md").read_text()
    assert "<script" not in md.lower() and "&lt;script&gt;window.\\_\\_pwned" in md


def _plant(runs: Path) -> None:
    """Put SCRIPT and IMG into every place a run record feeds the page: a sweep axis (the configuration
    label), config.yaml references, a suite name and a metric name in eval.json, model outputs and a
    failure reason."""
    import yaml

    for summ_path in sorted(runs.rglob("summary.json")):
        d = summ_path.parent
        summ = json.loads(summ_path.read_text())
        if summ["status"] == "failed":
            summ["reason"] = f"{IMG} {SCRIPT}"
        if summ["status"] == "completed" and summ["axes"]["method"] == "full":
            summ["axes"]["data.template"] = f"{SCRIPT}{IMG}"  # one configuration: its label carries both
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            cfg["data"] = {"template": f"{SCRIPT}{IMG}"}
            cfg["references"] = [{"metric": "e2e.bleu", "value": 40.0, "tolerance": 5.0, "source": IMG, "note": SCRIPT}]
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        summ_path.write_text(json.dumps(summ))
        if (d / "eval.json").exists():
            ev = json.loads((d / "eval.json").read_text())
            ev["suites"][SCRIPT] = {"kind": "custom", "metrics": {IMG: 0.5 + 0.1 * summ["seed"]},
                                    "config_hash": f"h{summ['seed']}"}  # differing hashes: a warning names the suite
            (d / "eval.json").write_text(json.dumps(ev))
            rows = [json.loads(line) for line in (d / "samples" / "e2e.jsonl").read_text().splitlines()]
            rows[0]["prediction"] = f"{SCRIPT} {IMG} {rows[0]['prediction']}"
            (d / "samples" / "e2e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_planted_markup_in_records_configs_and_outputs_is_escaped(tmp_path):
    from html.parser import HTMLParser

    from markupsafe import escape

    make_study(tmp_path / "runs", "demo", n_configs=3, seeds=2, items=20)
    _plant(tmp_path / "runs")
    html = (build(tmp_path, "--no-svg", "--studies-dir", str(tmp_path / "none")) / "report.html").read_text()
    page, data, _ = page_parts(html)
    for planted in (SCRIPT, IMG, "<img src=x", "<script"):
        assert planted not in page and planted not in data  # (the third part is the page's own script)
    assert "<script" not in page.lower()
    assert "<" not in data and ">" not in data and "'" not in data  # nothing in the data can end its block
    assert json.loads(data)["examples"]["suites"]  # ... and it is still JSON with the per-example items

    def section(sid: str) -> str:
        return html.split(f'<section id="{sid}"', 1)[1].split("</section>", 1)[0]

    script, img = str(escape(SCRIPT)), str(escape(IMG))
    assert f"template={script}{img}" in section("leaderboard")  # the configuration label (a config value)
    assert f"{script}.{img}" in section("leaderboard")  # a suite and metric name in the column head
    assert f"for {script}: h0, h1" in section("warnings")  # the suite name in a warning
    assert f"<td>{img}</td><td>{script}</td></tr>" in section("references")  # config.yaml reference source, note
    assert section("samples").count(f"<td>{script} {img} ") == 2  # model outputs: best configuration and base model
    assert f"<td>{img} {script}</td>" in section("failed")  # a failure reason

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags = []

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))

    p = Tags()
    p.feed(html)
    assert [a for t, a in p.tags if t == "script"] == [{"type": "application/json", "id": "report-data"}, {}]
    assert not [t for t, _ in p.tags if t in ("iframe", "object", "embed", "link", "base", "form")]
    assert not [(t, a) for t, a in p.tags if any(k.startswith("on") for k in a)]  # no event handler attribute
    imgs = [a for t, a in p.tags if t == "img"]
    assert len(imgs) >= 4 and all(set(a) == {"alt", "src"} and a["src"].startswith("data:image/png;base64,") for a in imgs)


def test_report_template_environment_autoescapes():
    import jinja2

    from harness.report import html as report_html

    env = report_html.environment()
    assert env.autoescape is True and env.undefined is jinja2.StrictUndefined
    assert env.from_string("{{ x }}|{{ n }}").render(x=SCRIPT, n=None) == "&lt;script&gt;alert(1)&lt;/script&gt;|"
    assert report_html.TEMPLATES == Path(report_html.__file__).resolve().parent / "templates"
    names = env.list_templates()
    assert "report.html.j2" in names
    for name in names:  # no template opts out of escaping
        src = (report_html.TEMPLATES / name).read_text()
        assert not re.search(r"\|\s*safe\b|autoescape\s+false|Markup", src), name
    assert "Markup" not in Path(report_html.__file__).read_text()


def test_csv_neutralises_formulas(built):
    _, _, out = built
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["reason"] == "'" + FORMULA_REASON
    for row in rows:
        for v in row.values():
            assert not v or v[0] not in "=+-@\t\r" or re.fullmatch(r"-\d+(\.\d+)?(e-?\d+)?", v), v  # text, or a number
    for s in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert csv_safe(s) == "'" + s
    assert csv_safe("plain") == "plain" and csv_safe(None) == ""


def test_failed_runs_are_listed_with_reasons(built):
    _, _, out = built
    md = (out / "report.md").read_text()
    for status, reason in (("failed", "CUDA out of memory"), ("diverged", "loss became nan at step 15"),
                           ("pruned", "pruned at step 10"), ("interrupted", "SIGTERM")):
        assert re.search(rf"\| {status} \| [^\n]*{re.escape(reason)}", md), status
    html = (out / "report.html").read_text()
    assert 'id="failed-table"' in html and "Runs that did not complete (4)" in html


def test_references_and_provenance(built):
    _, _, out = built
    md = (out / "report.md").read_text()
    assert re.search(r"\| e2e\.bleu \| [^|]+ \| [\d.]+ \| 45\.00 \| 10\.00 \| (within|outside) tolerance \|", md)
    assert "| hellaswag.acc |" in md and "reference only" in md
    assert "0123456789abcdef0123456789abcdef01234567" in md and "sha256:bcc37c64db1a739a" in md
    assert "Fixture CPU @ 2.0GHz (family 25 model 17 stepping 1)" in md  # the same model name can be two CPUs


@pytest.mark.slow
def test_deterministic_except_timestamp(tmp_path, capsys):
    make_study(tmp_path / "runs", "demo", n_configs=3, seeds=2, items=20)
    a = build(tmp_path / "a", "--studies-dir", str(tmp_path / "none"), runs=tmp_path / "runs")
    assert capsys.readouterr().out.strip() == str(a / "report.html")  # the command prints the report path
    b = build(tmp_path / "b", "--studies-dir", str(tmp_path / "none"), runs=tmp_path / "runs")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert any(str(f).endswith(".svg") for f in files)
    for f in files:
        x, y = (a / f).read_bytes(), (b / f).read_bytes()
        if f.name in ("report.md", "report.html"):
            lx, ly = x.decode().splitlines(), y.decode().splitlines()
            assert sum(1 for line in lx if STAMP.search(line)) == 1
            assert [line for line in lx if not STAMP.search(line)] == [line for line in ly if not STAMP.search(line)]
        else:
            assert x == y, f


def test_source_date_epoch_fixes_the_timestamp(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert timestamp() == "1970-01-01T00:00:00Z"


@pytest.mark.slow
def test_comparability_warning_and_auto_baseline(tmp_path):
    make_study(tmp_path / "runs", "demo", n_configs=3, seeds=2, items=20, mismatch=True, failures=False,
               baseline_in_study=False)
    out = build(tmp_path, "--no-svg", "--studies-dir", str(tmp_path / "none"))
    md = (out / "report.md").read_text()
    assert "Runs differ in eval config_hash for hellaswag: cfg-hs-1, cfg-hs-2" in md
    assert "not comparable" in (out / "report.html").read_text()
    # the base model evaluated outside the study is found for the study's model and said so
    assert "| base tiny-llama (reference) | 1 |" in md and "evaluated outside this study" in md
    out2 = build(tmp_path / "b", "--no-svg", "--no-auto-baseline", "--studies-dir", str(tmp_path / "none"),
                 runs=tmp_path / "runs")
    assert "base tiny-llama" not in (out2 / "report.md").read_text()


@pytest.mark.slow
def test_optuna_history_and_importances(tmp_path):
    dirs = make_study(tmp_path / "runs", "demo", n_configs=6, seeds=2, items=20, baseline=False)
    (tmp_path / "studies").mkdir()
    make_optuna_storage(tmp_path / "studies" / "demo.db", "demo", dirs, metric="hellaswag.acc")
    out = build(tmp_path, "--no-svg", "--studies-dir", str(tmp_path / "studies"))
    figs = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"optimization_history", "param_importances"} <= figs
    res = json.loads((out / "results.json").read_text())
    assert res["primary_metric"] == "hellaswag.acc"  # taken from the study's user attribute
    assert not any("Optuna" in w for w in res["warnings"])


def test_run_dirs_mode_human_and_permutation(tmp_path):
    dirs = make_study(tmp_path / "runs", "demo", n_configs=3, seeds=2, items=20, failures=False)
    human = tmp_path / "human.json"
    human.write_text(json.dumps({"elo": {"lora": 1012.5, "full": 987.5}, "agreement": {"cohen_kappa": 0.41},
                                 "win_rates": [{"a": "lora", "b": "<b>full</b>", "win_rate": 0.55}]}))
    # the documented human.json shape (docs/human-eval.md), found under --human-root by its "runs"
    found = tmp_path / "human" / "e2e-r1" / "human.json"
    found.parent.mkdir(parents=True)
    found.write_text(json.dumps({"schema": 1, "mode": "pointwise", "suite": "e2e", "runs": ["demo-full/t0000-s0"],
                                 "scores": {"demo-full/t0000-s0": {"fluency": {"mean": 3.9, "ci95": [3.6, 4.2], "n_items": 50}}},
                                 "agreement": {"fluency": {"annotators": 3, "krippendorff_alpha": 0.61}}}))
    other = tmp_path / "human" / "other" / "human.json"  # about other runs: not included
    other.parent.mkdir(parents=True)
    other.write_text(json.dumps({"schema": 1, "runs": ["elsewhere/x"], "scores": {}}))
    out_root = tmp_path / "reports"
    rc = cli.main(["report", *map(str, dirs[:4]), "--name", "pick", "--out", str(out_root), "--human", str(human),
                   "--human-root", str(tmp_path / "human"), "--paired-test", "permutation", "--no-svg",
                   "--studies-dir", str(tmp_path / "none")])
    assert rc == 0
    res = json.loads((out_root / "pick" / "results.json").read_text())
    assert len(res["runs"]) == 4
    assert any(c["test"] == "paired permutation" for c in res["comparisons"])
    html = (out_root / "pick" / "report.html").read_text()
    assert "Human evaluation" in html and "1,012.5" in html and "cohen_kappa" in html
    assert "&lt;b&gt;full&lt;/b&gt;" in html
    assert "3.9 [3.6, 4.2]" in html and "krippendorff_alpha" in html and str(found) in html
    assert str(other) not in html


def test_clear_errors(tmp_path, capsys):
    make_study(tmp_path / "runs", "demo", n_configs=1, seeds=1, items=5, failures=False, baseline=False)
    cases = [
        (["nosuch", "--runs-root", str(tmp_path / "runs")], "Studies found: demo"),
        (["demo", "--runs-root", str(tmp_path / "runs"), "--metric", "e2e.nope"], "--metric 'e2e.nope'"),
        (["demo", "--runs-root", str(tmp_path / "absent")], "runs root"),
        (["../evil", "--runs-root", str(tmp_path / "runs")], "not allowed"),
    ]
    for argv, message in cases:
        assert cli.main(["report", *argv, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_format():
    assert fmt(999_999.0) == "999,999" and fmt(0.41234) == "0.4123" and fmt(None) == "—"
    assert math.isnan(_num("nan")) and _num(3) == 3.0 and math.isnan(_num("x"))


def test_minimal_records_without_eval_or_samples(tmp_path):
    """Runs with only summary.json and metrics.jsonl (no eval, no samples, no manifest) still report,
    ranked by best_val_loss, with the missing pieces said out loud rather than crashing."""
    from harness import atomic

    for i, (method, loss) in enumerate([("lora", 2.1), ("lora", 2.3), ("full", 1.9), ("full", 2.0)]):
        d = tmp_path / "runs" / f"m-{method}" / f"r{i}"
        atomic.write_json(d / "summary.json", {"status": "completed", "study": "mini", "trial": i, "seed": i % 2,
                                               "method": method, "axes": {"method": method, "seed": i % 2},
                                               "best_val_loss": loss, "peak_memory_mb": 100.0 * (1 + (method == "full"))})
        atomic.append_jsonl(d / "metrics.jsonl", {"step": 1, "train_loss": loss + 1})
    (tmp_path / "runs" / "corrupt" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "corrupt" / "x" / "summary.json").write_text("{not json")
    out = build(tmp_path, "--no-svg", "--studies-dir", str(tmp_path / "none"), study="mini")
    res = json.loads((out / "results.json").read_text())
    assert res["primary_metric"] == "summary.best_val_loss" and res["direction"] == "min"
    assert [r["label"] for r in res["leaderboard"]] == ["full", "lora"]
    assert res["leaderboard"][0]["metrics"]["summary.best_val_loss"]["mean"] == pytest.approx(1.95)
    assert res["comparisons"] == []
    md = (out / "report.md").read_text()
    assert "unreadable" in md and "corrupt" in md  # a broken record is listed, not skipped


def test_a_reference_naming_its_configuration_is_compared_with_that_one():
    """Every run of a sweep carries all the spec's references; a reference with `axes` (the paper's LoRA row,
    its full fine-tuning row) is set beside the configuration it describes, not the run that carried it."""
    from harness.report.aggregate import Config
    from harness.report.build import reference_rows

    lora = Config("a", {"method": "lora"}, [], False, "lora", {"e2e.bleu": {"mean": 45.0}})
    full = Config("b", {"method": "full"}, [], False, "full", {"e2e.bleu": {"mean": 50.0}})
    refs = [{"metric": "e2e.bleu", "value": 70.4, "axes": {"method": "lora"}, "_axes": {"method": "full"}},
            {"metric": "e2e.bleu", "value": 68.2, "axes": {"method": "full"}, "_axes": {"method": "lora"}},
            {"metric": "e2e.bleu", "value": 60.0, "_axes": {"method": "full"}}]
    rows = reference_rows(refs, [lora, full], best=lora)
    assert [(r["config"], r["measured"]) for r in rows] == [("lora", 45.0), ("full", 50.0), ("full", 50.0)]


def test_a_references_file_replaces_the_configs_copy_of_the_same_number(tmp_path):
    from harness.report.build import gather_references
    from harness.report.runs import Run

    run = Run(path=tmp_path, summary={"axes": {"method": "lora"}}, metrics={}, eval={}, manifest={},
                     config={"references": [{"metric": "e2e.bleu", "value": 68.2}, {"metric": "e2e.rougeL", "value": 0.71}]})
    f = tmp_path / "references.json"
    f.write_text(json.dumps({"references": [{"metric": "e2e.bleu", "value": 68.2, "axes": {"method": "full"}}]}))
    refs = gather_references([run], [f])
    assert [(r["metric"], r.get("axes"), r["_from"]) for r in refs] == [
        ("e2e.rougeL", None, "config.yaml"), ("e2e.bleu", {"method": "full"}, str(f))]
