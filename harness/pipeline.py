"""One run: open its record -> fit (optional) -> evaluate -> close its record.

    harness train model=smollm2-135m method=qlora data=alpaca-demo train.max_steps=20   # train_run()

The only module that calls both the training stage (harness/train/) and the evaluation stage
(harness/eval/): neither imports the other. Exit codes and statuses: harness/run/record.py.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import yaml

from harness import atomic, config, quiet
from harness.config import ConfigError, RunConfig
from harness.eval.during import make_benchmark
from harness.eval.registry import EvalError, say
from harness.eval.suites import eval_config_for_run, eval_stages, has_suites, run_suites
from harness.model.load import load_run_model
from harness.run import progress as run_progress
from harness.run.environment import peak_rss_mb, run_environment
from harness.run.record import (
    BOOKKEEPING_KEYS,
    SCHEMA,
    RunError,
    config_changes,
    new_run_id,
    now_iso,
    read_summary,
    run_dir_for,
    write_manifest,
    write_or_warn,
    write_summary,
)
from harness.train import distributed
from harness.train.callbacks import Outcome
from harness.train.fit import TRAINING_FIELDS, drop_weights, fit, saved_weights

_NOT_AXES = BOOKKEEPING_KEYS


def axes_from_overrides(cfg: RunConfig, overrides: list[str]) -> dict:
    """The config values that identify this configuration in a comparison: every group choice,
    plus each plain value set on the command line (what a sweep varies)."""
    axes: dict = {"model": cfg.model.name, "method": cfg.method.name, "data": cfg.data.name}
    for ov in overrides:
        key, sep, _ = ov.lstrip("+~").partition("=")
        if not sep or key.split(".")[0] in _NOT_AXES or key in config.GROUPS or key == "experiment":
            continue
        value = cfg
        try:
            for part in key.split("."):
                value = getattr(value, part)
        except AttributeError:
            continue
        axes[key] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return axes


# --------------------------------------------------------------------------------- the run
def resume_changes(cfg: RunConfig, run_dir: Path) -> list[str]:
    """How cfg differs from the config run_dir recorded (config.yaml), bookkeeping keys left out."""
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    now = yaml.safe_load(yaml.safe_dump(config.to_dict(cfg), sort_keys=False))  # the same round trip as the record
    return config_changes(recorded, now)


def prepare_run_dir(cfg: RunConfig, overrides: list[str], force: bool = False,
                    write: bool = True) -> tuple[Path, bool, list[str]]:
    """Create (or reopen for resume) the run directory; write config.yaml and overrides.yaml. Returns
    (run_dir, resuming, the config changes a forced resume accepted). An existing run_id whose
    recorded config differs (bookkeeping keys aside) raises RunError listing the keys, unless force
    (then the new config is recorded and the changes go into summary.json); a completed one always.
    write=False: the same checks and cfg.run_id, nothing written (harness/launch.py: rank 0 writes)."""
    name = config.default_run_name(cfg)
    run_id = cfg.run_id or new_run_id()
    run_dir = run_dir_for(cfg.output_dir, name, run_id)
    resuming = run_dir.exists() and (run_dir / "config.yaml").exists()
    changes: list[str] = []
    if resuming:
        status = (read_summary(run_dir) or {}).get("status")
        changes = resume_changes(cfg, run_dir)
        if changes and (status == "completed" or not force):
            listed = "\n".join(f"  {c}" for c in changes)
            fix = ("start a new run (another run_id=, or none for a fresh one)" if status == "completed" else
                   "run it with the recorded config, start a new run (another run_id=, or none), or pass --force "
                   "to continue it under the new config (the changes are written to its summary.json)")
            raise RunError(f"run {run_dir} ({status or 'no status'}) was recorded with another config; "
                           f"{len(changes)} key(s) differ (recorded -> now):\n{listed}\nTo go on: {fix}.")
        if status == "completed":
            return run_dir, True, []
    cfg.run_id = run_id
    if not write:
        return run_dir, resuming, changes
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(cfg), sort_keys=False))
    atomic.write_text(run_dir / "overrides.yaml", yaml.safe_dump(list(overrides)))
    return run_dir, resuming, changes


def trained_before(cfg: RunConfig, run_dir: Path, prior: dict, changes: list[str]) -> bool:
    """Whether an earlier attempt of this run finished training and saved its final weights (summary.json
    `trained_at`; e.g. it was killed during evaluation): then this one goes straight to evaluation. Not with
    resume=false, nor when a --force resume changed more than eval.* (the training would differ)."""
    if not cfg.resume or not prior.get("trained_at"):
        return False
    if saved_weights(run_dir) is None:
        print(f"[harness] warning: {run_dir} finished training at {prior['trained_at']}, but its adapter/ or model/ "
              "is gone; training again", file=sys.stderr)
        return False
    beyond_eval = [c for c in changes if not c.startswith("eval.")]
    if beyond_eval:
        print(f"[harness] note: {run_dir} had finished training; --force changed {', '.join(beyond_eval)}, so it "
              "trains again from step 0")
        return False
    return True


def show_run(run_dir: Path, stages: list[tuple]) -> None:
    """The progress display (harness/run/progress.py) of this command: which run, the stages it plans (load,
    train, one per eval suite), progress.json in the run directory; then the load stage starts."""
    shown = run_progress.current()
    if run_progress.active():
        shown.title = f"{run_dir.parent.name}/{run_dir.name}"
        shown.attach(run_dir)
    shown.plan([("load", "", None, None), *stages])
    shown.begin("load")


def train_run(cfg: RunConfig, overrides: list[str] | None = None, outcome: Outcome | None = None,
              force: bool = False) -> tuple[str, Path]:
    """Train one run end to end; returns (status, run_dir). Never raises for a training failure:
    it is recorded in summary.json (status failed / diverged / interrupted) instead, and when even that
    cannot be written (a full disk) the reason goes to stderr. Pass an Outcome to get the trained model
    back in outcome.model. A rerun of a run that had finished training evaluates its saved weights
    (trained_before). Raises RunError, before anything is written, when run_id names a run recorded with
    another config (force: continue it anyway)."""
    overrides = list(overrides or [])
    started, t_start = now_iso(), time.time()
    run_dir, resuming, changes = prepare_run_dir(cfg, overrides, force)
    prior = read_summary(run_dir) or {}
    if prior.get("status") == "completed":
        print(f"[harness] run {run_dir} already completed; nothing to do")
        return "completed", run_dir

    trained = trained_before(cfg, run_dir, prior, changes)
    summary = {
        **({k: prior[k] for k in TRAINING_FIELDS if k in prior} if trained else {}),
        "schema": SCHEMA, "status": "running", "reason": "",
        "name": run_dir.parent.name, "run_id": run_dir.name, "run_dir": str(run_dir),
        "study": cfg.study, "trial": cfg.trial, "model": cfg.model.name, "method": cfg.method.name,
        "data": cfg.data.name, "seed": cfg.train.seed, "axes": axes_from_overrides(cfg, overrides),
        "started_at": prior.get("started_at", started), "resumed": bool(resuming and prior),
        **distributed.summary_fields(cfg.train),  # world_size, global_batch_size (train.devices: docs/multi-device.md)
    }
    if changes or prior.get("config_changes_on_resume"):  # a --force resume: what changed, recorded -> now
        summary["config_changes_on_resume"] = [*prior.get("config_changes_on_resume", []), *changes]
    write_summary(run_dir, summary)
    outcome = outcome if outcome is not None else Outcome()
    if trained:
        outcome.final_train_loss, outcome.final_val_loss, outcome.best_val_loss = (
            prior.get("final_train_loss"), prior.get("final_val_loss"), prior.get("best_val_loss"))
    quiet.for_method(cfg.method.quant != "none")
    evaluates = cfg.eval.after_train and cfg.eval.name != "none"
    training = [] if trained else [("train", "step", cfg.train.max_steps if cfg.train.max_steps > 0 else None, None)]
    show_run(run_dir, [*training, *(eval_stages(cfg) if evaluates else [])])
    from harness.run.tracking import start

    tracker = start(cfg, run_dir)
    try:
        status = _fit_and_evaluate(cfg, run_dir, summary, outcome, tracker, trained)
    except KeyboardInterrupt:
        outcome.status, outcome.reason = "interrupted", "interrupted by the user (Ctrl-C); re-run with the same run_id to resume"
        status = "interrupted"
    except ConfigError as exc:
        outcome.status, outcome.reason, status = "failed", str(exc), "failed"
    except Exception as exc:  # recorded, not raised: a failed run is a result
        write_or_warn(atomic.write_text, run_dir / "error.log", traceback.format_exc(), what=str(run_dir / "error.log"))
        reason = f"{type(exc).__name__}: {exc}"
        if "out of memory" in str(exc).lower():
            reason = "out of memory: " + reason
        outcome.status, outcome.reason, status = "failed", reason[:2000], "failed"
    summary.update(
        status=status if outcome.status in ("running", "completed") else outcome.status,
        reason=outcome.reason,
        pruned_at_step=outcome.pruned_at_step,
        final_train_loss=outcome.final_train_loss if outcome.final_train_loss is not None else summary.get("train_loss_mean"),
        final_val_loss=outcome.final_val_loss,
        best_val_loss=outcome.best_val_loss,
        wall_time_s=time.time() - t_start,
        peak_memory_mb=summary.get("peak_memory_mb") or peak_rss_mb(),
        finished_at=now_iso(),
    )
    if not write_or_warn(write_summary, run_dir, summary, what=str(run_dir / "summary.json")):
        print(f"[harness] run {run_dir}: {summary['status']}" + (f": {summary['reason']}" if summary["reason"] else ""),
              file=sys.stderr)
    run_progress.current().finish(summary["status"])
    try:
        tracker.finish(summary)
    except Exception as exc:
        print(f"[harness] warning: tracker finish failed: {exc}")
    if summary["status"] == "completed" and not cfg.train.save_model:
        drop_weights(run_dir)  # kept only for a rerun's evaluation until now
    return summary["status"], run_dir


# ------------------------------------------------------------------------------ model loading
def _device(cfg: RunConfig) -> str:
    from harness.model.device import resolve_device

    return resolve_device(cfg)


def _fit_and_evaluate(cfg: RunConfig, run_dir: Path, summary: dict, outcome: Outcome, tracker, trained: bool = False) -> str:
    """fit (harness/train/fit.py), then the run's eval suites on the model still in memory; `trained`: an
    earlier attempt finished training, so its saved weights are loaded and evaluated instead."""
    from harness.sweep.pruning import reporter_for

    if trained:
        from harness.model.init_from import load_trained

        print(f"[harness] {run_dir.name} finished training at {summary.get('trained_at')}; evaluating its saved weights")
        outcome.model, outcome.tokenizer = load_trained(run_dir, cfg, _device(cfg))
    else:
        status = fit(cfg, run_dir, summary, outcome, tracker, reporter_for(cfg), benchmark=make_benchmark(cfg))
        if status != "completed":
            return status
    if cfg.eval.after_train and cfg.eval.name != "none":
        _measured_val_cost(cfg, run_dir)
        t_eval = time.time()
        outcome.model.eval()
        run_suites(outcome.model, outcome.tokenizer, cfg, run_dir)
        summary["eval_time_s"] = time.time() - t_eval  # the trackers get eval.json's metrics at tracker.finish
    outcome.status = "completed"
    return "completed"


def _measured_val_cost(cfg: RunConfig, run_dir: Path) -> None:
    """The `val` suite scores the trainer's validation rows: their token count (manifest.json, written by fit)
    replaces the guess from the config in the progress display's ETA."""
    try:
        data = atomic.read_json(run_dir / "manifest.json").get("data") or {}
    except (OSError, ValueError, AttributeError):
        return
    rows, tokens = data.get("val_rows"), data.get("val_tokens")
    if rows and tokens:
        t = cfg.train
        share = min(1.0, t.eval_batches * t.batch_size / rows) if t.eval_batches > 0 else 1.0
        run_progress.current().plan([("eval val", "tok", None, tokens * share)])


