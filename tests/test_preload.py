"""Tests for what a warm fork server keeps loaded for its next trials (harness/model/preload.py) and for the
tokenizer load that uses it (harness/model/load.py load_tokenizer). The fork server's side runs in
tests/test_sweep_warm.py (a second warm trial takes the tokenizer the first one loaded)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from harness.config import ModelConfig
from harness.model import preload
from harness.model.load import keep_tokenizer, load_tokenizer, tokenizer_hint


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch):
    """Each test starts as a fresh process: nothing kept, nothing taken, nobody told."""
    monkeypatch.setattr(preload, "_kept", {})
    monkeypatch.setattr(preload, "_taken", [])
    monkeypatch.setattr(preload, "_tell_fd", None)
    monkeypatch.setattr(preload, "_told", set())


def _dir(tmp_path, name="m", files=("a.json", "b.txt")):
    d = tmp_path / name
    d.mkdir()
    for f in files:
        (d / f).write_text(f)
    return d


def test_a_kept_object_is_taken_once_and_only_with_its_arguments(tmp_path):
    d = _dir(tmp_path)
    h = preload.hint("tokenizer", str(d), revision=None)
    obj = object()
    assert preload.keep(h, lambda: obj)
    assert preload.take(preload.hint("tokenizer", str(d), revision="v2")) is None  # other arguments: not this one
    assert preload.take(h) is obj and preload.taken() == ["tokenizer"]
    assert preload.take(h) is None  # at most once per process: the trial may have changed it


def test_a_changed_added_or_removed_file_discards_the_kept_object(tmp_path):
    d = _dir(tmp_path)
    h = preload.hint("tokenizer", str(d))
    (d / "additional_chat_templates").mkdir()
    (d / "additional_chat_templates" / "tool.jinja").write_text("{{ messages }}")
    for change in (lambda: (d / "a.json").write_text("other content"), lambda: (d / "c.json").write_text("{}"),
                   lambda: (d / "b.txt").unlink(),
                   lambda: (d / "additional_chat_templates" / "tool.jinja").write_text("{{ messages[0] }}")):
        assert preload.keep(h, object)
        change()
        assert preload.take(h) is None
    assert preload.taken() == []


def test_keep_loads_once_per_unchanged_directory_and_holds_at_most_a_few(tmp_path):
    calls = []
    dirs = [_dir(tmp_path, f"m{i}") for i in range(preload.KEEP_AT_MOST + 1)]
    hints = [preload.hint("tokenizer", str(d)) for d in dirs]
    assert preload.keep(hints[0], lambda: calls.append(0) or "zero")
    assert preload.keep(hints[0], lambda: calls.append(1) or "again")  # kept already, same files: no load
    assert calls == [0]
    for i, h in enumerate(hints[1:], start=1):
        preload.keep(h, lambda i=i: f"obj{i}")
    assert len(preload._kept) == preload.KEEP_AT_MOST and preload.take(hints[0]) is None  # the oldest went
    assert preload.take(hints[-1]) == f"obj{len(hints) - 1}"
    assert not preload.keep(preload.hint("tokenizer", str(tmp_path / "missing")), lambda: 1 / 0)  # nothing to read


def test_loaded_tells_the_server_one_json_line_and_nothing_without_one(tmp_path):
    h = preload.hint("tokenizer", str(tmp_path), revision=None)
    preload.loaded(h)  # no server: nothing happens
    r, w = os.pipe()
    preload.tell_server(w)
    preload.loaded(h)
    preload.loaded(h)  # told once per process
    preload.tell_server(None)  # closes the write end: the server sees the end of what it was told
    with os.fdopen(r, "rb") as f:
        assert [json.loads(line) for line in f.read().splitlines()] == [h]
    preload.loaded(h)  # told nobody again, and no error
    r, w = os.pipe()
    os.close(r)
    preload.tell_server(w)
    preload.loaded(preload.hint("tokenizer", str(tmp_path), revision="v2"))  # the server is gone: no error
    preload.tell_server(None)


def test_load_tokenizer_takes_the_kept_tokenizer_which_encodes_as_a_fresh_one(tmp_path, byo_model_dir):
    model_dir = tmp_path / "model"
    shutil.copytree(byo_model_dir, model_dir)
    cfg = ModelConfig(name="byo", source="hub", path=str(model_dir))
    h = tokenizer_hint(cfg)
    assert h == {"kind": "tokenizer", "path": str(model_dir), "revision": None}
    fresh = load_tokenizer(cfg)
    assert keep_tokenizer(h)  # what the fork server does with the hint of a trial that loaded it itself
    kept = preload._kept[preload._key(h)][1]
    got = load_tokenizer(cfg)
    assert got is kept and preload.taken() == ["tokenizer"]
    text = "Hello, world! A tokenizer kept by the fork server."
    assert got(text)["input_ids"] == fresh(text)["input_ids"] and got.pad_token == fresh.pad_token
    assert type(got) is type(fresh) and len(got) == len(fresh)
    again = load_tokenizer(cfg)  # the second load in the same trial: its own
    assert again is not got


def test_load_tokenizer_tells_the_server_only_what_it_may_keep(tmp_path, byo_model_dir, monkeypatch):
    r, w = os.pipe()
    preload.tell_server(w)
    load_tokenizer(ModelConfig(name="byo", source="hub", path=str(byo_model_dir)))
    load_tokenizer(ModelConfig(name="byo", source="hub", path=str(byo_model_dir), trust_remote_code=True))
    preload.tell_server(None)
    with os.fdopen(r, "rb") as f:
        told = [json.loads(line) for line in f.read().splitlines()]
    assert told == [{"kind": "tokenizer", "path": str(byo_model_dir), "revision": None}]  # remote code: never kept
    assert tokenizer_hint(ModelConfig(name="hub-id", source="hub", path="HuggingFaceTB/SmolLM2-135M")) is None


def test_the_fork_server_keeps_what_a_trial_told_it_and_ignores_what_it_cannot_use(tmp_path, byo_model_dir, monkeypatch):
    import gc

    from harness.sweep.warm import _keep_hinted

    monkeypatch.setattr(gc, "freeze", lambda: None)  # the server's freeze; this test process collects as usual

    told = [b"not json", json.dumps({"kind": "model", "path": str(byo_model_dir)}).encode(),  # no such kind kept
            json.dumps(preload.hint("tokenizer", str(tmp_path / "gone"), revision=None)).encode(),  # cannot be read
            json.dumps(preload.hint("tokenizer", str(byo_model_dir), revision=None)).encode()]
    _keep_hinted(b"\n".join(told) + b"\n")
    assert list(preload._kept) == [preload._key(preload.hint("tokenizer", str(byo_model_dir), revision=None))]
