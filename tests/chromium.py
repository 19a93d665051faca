"""Headless Chromium driven over the DevTools protocol on a pipe (no websocket, no extra package): load a
page, run JavaScript in it, time the load. Used by tests/test_report_browser.py and
benchmarks/report_scale.py.

    with Browser(tmp_path) as b:
        timing = b.load(Path("reports/demo/report.html").resolve().as_uri())
        b.eval("document.title")

`--remote-debugging-pipe` makes Chromium read protocol commands from file descriptor 3 and write replies
and events to descriptor 4, each a JSON text ended by a NUL byte. Runtime.evaluate runs in the page
whatever its Content-Security-Policy says, so a test can click and read without changing the page.
Needs Debian's chromium (scripts/system-deps.sh installs it): CHROMIUM is None otherwise.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-extensions", "--mute-audio"]


class BrowserError(RuntimeError):
    """Chromium did not start, answered with an error, or a page script threw."""


class Browser:
    def __init__(self, tmp: Path, timeout: float = 120.0, width: int = 1280, height: int = 900):
        if CHROMIUM is None:
            raise BrowserError("chromium not installed (scripts/system-deps.sh)")
        self.timeout = timeout
        to_r, self._to_w = os.pipe()
        self._from_r, from_w = os.pipe()

        def wire():  # in the child: the protocol's descriptors 3 (commands) and 4 (replies)
            a, b = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={Path(tmp) / 'profile'}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=wire, pass_fds=(3, 4))
        os.close(to_r)
        os.close(from_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.enable", session=True)
        self.send("Runtime.enable", session=True)

    # ------------------------------------------------------------------------------- protocol
    def _read(self) -> dict:
        while b"\0" not in self._buf:
            chunk = os.read(self._from_r, 1 << 16)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else ""
                raise BrowserError(f"chromium closed the pipe: {err}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, session: bool = False, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise BrowserError(f"{method}: no reply in {self.timeout} s")

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for i, e in enumerate(self.events):
                if e.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read())
        raise BrowserError(f"no {method} in {self.timeout} s")

    # ---------------------------------------------------------------------------------- pages
    def load(self, url: str) -> dict:
        """Navigate and wait for the load event. Returns {wall_ms: from the navigate command to the load
        event, as seen from here; dom_ms / load_ms: the page's own navigation timing; ready_ms: the
        "report-ready" performance mark, when the page sets one}."""
        self.events.clear()
        t0 = time.perf_counter()
        self.send("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired")
        wall = (time.perf_counter() - t0) * 1000
        t = self.eval("(() => { const n = performance.getEntriesByType('navigation')[0];"
                      " const r = performance.getEntriesByName('report-ready')[0];"
                      " return {dom_ms: n.domContentLoadedEventEnd, load_ms: n.loadEventEnd, ready_ms: r ? r.startTime : null}; })()")
        return {"wall_ms": wall, **t}

    def eval(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-serialisable), awaiting a promise."""
        res = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise BrowserError(f"{expression[:80]}: {res['exceptionDetails'].get('exception', {}).get('description')}")
        return res.get("result", {}).get("value")

    def wait(self, condition: str, timeout_ms: int = 10_000):
        """Wait until a JavaScript expression is truthy in the page (polled every 10 ms); its value."""
        return self.eval(f"""new Promise((ok, fail) => {{ const t0 = performance.now(); (function poll() {{
            const v = ({condition}); if (v) return ok(v);
            if (performance.now() - t0 > {timeout_ms}) return fail(new Error('timed out waiting for: ' + {json.dumps(condition)}));
            setTimeout(poll, 10); }})(); }})""")

    def exceptions(self) -> list[str]:
        """Uncaught exceptions the page reported (Runtime.exceptionThrown) since the last load."""
        return [e["params"]["exceptionDetails"].get("exception", {}).get("description", "?")
                for e in self.events if e.get("method") == "Runtime.exceptionThrown"]

    def screenshot(self) -> bytes:
        import base64

        return base64.b64decode(self.send("Page.captureScreenshot", session=True, format="png")["data"])

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_w, self._from_r):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
