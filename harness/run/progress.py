"""One progress display per process, for `harness train`, `harness eval` and each sweep trial.

    with display.open_display("train"):             # commands/train.py, eval.py (harness/run/display.py)
        progress.current().plan([...])              # pipeline.py: load, train, one stage per eval suite
        progress.current().begin("train", total=100, unit="step")
        progress.current().update(done=20, loss=1.234, tokens_per_s=2010)

A run is a list of stages (load, train, eval <suite>, ...). Each has work done / total, a few numbers (loss,
tokens/s), and, for an eval suite that has not run yet, an estimated cost in forward tokens (its suite kind's
`cost`, harness/eval/registry.py). The ETA is for the whole run: the running stage from its own rate, the
eval suites still to come from their cost at the rate measured so far (3x the training tokens/s before any
suite ran, then the seconds per cost token of the suites that finished).

Where it goes, by mode (choose_mode): `rich` a live display on a terminal (stderr); `plain` one line per event
on stderr ("[harness] train step 20/100 loss 1.234 tokens/s 2010 eta 3m12s"), at most one update line per
HARNESS_PROGRESS_INTERVAL seconds (default 10) plus every stage change; `off` nothing. HARNESS_PROGRESS=1
(or rich) forces the live display, plain forces lines, 0 turns it off; default: live on a terminal, else plain.
A run with a run directory also writes <run_dir>/progress.json (atomically, every few seconds and at each
stage change): `harness status` and the sweep driver read it (read_progress, describe).

`bar(...)` is a tqdm stand-in: while a display is active it reports to the running stage, else it is tqdm.
No heavy imports here; rich is imported only by the live display (harness/run/display.py, which also
opens the display of a command: `with display.open_display("train"): ...`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from harness import atomic

MODE_ENV = "HARNESS_PROGRESS"  # 1|rich: live display even off a terminal; plain: lines; 0|off: nothing
OFF = ("0", "off", "none", "false")
INTERVAL_ENV = "HARNESS_PROGRESS_INTERVAL"  # seconds between plain update lines (stage changes always print)
PROGRESS_FILE = "progress.json"
FILE_EVERY_S = 2.0  # progress.json is rewritten at most this often (and at every stage change)
FORWARD_SPEEDUP = 3.0  # a forward pass costs about a third of a training step (forward + backward)


# ---------------------------------------------------------------------------------- formatting
def fmt_duration(seconds: float | None) -> str:
    """45s, 3m12s, 1h05m; '?' when unknown."""
    if seconds is None:
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fmt_number(v: Any) -> str:
    """A number as a number: 1.234, 2010, 0.0002 (never a quoted string, never thousands separators)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or (abs(v) >= 100 and float(v).is_integer()) or abs(v) >= 1000:
        return f"{v:.0f}"
    return f"{v:.4g}"


INFO_ORDER = ("loss", "loss_mean", "val_loss", "tokens_per_s", "lr")
INFO_LABEL = {"tokens_per_s": "tokens/s"}


def fmt_info(info: dict) -> str:
    keys = [k for k in INFO_ORDER if k in info] + sorted(k for k in info if k not in INFO_ORDER)
    return " ".join(f"{INFO_LABEL.get(k, k)} {fmt_number(info[k])}" for k in keys if info[k] is not None)


# ---------------------------------------------------------------------------------- the model
@dataclass
class Stage:
    name: str
    unit: str = ""
    total: float | None = None
    done: float = 0
    cost: float | None = None  # estimated forward tokens (eval suites): the ETA before it runs
    detail: str = ""  # what a sub-step is doing (a library's bar description)
    info: dict = field(default_factory=dict)  # loss, tokens_per_s, val_loss ...
    started: float | None = None
    ended: float | None = None
    skipped: bool = False
    stopped: str = ""  # why it ended early (the run's status: failed, diverged, pruned, interrupted ...)
    first: tuple[float, float] | None = None  # (time, done) at the first update: the rate excludes start-up

    @property
    def state(self) -> str:
        return "skipped" if self.skipped else "done" if self.ended else "running" if self.started else "pending"

    def shown_detail(self) -> str:
        """The sub-step, unless the stage's name says it already (the `val` bar of stage `eval val`)."""
        return "" if not self.detail or self.detail in self.name else self.detail

    def count(self) -> str:
        if self.total:
            return f"{self.unit + ' ' if self.unit else ''}{fmt_number(self.done)}/{fmt_number(self.total)}"
        return f"{self.unit} {fmt_number(self.done)}" if self.done else ""


