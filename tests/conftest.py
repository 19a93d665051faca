"""Shared test setup: offline, a per-session model cache, and tiny-model config helpers.

Every test runs offline (HF_HUB_OFFLINE=1, W&B offline) with HARNESS_CACHE pointing at a fresh
session directory, so the GGUF conversion and tiny-model builds are exercised, not assumed.
Set HARNESS_TEST_CACHE to reuse a cache between sessions (faster local runs).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_CACHE = os.environ.get("HARNESS_TEST_CACHE") or tempfile.mkdtemp(prefix="harness-test-cache-")
os.environ["HARNESS_CACHE"] = _SESSION_CACHE
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_root_leaks_between_tests(monkeypatch):
    """`--root DIR` sets HARNESS_ROOT for its process and children (harness/commands/common.py use_root): a test
    calling a command in-process must not leave it set for the next test. setenv then delenv makes pytest restore
    "unset" afterwards, whatever the test set."""
    monkeypatch.setenv("HARNESS_ROOT", "unset")
    monkeypatch.delenv("HARNESS_ROOT")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture()
def runs_dir(tmp_path) -> Path:
    d = tmp_path / "runs"
    d.mkdir()
    return d


@pytest.fixture()
def tiny_overrides(runs_dir):
    """Overrides for a seconds-long run on the tiny Llama and 100 Alpaca rows."""
    return [
        "model=tiny-llama", "data=alpaca-tiny", "tracker=none", "eval=none",
        "train.max_steps=3", "train.batch_size=4", "train.max_length=128", "train.log_every=1",
        f"output_dir={runs_dir}",
    ]


@pytest.fixture(scope="session")
def byo_model_dir(tmp_path_factory) -> Path:
    """A user's own model: a tiny Llama (context 256) saved as a plain directory (config.json, safetensors,
    tokenizer), under a name with a space that a run name cannot hold."""
    import shutil

    from harness.config import ModelConfig, TinySpec
    from harness.model.load import local_dir

    built = local_dir(ModelConfig(name="byo-src", source="tiny", context_length=256,
                                  tiny=TinySpec(hidden_size=32, intermediate_size=64)))
    target = tmp_path_factory.mktemp("models") / "My Model v2"
    shutil.copytree(built, target)
    return target