def evaluate_run_dir(run_dir: str | Path, overrides: list[str], progress: bool = True,
                     trust_remote_code: bool = False) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise EvalError(f"{run_dir} is not a run directory (no config.yaml). Give runs/<name>/<run_id>.")
    cfg = eval_config_for_run(run_dir, overrides, trust_remote_code)
    if not has_suites(cfg):
        raise EvalError(f"{run_dir}: eval={cfg.eval.name} has no suites. Add e.g. eval=quick or eval=standard.")
    device = _device(cfg)
    quiet.for_method(cfg.method.quant != "none")
    show_run(run_dir, eval_stages(cfg))
    model, tokenizer, kind = load_run_model(run_dir, cfg, device)
    say(progress, f"loaded {cfg.model.name} ({kind}) from {run_dir} on {device}")
    t0 = time.time()
    # a baseline run's model saw no training data: no contamination to check
    run_suites(model, tokenizer, cfg, run_dir, progress, trained=kind != "base model")
    summary = read_summary(run_dir)
    if summary is not None and summary.get("status") in ("completed", "baseline"):
        summary["eval_time_s"] = time.time() - t0
        write_summary(run_dir, summary)
    return run_dir / "eval.json"


def evaluate_base(overrides: list[str], progress: bool = True) -> Path:
    """Evaluate the untrained base model into a new run directory runs/<model>-base/<run_id>/."""
    import torch
    import yaml

    from harness.model.load import identity, load_model_and_tokenizer

    cfg = config.compose(overrides)
    if not has_suites(cfg):
        raise EvalError(f"eval={cfg.eval.name} has no suites; add e.g. eval=quick (conf/eval/*.yaml).")
    name = cfg.name or f"{cfg.model.name}-base"
    run_id = cfg.run_id or new_run_id()
    run_dir = run_dir_for(cfg.output_dir, name, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(cfg), sort_keys=False))
    atomic.write_text(run_dir / "overrides.yaml", yaml.safe_dump(list(overrides)))
    device = _device(cfg)
    t_start = time.time()
    started = now_iso()
    quiet.for_method(cfg.method.quant != "none")
    show_run(run_dir, eval_stages(cfg))
    # method.quant != none: the base model quantized with bitsandbytes as that method would (no training);
    # this is how the data-type comparison (sweeps/reproduce-qlora-dtypes.yaml) measures quantization error.
    quantized = cfg.method.quant != "none"
    label = "base" if not quantized else f"base-{cfg.method.quant}" + ("-dq" if cfg.method.double_quant else "")
    axes = {"model": cfg.model.name, "method": label}
    if quantized:
        axes.update({"method.quant": cfg.method.quant, "method.double_quant": cfg.method.double_quant})
    summary = {
        "schema": SCHEMA, "status": "running", "reason": "", "name": name, "run_id": run_id,
        "run_dir": str(run_dir), "study": cfg.study, "trial": cfg.trial, "model": cfg.model.name, "method": label,
        "data": cfg.data.name, "seed": cfg.eval.seed, "axes": axes,
        "trainable_params": 0, "started_at": started,
    }
    write_summary(run_dir, summary)
    try:
        from harness.model.methods import build_quant_config

        quant = build_quant_config(cfg.method, torch.float32) if quantized else None
        model, tokenizer = load_model_and_tokenizer(cfg.model, quantization_config=quant, device=device)
        total = sum(p.numel() for p in model.parameters())
        manifest = {"schema": SCHEMA, **run_environment(device), "seeds": {"eval": cfg.eval.seed},
                    "model": identity(cfg.model)}
        write_manifest(run_dir, manifest)
        say(progress, f"evaluating base {cfg.model.name} on {device} into {run_dir}")
        t0 = time.time()
        torch.manual_seed(cfg.eval.seed)
        run_suites(model, tokenizer, cfg, run_dir, progress, trained=False)  # no training data: no contamination
        summary.update(status="baseline", total_params=total, trainable_share=0.0, eval_time_s=time.time() - t0,
                       model_bytes=int(model.get_memory_footprint()), peak_memory_mb=peak_rss_mb(),
                       peak_memory_kind="rss" if device == "cpu" else "cuda_max_allocated")
    except BaseException as exc:  # recorded if the disk allows (never a second error on top of this one), then raised
        summary.update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                       reason=f"{type(exc).__name__}: {exc}", wall_time_s=time.time() - t_start, finished_at=now_iso())
        write_or_warn(write_summary, run_dir, summary, what=str(run_dir / "summary.json"))
        raise
    summary.update(wall_time_s=time.time() - t_start, finished_at=now_iso())
    write_summary(run_dir, summary)
    return run_dir / "eval.json"


def crosscheck(overrides: list[str], limit: int, max_length: int, batch_size: int, progress: bool = True) -> dict:
    from harness.eval.lm_eval import crosscheck_wikitext
    from harness.model.load import load_model_and_tokenizer

    cfg = config.compose(overrides)
    model, tokenizer = load_model_and_tokenizer(cfg.model, device=_device(cfg))
    res = crosscheck_wikitext(model, tokenizer, max_length=max_length, batch_size=batch_size, limit=limit,
                                     model_cfg=cfg.model, progress=progress)
    res["model"] = cfg.model.name
    return res
