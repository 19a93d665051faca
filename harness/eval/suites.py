"""Evaluation stage: run the configured suites on a model and record them in the run directory.

    harness eval RUN_DIR                          # the suites in the run's own config (eval=...)
    harness eval RUN_DIR eval=standard            # other suites on a trained run (adapter/ or model/)
    harness eval RUN_DIR --rescore                # generation metrics recomputed from saved samples

`run_suites(model, tokenizer, cfg, run_dir)` is what the pipeline calls right after training, on the model
in memory (peft-wrapped, no reload). Suites, in order: `val` (harness/eval/val.py), eval.perplexity
(harness/eval/perplexity.py), eval.lm_eval tasks (harness/eval/lm_eval.py), eval.generation
(harness/eval/generation.py). Each finished suite is merged into eval.json at once (atomic), with a
config_hash (sha256[:16] of the suite config and, for lm-eval tasks, its task files), versions,
metric_meta: what each of its metrics means (harness/eval/metrics.py), and for a trained run its
`contamination` field (the share of its items found in the training data).
"""

from __future__ import annotations

from pathlib import Path

from harness import config
from harness.config import ConfigError, RunConfig

# the suite kinds register themselves, and declare their metrics, on import (harness/eval/registry.py)
from harness.eval import generation, lm_eval, perplexity, preference, val  # noqa: F401
from harness.eval import precision
from harness.eval.contamination import RunCheck
from harness.eval.metrics import describe_metric
from harness.eval.registry import SUITE_KINDS, EvalError, SuiteContext, say, versions
from harness.model.load import model_device
from harness.run.progress import current as current_display
from harness.run.metric_meta import UNKNOWN
from harness.run.record import read_eval, read_samples, update_eval


def suite_names(cfg: RunConfig) -> list[str]:
    """The eval.json suite names that run_suites would write for cfg, in run order."""
    return [n for kind in sorted(SUITE_KINDS.values(), key=lambda k: k.order) for n in kind.names(cfg)]


def eval_stages(cfg: RunConfig) -> list[tuple[str, str, None, float | None]]:
    """The progress display's plan of the evaluation (harness/run/progress.py): one stage per suite, in run
    order, with its kind's rough cost in forward tokens (None: no guess)."""
    out = []
    for kind in sorted(SUITE_KINDS.values(), key=lambda k: k.order):
        costs = kind.cost(cfg) if kind.cost is not None else {}
        out += [(f"eval {n}", "", None, costs.get(n)) for n in kind.names(cfg)]
    return out


def with_metric_meta(entry: dict) -> dict:
    """Add `metric_meta` to a suite entry: for every metric in entry["metrics"], its declared higher_is_better,
    scale and per-item key (harness.eval.metrics.METRIC_META), so the run record says what its numbers mean.
    A metric nobody declared is recorded with no direction, raw scale and no per-item form."""
    entry["metric_meta"] = {m: (describe_metric(m) or UNKNOWN).to_record() for m in entry.get("metrics") or {}}
    return entry


def run_suites(model, tokenizer, cfg: RunConfig, run_dir: str | Path, progress: bool = True,
               trained: bool = True) -> dict:
    """Run every suite of cfg.eval on the model in memory; record each into eval.json; return them all.
    For a trained run (not a base model: trained=False) with eval.contamination on, each entry gets a
    `contamination` field: its items against the run's training split (harness/eval/contamination.py)."""
    run_dir = Path(run_dir)
    vers = versions()
    suites: dict = {}
    check = RunCheck(cfg, lambda msg: say(True, msg)) if trained and cfg.eval.contamination else None
    shown = current_display()  # the progress display (harness/run/progress.py): one stage per suite
    shown.plan(eval_stages(cfg))

    def begin(name: str) -> None:
        cur = shown.current
        if cur is not None and cur.name.startswith("eval ") and cur.name[5:] not in suites:
            shown.end(skipped=True)  # the suite before ended without a result (e.g. no validation split)
        shown.begin(f"eval {name}")

    def record(name: str, entry: dict) -> None:
        kind = SUITE_KINDS.get(entry.get("kind"))
        if check is not None and kind is not None:
            field = check(name, entry, kind.items)
            if field is not None:
                entry["contamination"] = field
        if held is not None:
            entry["bnb_4bit"] = held.record
        suites[name] = with_metric_meta(entry)
        update_eval(run_dir, {name: entry}, vers)
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in entry.get("metrics", {}).items()
                            if isinstance(v, (int, float)) and not k.endswith("_stderr"))
        say(progress, f"{name}: {metrics} (n={entry.get('n')}, {entry.get('wall_time_s', 0):.1f} s)")
        shown.end(f"eval {name}")

    names = suite_names(cfg)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError([f"eval={cfg.eval.name}: suite names must be unique and not 'val'; repeated: {', '.join(dupes)}"])

    was_training = model.training
    model.eval()  # no dropout while scoring; the caller's mode is given back at the end
    planned = precision.plan(cfg.eval.mode, str(model_device(model)))
    reference = precision.calibration_reference(model, planned)  # before any forward
    ctx = SuiteContext(model, tokenizer, cfg, run_dir, progress, record, begin, exact_model=reference)
    # QLoRA in exact mode, and in a fast mode that runs fp32 on this device (AVX2 CPUs): fp32 products everywhere
    held = precision.exact_4bit(model, "exact" if planned.dtype == "float32" else cfg.eval.mode)
    try:
        for kind in sorted(SUITE_KINDS.values(), key=lambda k: k.order):
            kind.run(ctx)
    finally:
        model.train(was_training)
        precision.release_4bit(model, held)
    cur = shown.current
    if cur is not None and cur.name.startswith("eval ") and cur.name[5:] not in suites:
        shown.end(skipped=True)
    if check is not None and check.index is not None:
        idx = check.index
        say(progress, f"contamination: {idx.n}-grams of data={cfg.data.name} ({idx.texts} training texts) vs every "
                      f"suite's items: {check.seconds:.2f} s")
    return suites


