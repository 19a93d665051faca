"""The prepared-data cache (harness/data/cache.py): a second preparation of the same input is a hit with the
same rows, and anything the result depends on (file, length, split seed, tokenizer) makes a new entry."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from harness import config
from harness.config import DataConfig
from harness.data.cache import cache_dir, cache_key, prepare
from harness.model.load import load_tokenizer
from harness.pipeline import train_run
from harness.run.record import read_summary

ROWS = [{"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."} for i in range(30)]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(config.compose(["model=tiny-llama"]).model)


@pytest.fixture()
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(ROWS), encoding="utf-8")
    return DataConfig(name="numbers", format="alpaca", path=str(path), val_size=0.2)


def _prep(cfg, tok, **kw):
    args = {"max_length": 64, "packing": False, "add_bos": False, **kw}
    return prepare(cfg, tok, **args)


def test_second_preparation_is_a_hit_with_the_same_rows(cfg, tok):
    first = _prep(cfg, tok)
    second = _prep(cfg, tok)
    assert (first.stats["cache"], second.stats["cache"]) == ("miss", "hit")
    assert second.train == first.train and second.val == first.val
    assert {k: v for k, v in second.stats.items() if k != "cache"} == {k: v for k, v in first.stats.items() if k != "cache"}
    assert len(list(cache_dir().glob("*.json"))) == 1


def test_what_the_result_depends_on_makes_a_new_entry(cfg, tok):
    base = _prep(cfg, tok)
    assert _prep(cfg, tok, max_length=32).stats["cache"] == "miss"
    assert _prep(dataclasses.replace(cfg, split_seed=1), tok).stats["cache"] == "miss"
    assert _prep(cfg, tok, packing=True).stats["cache"] == "miss"
    other_tok = load_tokenizer(config.compose(["model=tiny-gpt2"]).model)
    assert _prep(cfg, other_tok).stats["cache"] == "miss"
    # an edited data file: new content, new modification time
    path = cfg.path
    edited = ROWS[:20]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(edited, f)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = _prep(cfg, tok)
    assert again.stats["cache"] == "miss" and again.stats["rows"] == 20 != base.stats["rows"]


def test_cache_off_and_hub_ids_are_not_cached(cfg, tok):
    assert _prep(cfg, tok, use_cache=False).stats["cache"] == "off"
    assert not cache_dir().exists() or not list(cache_dir().glob("*.json"))
    assert cache_key(DataConfig(name="hub", path="someone/some-dataset"), tok) is None


def test_a_corrupt_entry_is_prepared_again(cfg, tok):
    _prep(cfg, tok)
    (entry,) = cache_dir().glob("*.json")
    entry.write_text("{not json", encoding="utf-8")
    redo = _prep(cfg, tok)
    assert redo.stats["cache"] == "miss" and json.loads(entry.read_text())["train"] == redo.train


@pytest.mark.slow
def test_a_second_training_run_reuses_the_first_runs_preparation(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    seen = []
    for run_id in ("one", "two"):
        ov = tiny_overrides + ["method=lora", "train.max_steps=1", f"run_id={run_id}"]
        status, run_dir = train_run(config.compose(ov), ov)
        assert status == "completed", read_summary(run_dir)
        seen.append(json.loads((run_dir / "manifest.json").read_text())["data"]["cache"])
    assert seen == ["miss", "hit"]


def test_the_key_covers_every_module_of_the_data_stage(cfg, tok, tmp_path, monkeypatch):
    """Editing any preparation module (read, formats, split, tokenize, prepare) makes a new entry."""
    from harness.data import cache

    key = cache.cache_key(cfg, tok, max_length=64)
    stage = tmp_path / "data"
    stage.mkdir()
    for f in Path(cache.hdata.__file__).parent.glob("*.py"):
        (stage / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(cache.hdata, "__file__", str(stage / "__init__.py"))
    assert cache.cache_key(cfg, tok, max_length=64) == key
    with open(stage / "tokenize.py", "a", encoding="utf-8") as f:
        f.write("\n# an edit\n")
    assert cache.cache_key(cfg, tok, max_length=64) != key
