"""Processes that must not outlive the process that started them: Linux's PR_SET_PDEATHSIG.

    set_parent_death_signal(signal.SIGKILL)                 # this process dies with its parent, even a kill -9'd one
    set_parent_death_signal(signal.SIGKILL, parent=pid)     # ... and now, when `pid` is already gone

Used by a sweep worker's trial children (harness/sweep/worker.py), a warm trial forked from the fork server
(harness/sweep/warm.py), torchrun under the launcher (harness/launch.py) and each rank under torchrun
(harness/train/distributed.py): an orphan would otherwise train on into a run directory its retry is using.
"""

from __future__ import annotations

import os

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def set_parent_death_signal(sig: int, parent: int | None = None) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies. `parent`: the pid the caller expects as its
    parent; if that one died before the request took effect (the process was re-parented already), `sig` is sent at
    once. Returns False where the request cannot be made (not Linux with glibc): then nothing is sent."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        return False
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return True