class Progress:
    """The stages of one run and where they stand; tells its sink (null, plain lines, live) about changes."""

    def __init__(self, sink=None, command: str = "", title: str = "", clock=time.time):
        self.sink = sink if sink is not None else NullSink()
        self.command, self.title, self.clock = command, title, clock
        self.stages: list[Stage] = []
        self.current: Stage | None = None
        self.started = clock()
        self.lock = threading.RLock()
        self.file: Path | None = None
        self._file_at = 0.0
        self.closed = False

    # ------------------------------------------------------------------ changes
    def plan(self, stages: Iterable[tuple[str, str, float | None, float | None]]) -> None:
        """Stages still to come: (name, unit, total, cost). Planned stages that exist keep their state."""
        with self.lock:
            for name, unit, total, cost in stages:
                st = self._find(name)
                if st is None:
                    self.stages.append(Stage(name, unit=unit, total=total, cost=cost))
                elif st.state == "pending":
                    st.unit, st.total, st.cost = unit or st.unit, total or st.total, cost or st.cost
        self._changed(stage_change=True)

    def begin(self, name: str, total: float | None = None, unit: str = "", **info) -> Stage:
        """Start stage `name` (ending the running one; planned stages before it that never ran are skipped)."""
        ended = None
        with self.lock:
            if self.current is not None and self.current.name != name:
                ended = self._end_locked()
            st = self._find(name)
            if st is None or st.state in ("done", "skipped"):
                st = Stage(name)
                pos = self._insert_position()
                self.stages.insert(pos, st)
            for earlier in self.stages[: self.stages.index(st)]:
                if earlier.state == "pending":
                    earlier.skipped = True
            if st.started is None:
                st.started = self.clock()
            st.total = total if total is not None else st.total
            st.unit = unit or st.unit
            st.info.update(info)
            self.current = st
        if ended is not None:  # sinks are told outside the lock: a live display's redraw takes it too
            self.sink.stage_end(self, ended)
        self.sink.stage_begin(self, st)
        self._changed(stage_change=True)
        return st

    def update(self, done: float | None = None, advance: float = 0, total: float | None = None,
               log: bool = True, **info) -> None:
        """Progress of the running stage. log=False: a live display redraws, plain lines wait for a log point."""
        with self.lock:
            st = self.current
            if st is None:
                return
            if total is not None:
                st.total = total
            st.done = done if done is not None else st.done + advance
            st.info.update({k: v for k, v in info.items() if v is not None})
            now = self.clock()
            if st.first is None or st.done < st.first[1]:
                st.first = (now, st.done)
        self.sink.update(self, st, log)
        self._changed()

    def sub(self, detail: str, total: float | None, unit: str = "") -> tuple | None:
        """A new sub-step of the running stage (a library's progress bar): its own total, counted from 0.
        With no stage running, it is a stage of its own. Returns what the stage showed before, for sub_end."""
        if self.current is None:
            self.begin(detail or "working", total=total, unit=unit)
            return None
        with self.lock:
            st = self.current
            if st is None:
                return None
            before = (st, st.detail, st.total, st.done, st.first, st.unit)
            st.detail, st.total, st.done, st.first = detail, total, 0, None
            st.unit = unit or st.unit
        self._changed()
        return before

    def sub_end(self, before: tuple | None) -> None:
        """A sub-step is over: its stage, if still running, shows what it showed before (a validation pass inside
        `train` must not leave the train stage at "step 12/1")."""
        if before is None:
            return
        st, *shown = before
        with self.lock:
            if self.current is not st:
                return
            st.detail, st.total, st.done, st.first, st.unit = shown
        self._changed()

    def end(self, name: str | None = None, skipped: bool = False, **info) -> None:
        """End the running stage (or only if it is `name`); skipped: it ended without a result."""
        with self.lock:
            if self.current is None or (name is not None and self.current.name != name):
                return
            self.current.info.update({k: v for k, v in info.items() if v is not None})
            st = self._end_locked()
            st.skipped = skipped
        self.sink.stage_end(self, st)
        self._changed(stage_change=True)

    def finish(self, status: str) -> None:
        """The run ended with `status`: the running stage ends (stopped, unless completed); planned ones are skipped."""
        with self.lock:
            st = self._end_locked() if self.current is not None else None
            if st is not None and status not in ("completed", "baseline"):
                st.stopped = status
            for s in self.stages:
                s.skipped = s.skipped or s.state == "pending"
        if st is not None:
            self.sink.stage_end(self, st)
        self._changed(stage_change=True)

    def note(self, text: str) -> None:
        """A line of its own (plain: printed; live: printed above the display)."""
        self.sink.note(self, text)

    def close(self, status: str = "completed") -> None:
        """The command is over (status "stopped": by an exception, e.g. Ctrl-C): no stage runs any more."""
        with self.lock:
            if self.closed:
                return
            ended = self._end_locked() if self.current is not None else None
            if ended is not None and status != "completed":
                ended.stopped = status
            for st in self.stages:  # planned but never reached (a failed or diverged run): not coming
                st.skipped = st.skipped or st.state == "pending"
            self.closed = True
        if ended is not None:
            self.sink.stage_end(self, ended)
        self._changed(stage_change=True)
        self.sink.close(self)

    def attach(self, run_dir: str | Path) -> None:
        """Write <run_dir>/progress.json from now on."""
        self.file = Path(run_dir) / PROGRESS_FILE
        self.save()

    def save(self) -> None:
        """Write progress.json now (it is otherwise rewritten at most every FILE_EVERY_S, and at stage changes)."""
        self._changed(stage_change=True)

    # ------------------------------------------------------------------ reading
    def remaining(self, st: Stage, now: float | None = None) -> float | None:
        """Seconds left in one stage; None when there is nothing to estimate it from yet."""
        now = self.clock() if now is None else now
        if st.state in ("done", "skipped"):
            return 0.0
        if st.state == "running" and st.total and st.first is not None and st.done > st.first[1]:
            rate = (now - st.first[0]) / (st.done - st.first[1])
            return max(st.total - st.done, 0) * rate
        est = self.estimate(st)
        if st.state == "running" and est is not None:
            return max(est - (now - st.started), 0.0)
        return est

    def estimate(self, st: Stage) -> float | None:
        """A stage's duration before it runs: its cost at the measured seconds per cost token."""
        if st.cost is None:
            return None
        rate = self.seconds_per_cost()
        return st.cost * rate if rate is not None else None

    def seconds_per_cost(self) -> float | None:
        """Measured: from the suites that finished (their token counts where they counted tokens, else their
        cost), else the running one's progress, else the training speed."""
        with self.lock:
            done = [s for s in self.stages if s.state == "done" and s.cost and s.started and s.ended]
            if done:
                measured = [s.total if s.unit == "tok" and s.total else s.cost for s in done]
                return sum(s.ended - s.started for s in done) / sum(measured)
            cur = self.current
            if cur is not None and cur.cost and cur.total and cur.first is not None and cur.done > cur.first[1]:
                elapsed = self.clock() - cur.started
                return elapsed / cur.done if cur.unit == "tok" else elapsed / (cur.done / cur.total) / cur.cost
            train = self._find("train")
            tps = train.info.get("tokens_per_s") if train is not None else None
            return 1.0 / (FORWARD_SPEEDUP * tps) if tps else None

    def eta(self) -> tuple[float | None, bool]:
        """(seconds left in the whole run, whether every stage could be estimated)."""
        now = self.clock()
        with self.lock:
            parts = [self.remaining(s, now) for s in self.stages if s.state in ("running", "pending")]
        known = [p for p in parts if p is not None]
        if not known:
            return (None if parts else 0.0), not parts
        return sum(known), len(known) == len(parts)

    def eta_text(self) -> str:
        seconds, complete = self.eta()
        return fmt_duration(seconds) if complete or seconds is None else ">" + fmt_duration(seconds)

    def snapshot(self) -> dict:
        """What progress.json holds: the running stage, its numbers, the ETA, and every stage's state."""
        now = self.clock()
        seconds, complete = self.eta()
        with self.lock:
            st = self.current
            return {
                "pid": os.getpid(), "updated_at": now, "started_at": self.started, "elapsed_s": now - self.started,
                "command": self.command, "title": self.title, "finished": self.closed,
                "stage": st.name if st else "", "unit": st.unit if st else "", "done": st.done if st else None,
                "total": st.total if st else None, "detail": st.detail if st else "",
                "info": dict(st.info) if st else {}, "eta_s": seconds, "eta_complete": complete,
                "stages": [{"name": s.name, "state": s.state, "seconds": (s.ended or now) - s.started if s.started else None,
                            "estimate_s": self.remaining(s, now) if s.state == "pending" else None} for s in self.stages],
            }

    # ------------------------------------------------------------------ internals
    def _find(self, name: str) -> Stage | None:
        return next((s for s in reversed(self.stages) if s.name == name), None)

    def _insert_position(self) -> int:
        """A stage nobody planned goes after the running one (or after the last that ran)."""
        ran = [i for i, s in enumerate(self.stages) if s.started]
        return (ran[-1] + 1) if ran else 0

    def _end_locked(self) -> Stage:
        st = self.current
        st.ended = self.clock()
        self.current = None
        return st

    def _changed(self, stage_change: bool = False) -> None:
        if self.file is None:
            return
        now = time.monotonic()
        if not stage_change and now - self._file_at < FILE_EVERY_S:
            return
        self._file_at = now
        try:
            atomic.write_json(self.file, self.snapshot())
        except OSError:  # the display never fails a run
            pass


