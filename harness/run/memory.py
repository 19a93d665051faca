"""Process memory: reuse freed memory instead of faulting fresh pages in again (glibc malloc on Linux).

    harness train ... / harness eval ...      # keep_freed_memory() runs first (harness/cli.py), also in warm trials
    HARNESS_MALLOC=default harness train ...  # glibc's own behaviour

glibc serves every block above its mmap threshold (128 KiB at start, rising to at most 32 MiB) with a mapping of
its own and unmaps it on free, so the next block of that size takes a page fault for each 4 KiB page again. A
training step frees and re-allocates about 1 GB of activations, logits and autocast's weight copies (SmolLM2-135M,
full fine-tune, 2 x 128 tokens: 190-340 K faults per step), and on these virtual machines a fault costs 1-30 us of
kernel time. keep_freed_memory() sets M_MMAP_MAX to 0 (every block comes from the heap) and M_TRIM_THRESHOLD to
-1, which glibc takes as SIZE_MAX (the heap is never shrunk when a block is freed), so freed blocks are reused:
on an AMX Xeon, that step's
forward + backward went from 0.66-1.54 s to 0.56 s once the heap had grown (no faults left), and a `train=quick`
full fine-tune trained in 22 s instead of 26 s (the same two settings through GLIBC_TUNABLES). The price: a
process keeps its peak heap until it exits (these are one-run processes) and its peak RSS grew by 3-18% in the
training runs measured (docs/benchmarks.md, "Page faults"), except where it hands the heap back on purpose:
give_back_freed_memory() after training (harness/train/fit.py drop_training_state), so that writing the trained
weights reuses the optimizer's pages instead of faulting 0.5 GB of page cache in.

The threshold was 2 GiB (INT_MAX, the largest positive value mallopt takes) until 2026-12-04: at the default
training shape (8 x 512 tokens) a full fine-tune of SmolLM2-135M frees more than that at the end of every step, so
the heap was trimmed and the next step faulted it in again: 3.6-4.4 M faults and 14.3-19.6 s a step against
2.4-2.7 M and 12.7-15.7 s (median 17.9 -> 14.2 s, 1.26x) with the heap kept whole, peak RSS 10.0-10.4 GB
against 9.7-10.6 GB (Zen 4, 2 threads, bf16; docs/benchmarks.md, "Page faults").

The setting is process state, so it is recorded with the run (manifest.json `malloc`) and a warm trial
(harness/sweep/warm.py) applies it exactly as a cold one does.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV = "HARNESS_MALLOC"  # keep (default) | default: glibc's own thresholds
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc <malloc.h>
TRIM_THRESHOLD = -1  # mallopt takes an int; glibc stores it as a size_t, so -1 is SIZE_MAX: never trimmed on free

_state: dict = {"malloc": "default", "reason": "not set up yet (keep_freed_memory was not called)"}


def keep_freed_memory() -> dict:
    """Make glibc reuse freed blocks (module docstring); idempotent. Returns what was done, for the run record."""
    global _state
    if _state.get("malloc") == "keep":
        return dict(_state)
    if os.environ.get(ENV, "keep").strip().lower() in ("default", "0", "off", "no", "false"):
        _state = {"malloc": "default", "reason": f"{ENV}={os.environ[ENV]}"}
    elif not sys.platform.startswith("linux"):
        _state = {"malloc": "default", "reason": f"not Linux ({sys.platform}): the system allocator as it is"}
    else:
        _state = _mallopt()
    return dict(_state)


def _glibc(name: str, argtypes: list, restype):
    """glibc's function `name` with its C signature; OSError or AttributeError on musl and other C libraries."""
    fn = getattr(ctypes.CDLL("libc.so.6"), name)  # glibc's name, as harness/launch.py loads it; absent on musl
    fn.argtypes, fn.restype = argtypes, restype
    return fn


def _mallopt() -> dict:
    try:
        mallopt = _glibc("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)
    except (OSError, AttributeError) as exc:  # musl and other C libraries without glibc's mallopt
        return {"malloc": "default", "reason": f"no glibc mallopt ({exc})"}
    if not (mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return {"malloc": "default", "reason": "glibc refused mallopt(M_MMAP_MAX / M_TRIM_THRESHOLD)"}
    return {"malloc": "keep", "mmap_max": 0, "trim_threshold": TRIM_THRESHOLD}


def give_back_freed_memory() -> bool:
    """Return the heap's free pages to the kernel now (glibc malloc_trim(0)); True when it gave any back. For the
    moment a process stops needing a large part of its peak (a trained model's optimizer state and gradients):
    the kernel then reuses those pages for what comes next (the page cache of the weights being written) instead
    of faulting fresh ones in, which on these virtual machines costs about 1.5 s per 0.5 GB (free page reporting
    returns a page the guest has not used for ~2 s to the host). A no-op without glibc."""
    if _state.get("malloc") != "keep":
        return False
    try:
        trim = _glibc("malloc_trim", [ctypes.c_size_t], ctypes.c_int)
    except (OSError, AttributeError):
        return False
    return bool(trim(0))


def record() -> dict:
    """This process's allocator setting (manifest.json `malloc`)."""
    return dict(_state)
