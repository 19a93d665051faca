"""The progress display of a command: live on a terminal (rich), plain lines elsewhere (harness/run/progress.py).

    with open_display("train", quiet=args.quiet):       # commands/train.py, commands/eval.py
        ...                                               # progress.current().begin / update / end

On a terminal (or with HARNESS_PROGRESS=1), one row per stage of a run:

    harness train   eta 3m12s   elapsed 12s   tiny-llama-lora-alpaca-tiny/20261121-233000-1a2b3c
    ✓ load                                                                                     2s
    ▸ train          ━━━━━━━━━━╸━━━━━━━━━━━━━━━━━  step 20/100   loss 1.234 tokens/s 2010   2m40s left
    · eval val                                                                                ~12s
    · eval wikitext2                                                                          ~30s

Lines printed while it runs (notes, warnings) appear above it. rich is imported only here, and only when the
display is live; the plain-line and file outputs (harness/run/progress.py) need none of it. The sweep driver's
display (harness/sweep/progress.py) draws with LiveView too.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

from harness.run.progress import MODE_ENV, NullSink, PlainSink, Progress, Stage, choose_mode, fmt_duration, fmt_info, use

MARKS = {"done": ("✓", "green"), "running": ("▸", "cyan"), "pending": ("·", "dim"), "skipped": ("-", "dim")}
BAR_WIDTH = 28


def make_console(force_terminal: bool = False):
    from rich.console import Console

    return Console(stderr=True, force_terminal=True if force_terminal else None)


class LiveView:
    """A rich Live region redrawn four times a second from `render()`; lines printed meanwhile go above it."""

    def __init__(self, render: Callable, console=None, force_terminal: bool = False):
        self.console = console if console is not None else make_console(force_terminal)
        self.render = render
        self.live = None

    def start(self) -> None:
        from rich.live import Live

        stdout_tty = bool(getattr(sys.stdout, "isatty", lambda: False)())
        # stdout is redirected above the display only when it is the terminal too (`harness train > log` keeps its lines)
        self.live = Live(get_renderable=self.render, console=self.console, refresh_per_second=4,
                         redirect_stdout=stdout_tty, redirect_stderr=True, transient=False)
        self.live.start()

    def print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.refresh()
            self.live.stop()
            self.live = None


def stage_cells(p: Progress, st: Stage, now: float, details: bool = True) -> dict:
    """The texts of one stage's row: mark, name, count (sub-step and done/total), numbers, time."""
    mark = MARKS[st.state][0]
    detail = st.shown_detail() if details and st.total else ""
    detail = detail if len(detail) <= 24 else detail[:23] + "…"
    count = " ".join(b for b in (detail, st.count()) if b) if st.state != "pending" else ""
    info = fmt_info(st.info) if st.state != "pending" else ""
    if st.stopped:
        when = f"{st.stopped} after {fmt_duration((st.ended or now) - (st.started or now))}"
    elif st.state == "done":
        when = fmt_duration((st.ended or now) - (st.started or now))
    elif st.state == "running":
        left = p.remaining(st, now)
        when = f"{fmt_duration(left)} left" if left is not None else fmt_duration(now - (st.started or now))
    elif st.state == "pending":
        est = p.remaining(st, now)
        when = f"~{fmt_duration(est)}" if est is not None else ""
    else:
        when = "skipped"
    return {"mark": mark, "name": st.name, "count": count, "info": info, "when": when}


def render_run(p: Progress, width: int = 120):
    """The display of one run: a header (command, ETA of the whole run, elapsed, run) and one row per stage:
    mark, stage, bar, count, numbers, time. Columns get fixed widths; on a narrow terminal the numbers give
    way first: a library's sub-step names go, then the numbers are cut (…) and the bar shortened."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.spinner import Spinner
    from rich.table import Table
    from rich.text import Text

    now = p.clock()
    with p.lock:
        head = Text.assemble((f"harness {p.command}", "bold"), f"   eta {p.eta_text()}",
                             f"   elapsed {fmt_duration(now - p.started)}   ", (p.title, "dim"))
        head.no_wrap, head.overflow = True, "ellipsis"
        stages = list(p.stages)
        for details in (True, False):  # sub-step names only where the numbers still fit beside them
            cells = [stage_cells(p, st, now, details) for st in stages]
            widths = {k: max([len(c[k]) for c in cells] + [1]) for k in ("name", "count", "when", "info")}
            bar_width = max(10, min(BAR_WIDTH, width - 70))
            info_width = width - 5 - 1 - widths["name"] - bar_width - widths["count"] - widths["when"]
            if info_width >= widths["info"]:
                break
    if info_width < 12:
        bar_width = max(6, bar_width - (12 - info_width))
        info_width = max(8, width - 5 - 1 - widths["name"] - bar_width - widths["count"] - widths["when"])
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=1, no_wrap=True)
    grid.add_column(width=widths["name"], no_wrap=True)
    grid.add_column(width=bar_width, no_wrap=True)
    grid.add_column(width=widths["count"], no_wrap=True, overflow="ellipsis")
    grid.add_column(width=info_width, no_wrap=True, overflow="ellipsis")
    grid.add_column(width=widths["when"], no_wrap=True, justify="right")
    for st, c in zip(stages, cells):
        running = st.state == "running"
        if running and st.total:
            bar = ProgressBar(total=float(st.total), completed=float(min(st.done, st.total)), width=bar_width)
        elif running:
            bar = Spinner("dots")
        else:
            bar = Text("")
        grid.add_row(Text(c["mark"], style=MARKS[st.state][1]),
                     Text(c["name"], style="bold" if running else "" if st.state == "done" else "dim"),
                     bar, Text(c["count"]), Text(c["info"]), Text(c["when"], style="" if running else "dim"))
    return Group(head, grid)


class RunLive(NullSink):
    """The sink of harness/run/progress.py that draws a run live."""

    def __init__(self, console=None, force_terminal: bool = False):
        self.view: LiveView | None = None
        self.console, self.force_terminal = console, force_terminal

    def start(self, p: Progress) -> None:
        self.view = LiveView(lambda: render_run(p, self.view.console.width), self.console, self.force_terminal)
        self.view.start()

    def note(self, p: Progress, text: str) -> None:
        if self.view is not None:
            self.view.print(f"[harness] {text}")

    def close(self, p: Progress) -> None:
        if self.view is not None:
            self.view.stop()


def forced() -> bool:
    """HARNESS_PROGRESS=1: the live display even when stderr is not a terminal."""
    return os.environ.get(MODE_ENV, "").strip().lower() in ("1", "rich", "live", "true")


def make_sink(mode: str, console=None):
    if mode == "rich":
        return RunLive(console=console, force_terminal=forced())
    return PlainSink() if mode == "plain" else NullSink()


@contextlib.contextmanager
def open_display(command: str, quiet: bool = False, mode: str | None = None, title: str = "", console=None):
    """The display of this process for one command (mode: choose_mode(); quiet: off); yields its Progress."""
    mode = mode or choose_mode(quiet)
    with use(Progress(make_sink(mode, console), command=command, title=title)) as p:
        yield p