# ------------------------------------------------------------------------------------- sinks
class NullSink:
    def start(self, p: Progress) -> None: ...
    def stage_begin(self, p: Progress, st: Stage) -> None: ...
    def stage_end(self, p: Progress, st: Stage) -> None: ...
    def update(self, p: Progress, st: Stage, log: bool) -> None: ...
    def note(self, p: Progress, text: str) -> None: ...
    def close(self, p: Progress) -> None: ...


def plain_interval() -> float:
    try:
        return float(os.environ.get(INTERVAL_ENV, "10"))
    except ValueError:
        return 10.0


class PlainSink(NullSink):
    """One line per event on a stream: every stage change, and update lines at log points, at most one per
    `interval` seconds (counted from the stage's start)."""

    def __init__(self, stream=None, interval: float | None = None, clock=time.monotonic):
        self.stream, self.clock = stream, clock
        self.interval = plain_interval() if interval is None else interval
        self.last_line = clock()
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        stream = self.stream or sys.stderr
        with self.lock:
            try:
                stream.write(f"[harness] {text}\n")
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing to tell
                pass

    def stage_begin(self, p: Progress, st: Stage) -> None:
        bits = [st.name, "start"]
        if st.total:
            bits.append(f"{fmt_number(st.total)} {st.unit}s" if st.unit else fmt_number(st.total))
        self.write(" ".join(bits) + f" eta {p.eta_text()}")
        self.last_line = self.clock()  # the first update line of a stage comes `interval` after its start

    def update(self, p: Progress, st: Stage, log: bool) -> None:
        now = self.clock()
        if not log or now - self.last_line < self.interval:
            return
        self.last_line = now
        self.write(" ".join(b for b in (st.name, st.shown_detail(), st.count(), fmt_info(st.info), f"eta {p.eta_text()}")
                            if b))

    def stage_end(self, p: Progress, st: Stage) -> None:
        took = fmt_duration((st.ended or p.clock()) - (st.started or p.clock()))
        word = "skipped" if st.skipped else st.stopped or "done"
        self.write(" ".join(b for b in (st.name, word, st.count(), fmt_info(st.info), f"time {took}") if b))

    def note(self, p: Progress, text: str) -> None:
        self.write(text)