def has_suites(cfg: RunConfig) -> bool:
    return bool(suite_names(cfg))


def rescore_run_dir(run_dir: str | Path, overrides: list[str], progress: bool = True) -> Path:
    """Recompute the metrics of the run's generation suites from their saved samples, with the metric
    lists of the (re)composed eval config: no model is loaded and nothing is generated again. Refused
    for a suite whose decoding settings differ from the ones its samples were generated with."""
    from harness.eval.generation import decoding_fields, rescore_entry

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise EvalError(f"{run_dir} is not a run directory (no config.yaml). Give runs/<name>/<run_id>.")
    cfg = eval_config_for_run(run_dir, overrides)
    ev = read_eval(run_dir) or {}
    old_cfg = config.load_run_config(run_dir)
    generated_with = {s.name: s for s in old_cfg.eval.generation}
    done = 0
    for suite in cfg.eval.generation:
        entry = (ev.get("suites") or {}).get(suite.name)
        if entry is None or entry.get("kind") != "generation":
            raise EvalError(f"{run_dir}: no generation results for suite {suite.name!r} in eval.json to rescore; "
                            "run `harness eval` without --rescore")
        before = generated_with.get(suite.name)
        old_fields = decoding_fields(before) if before is not None else None
        new_fields = decoding_fields(suite)
        if old_fields is not None and old_fields != new_fields:
            diff = sorted(k for k, v in new_fields.items() if old_fields.get(k) != v)
            raise EvalError(f"{run_dir}: suite {suite.name!r} would decode differently than its samples were made "
                            f"({', '.join(diff)} changed); rescoring would mislabel them. Run `harness eval` without --rescore.")
        rows = read_samples(run_dir, suite.name)
        new = with_metric_meta(rescore_entry(entry, rows, suite, cfg.eval.bootstrap_samples, cfg.eval.seed))
        update_eval(run_dir, {suite.name: new}, versions())
        shown = ", ".join(f"{k}={v:.4g}" for k, v in new["metrics"].items())
        say(progress, f"{suite.name} rescored from {len(rows)} samples: {shown}")
        done += 1
    if not done:
        raise EvalError(f"{run_dir}: eval={cfg.eval.name} has no generation suites to rescore")
    return run_dir / "eval.json"


def _eval_overrides_only(overrides: list[str], run_dir: Path) -> None:
    bad = [o for o in overrides if not o.lstrip("+~").split("=", 1)[0].split(".")[0] == "eval"]
    if bad:
        raise EvalError(
            f"harness eval {run_dir}: only eval settings can change for a trained run, got {bad}. "
            "Use eval=<name> or eval.<key>=<value> (e.g. eval=standard eval.lm_eval.limit=100)."
        )


def eval_config_for_run(run_dir: Path, overrides: list[str], trust_remote_code: bool = False) -> RunConfig:
    """The run's config.yaml with its eval group recomposed from overrides.yaml + the new overrides (remote code
    only when the caller says so: harness/config/compose.py load_run_config)."""
    import yaml

    cfg = config.load_run_config(run_dir, trust_remote_code)
    if overrides:
        _eval_overrides_only(overrides, run_dir)
        ov_file = run_dir / "overrides.yaml"
        run_overrides = (yaml.safe_load(ov_file.read_text(encoding="utf-8")) or []) if ov_file.exists() else []
        cfg.eval = config.compose(list(run_overrides) + list(overrides)).eval
    return cfg
