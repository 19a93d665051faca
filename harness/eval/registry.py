"""Suite kinds by name (SUITE_KINDS), and what every evaluation suite shares: its error type, the versions
recorded with it, its config hash.

A suite kind is one module that registers itself:

    @register_suite_kind("perplexity", order=1, names=lambda cfg: [s.name for s in cfg.eval.perplexity])
    def run_perplexity(ctx: SuiteContext) -> None:      # ctx.begin(name) as each suite starts,
        ...                                             # ctx.record(name, entry) as it finishes

run_suites (harness/eval/suites.py) runs the kinds in `order`; the sweep asks suite_names(cfg) which
`<suite>.<metric>` objectives a config can produce. Neither knows any kind by name. A kind that can say
what it scored passes `items=fn`, fn(cfg, suite name, entry) -> (item ids, item texts) or None: run_suites
checks those texts against the run's training data (harness/eval/contamination.py). A kind that can guess
how long its suites take passes `cost=fn`, fn(cfg) -> {suite name: rough forward tokens}: the progress display
(harness/run/progress.py) turns it into the run's ETA before the suite starts, at the speed measured so far.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness import __version__
from harness.run.environment import package_versions

VERSIONED = ("lm_eval", "sacrebleu", "rouge_score", "transformers", "torch", "peft")


class EvalError(RuntimeError):
    """An evaluation that cannot start (bad run directory, nothing to evaluate ...)."""


# ---------------------------------------------------------------------------------- records
def versions() -> dict[str, str | None]:
    return {"harness": __version__, **package_versions(VERSIONED)}


def config_hash(suite_config: dict, files: list[Path] = ()) -> str:
    """sha256[:16] of the suite's config (JSON, sorted keys, batch_size left out: it does not change
    results) followed by the content of the files that define it (task YAML, utils.py)."""
    cfg = {k: v for k, v in suite_config.items() if k != "batch_size"}
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode("utf-8"))
    for f in files:
        h.update(b"\0" + Path(f).name.encode() + b"\0" + Path(f).read_bytes())
    return h.hexdigest()[:16]


def say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[harness] {msg}", flush=True)


# ------------------------------------------------------------------------------- suite kinds
@dataclass
class SuiteContext:
    """What a suite kind's runner gets: the model in memory, its config, where to write, begin(name) to call as
    a suite starts (the progress display's stage), and record(name, entry), which merges one finished suite
    into eval.json at once."""

    model: Any
    tokenizer: Any
    cfg: Any  # RunConfig
    run_dir: Path
    progress: bool
    record: Callable[[str, dict], None]
    begin: Callable[[str], None] = lambda name: None
    # fast mode: what its calibrations score as exact when model_for cannot give it (a 4-bit model's fp32 copy,
    # harness/eval/precision.py calibration_reference); None: model_for(model, exact)
    exact_model: Any = None


# (RunConfig, suite name, its eval.json entry) -> (item ids, item texts): what the suite scored, or None
ItemsFn = Callable[[Any, str, dict], "tuple[list, list[str]] | None"]
# RunConfig -> {suite name: rough forward tokens}, for the ETA (a guess from sizes in the config; measured later)
CostFn = Callable[[Any], "dict[str, float]"]


@dataclass(frozen=True)
class SuiteKind:
    name: str
    order: int  # kinds run in this order (cheap ones first)
    names: Callable[[Any], list[str]]  # RunConfig -> the suite names (eval.json keys) this kind will write
    run: Callable[[SuiteContext], None]
    items: ItemsFn | None = None  # for the contamination check; None: this kind cannot say
    cost: CostFn | None = None  # for the progress display's ETA; None: no guess before it runs


SUITE_KINDS: dict[str, SuiteKind] = {}


def register_suite_kind(name: str, *, order: int, names: Callable[[Any], list[str]], items: ItemsFn | None = None,
                        cost: CostFn | None = None):
    """Register `run(ctx)` as the runner of suite kind `name` (the `kind` field of its eval.json entries)."""

    def deco(fn: Callable[[SuiteContext], None]) -> Callable[[SuiteContext], None]:
        if name in SUITE_KINDS:
            raise ValueError(f"suite kind {name!r} is registered twice")
        SUITE_KINDS[name] = SuiteKind(name, order, names, fn, items, cost)
        return fn

    return deco