# --------------------------------------------------------------------------------- the display
_CURRENT: Progress | None = None


def current() -> Progress:
    """The display of this process (a silent, throwaway stand-in when none is active: library use, tests)."""
    return _CURRENT if _CURRENT is not None else Progress()


def active() -> bool:
    return _CURRENT is not None and not _CURRENT.closed


def child_mode() -> str:
    """HARNESS_PROGRESS for a child whose output goes to a log file (a sweep's trial): lines, or nothing if off."""
    return "0" if os.environ.get(MODE_ENV, "").strip().lower() in OFF else "plain"


def choose_mode(quiet: bool = False, stream=None) -> str:
    """rich | plain | off, from --quiet, HARNESS_PROGRESS and whether stderr is a terminal."""
    env = os.environ.get(MODE_ENV, "").strip().lower()
    if quiet or env in OFF:
        return "off"
    if env == "plain":
        return "plain"
    if env in ("1", "rich", "live", "true"):
        return "rich"
    stream = stream or sys.stderr
    try:
        return "rich" if stream.isatty() else "plain"
    except (AttributeError, ValueError):
        return "plain"


@contextlib.contextmanager
def use(p: Progress):
    """Make `p` the display of this process for the with-block; closed on the way out."""
    global _CURRENT
    previous = _CURRENT
    status = "completed"
    try:
        p.sink.start(p)
        _CURRENT = p
        yield p
    except BaseException:
        status = "stopped"
        raise
    finally:
        p.close(status)
        _CURRENT = previous


