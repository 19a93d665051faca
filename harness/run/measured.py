"""Per-machine measurements kept between runs: what a one-time timing decided, so the next run reads it.

    key = measured.machine_key(cpu_identity(), torch.__version__, threads, shape=[...])
    timings, source, path = measured.cached("bf16cpu", key, ("stock_s", "patched_s"), measure, extra={...})
        # source "cache": read from $HARNESS_CACHE/bf16cpu/<key>.json; "measured": measure() ran and was stored there

Used by the training stage's measured choices (harness/train/bf16cpu.py: the bf16 matmul layout,
harness/train/attention.py: the attention kernel). A stored file that cannot be read or lacks a timing is treated
as missing: measured again, never trusted half.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def key(ident: dict) -> str:
    """Pure: sha256[:20] of the identity (sorted keys): CPU model and flags, torch version, threads, shape, ..."""
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def machine_key(cpu: dict, torch_version: str, threads: int, **fields) -> str:
    """Pure: key() of one measurement on this machine: CPU model name, family / model / stepping and flags
    (harness.run.environment.cpu_identity), torch version, threads, and what the measured work depends on
    (`fields`: shape, ...)."""
    return key({"cpu": cpu.get("cpu"), "model_id": cpu.get("model_id"), "flags": sorted(cpu.get("flags") or []),
                "torch": torch_version, "threads": threads, **fields})


def cached(kind: str, key_: str, timings: tuple[str, ...], measure, extra: dict) -> tuple[dict, str, str]:
    """The stored measurement of `key_` -> (it, "cache", its path), else measure() stored with `extra` beside it ->
    (it, "measured", its path)."""
    stored = read(kind, key_, timings)
    if stored is not None:
        return stored, "cache", str(cache_file(kind, key_))
    fresh = measure()
    return fresh, "measured", write(kind, key_, {**fresh, **extra})


def cache_file(kind: str, key_: str) -> Path:
    from harness import paths

    return paths.cache_root() / kind / f"{key_}.json"


def read(kind: str, key_: str, timings: tuple[str, ...]) -> dict | None:
    """The stored measurement, or None when it is missing, unreadable or lacks one of `timings` as a number."""
    try:
        data = json.loads(cache_file(kind, key_).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), (int, float)) for k in timings):
        return None
    return data


def write(kind: str, key_: str, data: dict) -> str:
    """Store a measurement atomically; returns its path."""
    from harness import atomic

    return str(atomic.write_json(cache_file(kind, key_), data))


def speedup(base: float, candidate: float, what: str) -> float:
    """Pure: base / candidate, two timings of the same work (any unit); an error names `what` unless both are
    positive."""
    if not (base > 0 and candidate > 0):
        raise ValueError(f"{what} timings must be positive, got {base!r} and {candidate!r}")
    return base / candidate
