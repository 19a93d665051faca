"""The README cannot rot: its two opening commands exist and do what it says, CI runs the same
test command, and a fast equivalent of `make demo` (the quickstart sweep on the tiny model, then
its report) runs end to end here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _first_code_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines() if line.strip()]


def test_readme_opens_with_the_two_commands():
    assert _first_code_block() == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    commands = [l.strip() for l in ci.splitlines() if l.strip() and not l.strip().startswith(("#", "set ", "cd "))]
    assert commands == ["make test"]


def test_makefile_targets_do_what_the_readme_says():
    mk = (REPO / "Makefile").read_text()
    demo = re.search(r"^demo:.*?\n((?:\t.*\n)+)", mk, re.M).group(1)
    assert "harness sweep sweeps/quickstart.yaml" in demo and "harness report quickstart" in demo
    test = re.search(r"^test:.*?\n((?:\t.*\n)+)", mk, re.M).group(1)
    assert "pytest" in test
    assert "torch==2.13.0" in mk, "the venv pins the CPU build of torch before anything else"


@pytest.mark.slow
def test_every_shipped_sweep_is_listed_dry_run():
    for spec in sorted((REPO / "sweeps").glob("*.yaml")):
        out = subprocess.run([sys.executable, "-m", "harness", "sweep", str(spec), "--dry-run"],
                             capture_output=True, text=True, cwd=REPO, timeout=300)
        assert out.returncode == 0, f"{spec.name}: {out.stdout[-2000:]}{out.stderr[-2000:]}"


@pytest.mark.slow
def test_quickstart_demo_fast_equivalent(tmp_path):
    """`make demo` = `harness sweep sweeps/quickstart.yaml` + `harness report quickstart`; here on the
    tiny model with two training steps and five items per task, in the same two commands."""
    runs, storage, out = tmp_path / "runs", f"sqlite:///{tmp_path / 'qs.db'}", tmp_path / "reports"
    sweep = subprocess.run(
        [sys.executable, "-m", "harness", "sweep", "sweeps/quickstart.yaml", "model=tiny-llama", "data=alpaca-tiny",
         "train.max_steps=2", "train.eval_every=1", "eval.lm_eval.limit=5", "tracker=none",
         "--runs-root", str(runs), "--storage", storage],
        capture_output=True, text=True, cwd=REPO, timeout=900)
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    report = subprocess.run(
        [sys.executable, "-m", "harness", "report", "quickstart", "--runs-root", str(runs), "--storage", storage,
         "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    html = out / "quickstart" / "report.html"
    assert html.exists() and str(html) in report.stdout
    text = html.read_text()
    for method in ("full", "lora", "qlora"):
        assert method in text
    summaries = list(runs.rglob("summary.json"))
    assert len(summaries) == 3
