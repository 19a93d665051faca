"""What a warm fork server (harness/sweep/warm.py serve) prepares before it forks any trial, and the check that it is
still safe to fork: the libraries every trial imports (PRELOAD, import_libraries), the first-use caches every trial
would fill again (warm_up), and fork_hazards (threads other than fork-aware ones, CUDA in use).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

PRELOAD = ("torch", "transformers", "transformers.trainer", "peft", "datasets", "lm_eval", "hydra", "omegaconf",
           "hydra.core.override_parser.overrides_parser", "harness.cli", "harness.commands.train",
           "harness.commands.common", "harness.config.overrides", "harness.launch", "harness.pipeline",
           "harness.train.fit", "harness.eval.suites", "harness.model.load", "harness.model.methods",
           "harness.model.preflight", "harness.model.init_from", "harness.data.cache", "harness.run.tracking",
           "harness.sweep.pruning",
           # the architectures of the packaged models (tiny-llama, SmolLM2: Llama; Gemma 3): imported on first load
           "transformers.models.llama.modeling_llama", "transformers.models.gemma3.modeling_gemma3",
           # a trial's pruning reporter opens the study's storage: Optuna's RDB models, SQLAlchemy, alembic (~0.5 s)
           "harness.sweep.samplers", "harness.sweep.spec", "harness.sweep.storage", "optuna.storages._rdb.models",
           "sqlalchemy.orm", "alembic.migration", "alembic.script", "alembic.command", "alembic.config",
           "sqlalchemy.dialects.sqlite", "sqlalchemy.dialects.postgresql.psycopg2", "psycopg2",
           # the trackers' libraries (optional): wandb.init imports wandb.sdk.launch (wandb.apis.public, ~80 pydantic
           # models built from their source's docstrings), which took 4 s of every SmolLM2 quickstart trial's set-up
           "wandb", "wandb.sdk.launch", "mlflow", "tensorboardX")
# Overrides of every shape a trial's command line has: parsing them once fills the caches of Hydra's parser
# (antlr4 builds its lexer's DFA lazily: the first command line of a process took 1-2 s to parse, later ones ms).
WARM_UP_OVERRIDES = ["model=tiny-llama", "train.lr=1.0e-4", "train.max_steps=20", "method.r=16", "data.max_rows=40",
                     "notes='a, b'", 'notes="x"', "method.target_modules=[q_proj,v_proj]", "++tracker.tags=[a,b-1]",
                     "storage=sqlite:////tmp/x_y/s.db", "output_dir=/a/b.c", "run_id=c001-0.0002-s0-79090c",
                     "train.dropout=0.05", "train.flag=true", "+x.y=null", "~a.b", "k=${oc.env:HOME}"]
FORK_AWARE_THREADS = {"jemalloc_bg_thd"}  # pyarrow's allocator: re-creates its thread after a fork


def fork_hazards() -> list[str]:
    """What would make forking this process unsafe: threads other than the known fork-aware ones, CUDA in use."""
    problems = []
    names = []
    for task in os.listdir("/proc/self/task"):
        if int(task) != threading.get_native_id():
            try:
                names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
            except OSError:
                pass
    others = [n for n in names if n not in FORK_AWARE_THREADS]
    if others:
        problems.append(f"threads running after the imports: {', '.join(sorted(others))}")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        problems.append("CUDA was initialized during the imports")
    return problems


def import_libraries() -> None:
    """Import PRELOAD (the optional ones where installed)."""
    import importlib
    import importlib.util

    for name in PRELOAD:
        if importlib.util.find_spec(name.split(".")[0]) is not None:  # lm_eval etc. are optional
            importlib.import_module(name)


def warm_up() -> None:
    """Fill caches every trial would otherwise fill again (pure Python, no torch op): the override parser's,
    Hydra's and OmegaConf's on a first composition, SQLAlchemy's mapper configuration of Optuna's tables, the
    installed package versions of the environment record and of W&B's requirements file, and transformers'
    checkpoint conversion table."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from harness.run.environment import installed_requirements, package_versions

    OverridesParser.create().parse_overrides(WARM_UP_OVERRIDES)
    package_versions()
    if "wandb" in sys.modules:  # the requirements file of each W&B run (harness/run/tracking.py write_requirements)
        installed_requirements()
    try:  # the default config; a user's broken conf/ fails in the trial itself, with its message
        from harness.config import compose

        compose([])
    except Exception:  # noqa: BLE001 - a warm-up only
        pass
    if "sqlalchemy.orm" in sys.modules:
        sys.modules["sqlalchemy.orm"].configure_mappers()
    try:  # transformers' table of checkpoint key renamings, built (~1,000 regexes) on a process's first model load
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        get_checkpoint_conversion_mapping("llama")
    except ImportError:  # another transformers version: the first load builds it, as in a cold start
        pass
