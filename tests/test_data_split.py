"""The validation split depends on the data and data.split_seed only, never on train.seed: the seeds of a sweep
train and validate on the same rows, through every caller of the split (the trainer's preparation and its cache,
the `val` suite, generation suites on a val split, the contamination check's training rows).

    python -m pytest tests/test_data_split.py -q
"""

from __future__ import annotations

import json

import pytest

from harness import config
from harness.config import GenerationSuite
from harness.data.prepare import training_rows
from harness.eval import generation, val
from harness.model.load import load_tokenizer
from harness.train.objectives import prepare_sft

ROWS = [{"instruction": f"Name the number after {i}.", "input": "", "output": f"It is {i + 1}."} for i in range(40)]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(config.compose(["model=tiny-llama"]).model)


@pytest.fixture()
def compose(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "numbers.json"
    path.write_text(json.dumps(ROWS), encoding="utf-8")

    def make(*overrides: str):
        return config.compose(["model=tiny-llama", "data=alpaca-tiny", f"data.path={path}", "data.val_size=0.25",
                               "train.max_length=64", *overrides])
    return make


def _val_rows(cfg, tok, monkeypatch) -> dict:
    """What each caller of the split holds out for `cfg`."""
    seen = {}

    def fake_score_rows(model, rows, **kw):
        seen["val suite"] = [r["input_ids"] for r in rows]
        return {"loss": 1.0, "perplexity": 2.718, "tokens": sum(len(r["input_ids"]) for r in rows)}

    monkeypatch.setattr("harness.model.scoring.score_rows", fake_score_rows)  # what the val suite scores with
    prepared = prepare_sft(cfg, tok)  # the trainer's preparation, through the cache
    entry = val.val_suite(None, tok, cfg, progress=False)
    suite = GenerationSuite(name="g", data=cfg.data.name)
    examples = generation.load_examples(suite, cfg, generation.suite_data_config(suite, cfg))
    train = training_rows(cfg.data)
    return {"trainer val": [e["input_ids"] for e in prepared.val], "val suite": seen["val suite"],
            "val suite hash": entry["config_hash"], "generation": [e.messages[-1]["content"] for e in examples],
            "contamination train rows": [r["instruction"] for r in train], "cache": prepared.stats["cache"]}


def test_train_seed_leaves_the_validation_rows_alone(compose, tok, monkeypatch):
    seed0 = _val_rows(compose("train.seed=0"), tok, monkeypatch)
    seed1 = _val_rows(compose("train.seed=1"), tok, monkeypatch)
    caches = seed0.pop("cache"), seed1.pop("cache")
    assert len(seed0["generation"]) == len(seed0["trainer val"]) == 10
    assert seed1 == seed0
    assert caches == ("miss", "hit")  # the seeds of a sweep share one preparation


def test_split_seed_chooses_the_validation_rows(compose, tok, monkeypatch):
    base = _val_rows(compose(), tok, monkeypatch)
    other = _val_rows(compose("data.split_seed=1"), tok, monkeypatch)
    assert other.pop("cache") == "miss"
    for key in ("trainer val", "val suite", "val suite hash", "generation", "contamination train rows"):
        assert other[key] != base[key], key
    assert _val_rows(compose("data.split_seed=1", "train.seed=7"), tok, monkeypatch)["generation"] == other["generation"]
    assert compose().data.split_seed == 0  # the default is fixed
