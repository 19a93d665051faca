"""On-disk cache of prepared training data, shared by every trial and process of a machine.

A sweep trains the same data with the same tokenizer dozens of times; data.prepare (read, check, split,
tokenise, truncate or pack) runs once per distinct input and later trials load its result:

    $HARNESS_CACHE/data/<key>.json      key = sha256 of everything prepare's result depends on

The key covers the data config (data.split_seed included), max_length, packing, add_bos, the tokenizer (files,
special tokens, chat template), the data files (content hash; size and modification time above 64 MB) and the
source of every module of harness/data/, so editing a file, the tokenizer or the preparation code makes a new
entry. The training seed is not in it: the trials of a seed sweep share one entry. Hub data sets are not cached (no
local file to fingerprint; the datasets library caches them). Entries are written atomically; concurrent
misses both prepare and write the same content. `data.cache=false` turns it off for a run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from harness import atomic, paths
from harness import data as hdata
from harness.config import DataConfig, to_dict

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "chat_template.jinja")


_HASH_UP_TO = 64 * 2**20  # files up to this size are fingerprinted by content, larger ones by size and mtime


def _file_id(f: Path) -> list:
    st = f.stat()
    if st.st_size <= _HASH_UP_TO:
        return [st.st_size, hashlib.sha256(f.read_bytes()).hexdigest()]
    return [st.st_size, st.st_mtime_ns]


def _stat(p: Path) -> list:
    if p.is_dir():
        return [[str(f.relative_to(p)), *_file_id(f)] for f in sorted(x for x in p.rglob("*") if x.is_file())]
    return [[p.name, *_file_id(p)]]


def source_fingerprint(data: DataConfig) -> list | None:
    """A fingerprint of every local file the data config reads (data.path and line-aligned
    field files); None for a Hub data set or a missing path (not cacheable; prepare reports the error)."""
    p = paths.resolve_data_path(data.path) if data.path else None
    if p is None or not p.exists():
        return None
    out = [[str(p), _stat(p)]]
    for col in dict.fromkeys(c for v in data.fields.values() for c in v.split(",")):
        q = paths.resolve_data_path(col) if col else None
        if q is not None and q.is_file():
            out.append([str(q), _stat(q)])
    return out


def tokenizer_fingerprint(tokenizer) -> dict:
    where = Path(str(getattr(tokenizer, "name_or_path", "")))
    files = [[f, _stat(where / f)] for f in _TOKENIZER_FILES if (where / f).is_file()] if where.is_dir() else []
    return {"class": type(tokenizer).__name__, "name": str(where), "files": files, "size": len(tokenizer),
            "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id,
            "chat_template": hashlib.sha256(str(getattr(tokenizer, "chat_template", "") or "").encode()).hexdigest()}


def code_fingerprint() -> str:
    """sha256 of the source of every module of the data stage (harness/data/*.py)."""
    h = hashlib.sha256()
    for f in sorted(Path(hdata.__file__).parent.glob("*.py")):
        h.update(f"{f.name}\0".encode() + f.read_bytes())
    return h.hexdigest()


def cache_key(data: DataConfig, tokenizer, **params) -> str | None:
    """The entry's name, or None where the input cannot be fingerprinted."""
    source = source_fingerprint(data)
    if source is None:
        return None
    code = code_fingerprint()
    blob = json.dumps({"data": to_dict(data), "params": params, "source": source,
                       "tokenizer": tokenizer_fingerprint(tokenizer), "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cache_dir() -> Path:
    return paths.cache_root() / "data"


def prepare(data: DataConfig, tokenizer, *, max_length: int, packing: bool, add_bos: bool,
            use_cache: bool = True) -> hdata.Prepared:
    """data.prepare, through the cache. stats["cache"] says "hit", "miss" (prepared and stored) or "off"."""
    params = {"max_length": max_length, "packing": packing, "add_bos": add_bos}
    key = cache_key(data, tokenizer, **params) if use_cache else None
    entry = cache_dir() / f"{key}.json" if key else None
    if entry is not None and entry.is_file():
        try:
            blob = json.loads(entry.read_text(encoding="utf-8"))
            return hdata.Prepared(train=blob["train"], val=blob["val"], stats={**blob["stats"], "cache": "hit"})
        except (OSError, ValueError, KeyError):
            pass  # unreadable entry: prepare again and overwrite it
    prepared = hdata.prepare(data, tokenizer, **params)
    if entry is None:
        prepared.stats["cache"] = "off"
        return prepared
    blob = {"train": prepared.train, "val": prepared.val, "stats": prepared.stats}
    atomic.write_text(entry, json.dumps(blob, separators=(",", ":"), default=str))
    prepared.stats["cache"] = "miss"
    return prepared