# ------------------------------------------------------------------------------------ tqdm stand-in
class Bar:
    """What a library's tqdm bar becomes while a display is active: a sub-step of the running stage."""

    def __init__(self, iterable=None, desc: str | None = None, total: float | None = None, unit: str = "it",
                 disable: bool = False, **_ignored):
        self.iterable, self.disable, self.n = iterable, disable, 0
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total = total
        self._before = None if disable else current().sub(desc or "", total, unit if unit != "it" else "")

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()  # as tqdm: an exhausted bar closes itself

    def __len__(self) -> int:
        return int(self.total or 0)

    def update(self, n: float = 1) -> None:
        self.n += n
        if not self.disable:
            current().update(done=self.n)

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        before, self._before = self._before, None
        current().sub_end(before)

    def refresh(self, *a, **k) -> None: ...
    def set_description(self, *a, **k) -> None: ...
    def set_postfix(self, *a, **k) -> None: ...
    def set_postfix_str(self, *a, **k) -> None: ...

    @staticmethod
    def write(text: str, *a, **k) -> None:
        current().note(str(text))


def bar(iterable=None, desc: str | None = None, total: float | None = None, unit: str = "it", disable: bool = False,
        **kwargs):
    """tqdm while no display is active (library use), else a Bar that reports to the running stage."""
    if active():
        return Bar(iterable, desc=desc, total=total, unit=unit, disable=disable, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, **kwargs)


def tqdm_hook(factory, args: tuple, kwargs: dict):
    """For transformers.utils.logging.set_tqdm_hook: its bars (Loading weights ...) go to the display."""
    return Bar(*args, **kwargs) if active() else factory(*args, **kwargs)


@contextlib.contextmanager
def tqdm_through_display(modules: Iterable[Any]):
    """While a display is active, each module's own `tqdm` name (`from tqdm import tqdm`) is Bar; put back after."""
    saved = [(m, m.tqdm) for m in modules if hasattr(m, "tqdm")] if active() else []
    try:
        for m, _ in saved:
            m.tqdm = Bar
        yield
    finally:
        for m, original in saved:
            m.tqdm = original


# ------------------------------------------------------------------------------------ reading it back
def read_progress(run_dir: str | Path) -> dict | None:
    """A run's progress.json, or None (absent, or half a file from an older writer)."""
    try:
        data = atomic.read_json(Path(run_dir) / PROGRESS_FILE)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe(snap: dict, now: float | None = None) -> str:
    """One line from a progress.json: 'train step 20/100 loss 1.234 tokens/s 2010 eta 3m12s (updated 2s ago)'.
    The ETA counts down from when the file was written."""
    now = time.time() if now is None else now
    age = max(now - float(snap.get("updated_at") or now), 0.0)
    if snap.get("finished"):
        return f"finished ({fmt_duration(age)} ago)"
    st = Stage(snap.get("stage") or "starting", unit=snap.get("unit") or "", total=snap.get("total"),
               done=snap.get("done") or 0, detail=snap.get("detail") or "", info=snap.get("info") or {})
    eta = snap.get("eta_s")
    eta_text = "?" if eta is None else ("" if snap.get("eta_complete", True) else ">") + fmt_duration(max(eta - age, 0.0))
    line = " ".join(b for b in (st.name, st.count(), fmt_info(st.info), f"eta {eta_text}") if b)
    return line + (f" (updated {fmt_duration(age)} ago)" if age >= 30 else "")
