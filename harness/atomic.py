"""Atomic writes for every result file: write to a temp file beside the target, fsync, rename.

A killed process leaves either the old file or the new one, never a truncated record.
Used by every stage that writes into a run directory, a study or a report.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


_MODE = 0o666 & ~_umask()  # what a plain open() would give: mkstemp's 0600 would hide results from others


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


DISK_ERRNOS = {28: "no space left", 30: "read-only file system", 122: "disk quota exceeded"}  # ENOSPC EROFS EDQUOT


def disk_problem(folder: str | Path, probe_bytes: int = 65536) -> str:
    """Why `folder` cannot take a small write ("" when it can): a full, read-only or over-quota file system. Tells a
    trial that failed because of the machine (nothing its config can fix) from one that failed on its own."""
    probe = Path(folder) / f".harness-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * probe_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return f"{folder}: {exc.strerror or DISK_ERRNOS.get(exc.errno, exc)}" if exc.errno in DISK_ERRNOS else ""
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return ""


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def _clean(obj: Any) -> Any:
    """JSON has no NaN/Infinity: store them as strings so the file stays standard JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(_clean(obj), indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one line. A line is written with a single write() call on an O_APPEND descriptor,
    so a crash can at worst leave a last partial line, which read_jsonl skips and reports."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(_clean(row), sort_keys=True, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    text = "".join(json.dumps(_clean(r), sort_keys=True, default=str) + "\n" for r in rows)
    return write_text(path, text)


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file; a truncated last line (from a killed writer) is skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1 or (i == len(lines) - 2 and lines[-1] == ""):
                continue  # partial last line of an interrupted append
            raise
    return rows


@contextmanager
def file_lock(lock_path: str | Path):
    """An exclusive advisory lock on lock_path (created if missing), held for the with-block:
    serialises processes that build the same cache entry or edit the same study."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
