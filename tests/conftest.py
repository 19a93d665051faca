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
