"""The sweep driver's display: trials done / running / failed / pruned, and each running trial's stage, step and ETA.

    harness sweep sweeps/quickstart.yaml       # commands/sweep.py feeds SweepProgress the workers' events

Each trial is a child process that writes its run directory's progress.json (harness/run/progress.py); the driver
reads those files, so it needs nothing from the child but the files it writes anyway. On a terminal (or with
HARNESS_PROGRESS=1) a live display (harness/run/display.py) shows the counts and one row per running trial;
elsewhere each running trial gets a plain line at most every HARNESS_PROGRESS_INTERVAL seconds (default 10) on
stderr. Either way the trial start / finish lines of the study go to stdout as before.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from harness.run.progress import choose_mode, describe, fmt_duration, plain_interval, read_progress


def fmt_params(params: dict, seed: Any) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) + f" seed={seed}"


class SweepProgress:
    """Counts from the study (at start) and the workers' events; running trials from their progress.json."""

    def __init__(self, study: str, total: int | None, counts: dict, mode: str | None = None, console=None,
                 stream=None, interval: float | None = None):
        self.study, self.total = study, total
        self.complete, self.pruned, self.failed = counts.get("COMPLETE", 0), counts.get("PRUNED", 0), counts.get("FAIL", 0)
        self.running: dict[int, dict] = {}  # trial number -> its start event (+ "t0")
        self.walls: list[float] = []  # wall times of the trials that finished here
        self.t0 = time.time()
        self.mode = mode or choose_mode()
        self.stream = stream
        self.interval = plain_interval() if interval is None else interval
        self.lock = threading.RLock()
        self.view = None
        self._stop = threading.Event()
        self._shown: dict[int, tuple[float, str]] = {}  # trial -> (when, what) of its last plain line
        if self.mode == "rich":
            from harness.run.display import LiveView, forced

            self.view = LiveView(self.render, console=console, force_terminal=forced())
            self.view.start()
        elif self.mode == "plain":
            self._thread = threading.Thread(target=self._plain_loop, daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ events
    def __call__(self, ev: dict) -> None:
        kind, n = ev.get("event"), ev.get("trial")
        with self.lock:
            if kind == "start":
                line = f"[{self.study}] trial {n} start   {fmt_params(ev['params'], ev['seed'])}  -> {ev['run_dir']}"
                self.running[n] = {**ev, "t0": time.time()}
            elif kind == "finish":
                vals = " ".join(f"{k}={v:.4g}" for k, v in (ev.get("values") or {}).items())
                why = f"  ({ev['reason']})" if ev.get("reason") else ""
                line = (f"[{self.study}] trial {n} {ev['state']:<8} {ev['wall_time_s']:.1f}s  "
                        f"{fmt_params(ev['params'], ev['seed'])}  {vals}{why}")
                self.running.pop(n, None)
                self._shown.pop(n, None)
                state = ev.get("state")
                self.complete += state == "COMPLETE"
                self.pruned += state == "PRUNED"
                self.failed += state == "FAIL"
                if state in ("COMPLETE", "PRUNED", "FAIL") and isinstance(ev.get("wall_time_s"), (int, float)):
                    self.walls.append(float(ev["wall_time_s"]))
            elif kind == "output":
                line = f"[trial {n}] {ev['line']}"
            elif kind == "wait":
                line = f"[{self.study}] nothing queued; waiting for {ev['running']} running trial(s) (stale ones are retried)"
            elif kind == "note":
                line = f"[{self.study}] note: {ev['note']}"
            elif kind == "requeue":
                line = f"[{self.study}] trial {n} re-queued as trial {ev['new']}: {ev['why']}"
            else:
                line = f"[{self.study}] {ev}"
        self.write(line)
        if kind == "finish" and self.mode == "plain":
            self._say(self.counts_line())

    def write(self, line: str) -> None:
        """A line of the study's log (stdout; above the live display when stdout is the terminal)."""
        try:
            print(line, flush=True)
        except (BrokenPipeError, ValueError):
            pass

    def close(self) -> None:
        self._stop.set()
        if self.view is not None:
            self.view.stop()
            self.view = None

    # ------------------------------------------------------------------ reading
    @property
    def done(self) -> int:
        """Trials with a result: complete or pruned (a failed cell may run again)."""
        return self.complete + self.pruned

    def counts_line(self) -> str:
        of = f"/{self.total}" if self.total else ""
        eta = self.eta()
        return (f"sweep {self.study}: {self.done}{of} done ({self.complete} complete, {self.pruned} pruned), "
                f"{self.failed} failed, {len(self.running)} running" + (f", eta {fmt_duration(eta)}" if eta is not None else ""))

    def trial_status(self, n: int, now: float | None = None) -> str:
        """What a running trial is doing, from its progress.json: 'train step 20/100 loss 1.234 ... eta 3m12s'."""
        ev = self.running.get(n) or {}
        snap = read_progress(ev.get("run_dir", "")) if ev.get("run_dir") else None
        if snap is None or snap.get("finished") or snap.get("updated_at", 0) < ev.get("t0", 0) - 1:
            return f"starting ({fmt_duration((now or time.time()) - ev.get('t0', time.time()))})"  # no file of this attempt yet
        return describe(snap, now)

    def trial_eta(self, n: int) -> float | None:
        ev = self.running.get(n) or {}
        snap = read_progress(ev["run_dir"]) if ev.get("run_dir") else None
        if not snap or snap.get("eta_s") is None or snap.get("updated_at", 0) < ev.get("t0", 0) - 1:
            return None
        return max(float(snap["eta_s"]) - (time.time() - float(snap["updated_at"])), 0.0)

    def eta(self) -> float | None:
        """The study's: the running trials' longest ETA, then the trials left at the mean wall time of those that
        finished here, spread over as many workers as trials are running. None until one has finished."""
        if not self.total or not self.walls:
            return None
        with self.lock:
            running = list(self.running)
        etas = [e for e in (self.trial_eta(n) for n in running) if e is not None]
        left = max(self.total - self.done - len(running), 0)
        return max(etas, default=0.0) + left * (sum(self.walls) / len(self.walls)) / max(len(running), 1)

    # ------------------------------------------------------------------ output
    def _say(self, text: str) -> None:
        stream = self.stream or sys.stderr
        try:
            stream.write(f"[harness] {text}\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    def plain_tick(self, now: float | None = None) -> None:
        """One line per running trial whose progress changed, at most one per interval each."""
        now = time.time() if now is None else now
        with self.lock:
            running = sorted(self.running)
        for n in running:
            what = self.trial_status(n, now)
            last = self._shown.get(n)
            if last is not None and (now - last[0] < self.interval or last[1] == what):
                continue
            self._shown[n] = (now, what)
            ev = self.running.get(n) or {}
            self._say(f"sweep {self.study} trial {n} ({fmt_params(ev.get('params', {}), ev.get('seed'))}): {what}")

    def _plain_loop(self) -> None:
        while not self._stop.wait(min(max(self.interval, 0.5), 5.0)):
            self.plain_tick()

    def render(self):
        """The live display: the counts with a bar over the study, and one row per running trial."""
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        now = time.time()
        head = Table.grid(padding=(0, 1))
        head.add_row(Text(f"sweep {self.study}", style="bold"),
                     ProgressBar(total=float(self.total or max(self.done, 1)), completed=float(min(self.done, self.total or self.done)),
                                 width=28),
                     Text(self.counts_line().split(": ", 1)[1]), Text(f"elapsed {fmt_duration(now - self.t0)}", style="dim"))
        rows = Table.grid(padding=(0, 2))
        with self.lock:
            running = sorted(self.running)
        for n in running:
            ev = self.running.get(n) or {}
            rows.add_row(Text(f"  trial {n}", style="cyan"), Text(fmt_params(ev.get("params", {}), ev.get("seed"))),
                         Text(self.trial_status(n, now)))
        return Group(head, rows)
