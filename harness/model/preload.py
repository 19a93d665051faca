"""What a warm fork server keeps loaded for the trials it forks next (harness/sweep/warm.py).

    tok = preload.take(hint)        # in a trial: the server's copy (forked with it), or None
    preload.loaded(hint)            # in a trial that loaded it itself: tell the server
    preload.keep(hint, load)        # in the server, once that trial has ended: load it for the next ones

A trial forked from the server that loads a tokenizer itself tells the server which one; once that trial has ended,
the server loads the same one with the same call, and each trial it forks afterwards takes it instead of reading and
parsing the files again (a SmolLM2 tokenizer: 0.13-0.20 s of every trial on the 2-core machine). A hint names a
local directory and what the load depends on besides its files (`hint`): nothing from remote code, nothing from a
Hub id. A kept object is taken at most once per process (a trial may change its tokenizer: pad token, padding
side), and only while the files of its directory are those it was loaded from (name, size, mtime, inode each).
Outside a warm child nothing is kept and nobody is told: `harness train` in a fresh process loads as before.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

KEEP_AT_MOST = 2  # kept objects in the server (least recently kept dropped first): a sweep's one or two models

_kept: dict[str, tuple[tuple, Any]] = {}  # hint key -> (fingerprint of its directory at load, object)
_tell_fd: int | None = None  # in a warm child: the pipe to its fork server (tell_server)
_taken: list[str] = []  # kinds this process took from the server (the run's manifest names them)
_told: set[str] = set()  # hint keys this process told its server already


def hint(kind: str, directory: str, **fields: Any) -> dict:
    """What a kept object is: its kind, the directory it is loaded from and the other arguments of its load."""
    return {"kind": kind, "path": str(directory), **fields}


def _key(h: dict) -> str:
    return json.dumps(h, sort_keys=True)


def fingerprint(directory: str) -> tuple | None:
    """(name, size, mtime, inode) of each file in `directory` and in its subdirectories one level down (a
    tokenizer's additional_chat_templates/), sorted; None if it cannot be read."""
    stats = []
    try:
        with os.scandir(directory) as it:
            for e in it:
                if e.is_file():
                    stats.append((e.name, e.stat()))
                elif e.is_dir():
                    with os.scandir(e.path) as sub:
                        stats += [(f"{e.name}/{f.name}", f.stat()) for f in sub if f.is_file()]
    except OSError:
        return None
    return tuple(sorted((name, s.st_size, s.st_mtime_ns, s.st_ino) for name, s in stats))


def take(h: dict) -> Any | None:
    """The object the server kept for hint `h`, if its files are unchanged; at most once per process."""
    entry = _kept.pop(_key(h), None)
    if entry is None or entry[0] != fingerprint(h["path"]):  # keep() stores no entry without a fingerprint
        return None
    _taken.append(h["kind"])
    return entry[1]


def taken() -> list[str]:
    """The kinds of object this process took from its fork server (empty outside a warm trial)."""
    return list(_taken)


def keep(h: dict, load: Callable[[], Any]) -> bool:
    """In the server: load(), kept for hint `h` (nothing again if it is kept with the same files). False when its
    directory cannot be read: nothing is kept."""
    fp = fingerprint(h["path"])
    if fp is None:
        return False
    key = _key(h)
    if key in _kept and _kept[key][0] == fp:
        _kept[key] = _kept.pop(key)  # the most recently kept goes last
        return True
    _kept.pop(key, None)
    _kept[key] = (fp, load())
    while len(_kept) > KEEP_AT_MOST:
        _kept.pop(next(iter(_kept)))
    return True


def tell_server(fd: int | None) -> None:
    """In a warm child (harness/sweep/warm.py become_trial): where `loaded` writes; None stops it (closing fd)."""
    global _tell_fd
    if fd is None and _tell_fd is not None:
        try:
            os.close(_tell_fd)
        except OSError:
            pass
    _tell_fd = fd


def loaded(h: dict) -> None:
    """This process loaded what `h` names itself: its fork server (if any) keeps one for the next trials (told once
    per process)."""
    if _tell_fd is None or _key(h) in _told:
        return
    _told.add(_key(h))
    try:
        os.write(_tell_fd, (json.dumps(h) + "\n").encode())
    except OSError:  # the server is gone: the next trial loads it itself
        pass
