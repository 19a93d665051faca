"""report.html in a real browser: headless Chromium renders it offline, the leaderboard and the
figures are there, and the `<script>` planted in a model output never runs.

    python -m pytest tests/test_report_browser.py -q -m browser

Needs Debian's chromium (scripts/system-deps.sh installs it); skipped with the reason otherwise.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import cli
from tests.fixtures_runs import make_study

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (run scripts/system-deps.sh or apt-get install chromium)")
def test_report_renders_offline_and_planted_script_does_not_run(tmp_path):
    make_study(tmp_path / "runs", "demo", n_configs=4, seeds=2, items=20)
    rc = cli.main(["report", "demo", "--runs-root", str(tmp_path / "runs"), "--out", str(tmp_path / "reports"),
                   "--no-svg", "--studies-dir", str(tmp_path / "none")])
    assert rc == 0
    page = tmp_path / "reports" / "demo" / "report.html"
    url = page.resolve().as_uri()

    dom = _chromium(tmp_path, "--virtual-time-budget=2000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'id="leaderboard-table"' in html
    rows = re.findall(r"<tr[ >]", html.split('id="leaderboard-table"', 1)[1].split("</table>", 1)[0])
    assert len(rows) == 1 + 4 + 1  # header, 4 configurations, the baseline
    imgs = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', html)
    assert len(imgs) >= 4
    assert not re.search(r'<(img|script|link)[^>]+(src|href)="https?:', html)  # nothing loaded from outside
    # the planted output is in the DOM as text; had it run, the title would be PWNED
    assert "window.__pwned=1" in html
    assert "<title>Report: demo</title>" in html and "PWNED</title>" not in html
    assert "<script" not in html.lower()

    shot = tmp_path / "report.png"
    res = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert res.returncode == 0, res.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a rendered page, not a blank one
