"""Evaluation stage: run the configured suites on a model and record them in the run directory.

    harness eval RUN_DIR                          # the suites in the run's own config (eval=...)
    harness eval RUN_DIR eval=standard            # other suites on a trained run (adapter/ or model/)
    harness eval model=smollm2-135m eval=quick    # the untrained base model -> runs/<model>-base/<run_id>/
    harness eval model=smollm2-135m --crosscheck  # our wikitext2 perplexity vs lm-eval's, same model

`run_suites(model, tokenizer, cfg, run_dir)` is what the trainer calls right after training, on the model
in memory (peft-wrapped, no reload). Suites, in order: `val` (loss on the run's validation split),
eval.perplexity (harness/perplexity.py), eval.lm_eval tasks (harness/lmeval.py), eval.generation
(harness/generation.py). Each finished suite is merged into eval.json at once (atomic), with a
config_hash (sha256[:16] of the suite config and, for lm-eval tasks, its task files) and versions.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

from harness import __version__, atomic, config, records
from harness.config import ConfigError, RunConfig

VERSIONED = ("lm_eval", "sacrebleu", "rouge_score", "transformers", "torch", "peft")


class EvalError(RuntimeError):
    """An evaluation that cannot start (bad run directory, nothing to evaluate ...)."""


# ---------------------------------------------------------------------------------- records
def versions() -> dict[str, str | None]:
    return {"harness": __version__, **records.package_versions(VERSIONED)}


def config_hash(suite_config: dict, files: list[Path] = ()) -> str:
    """sha256[:16] of the suite's config (JSON, sorted keys, batch_size left out: it does not change
    results) followed by the content of the files that define it (task YAML, utils.py)."""
    cfg = {k: v for k, v in suite_config.items() if k != "batch_size"}
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode("utf-8"))
    for f in files:
        h.update(b"\0" + Path(f).name.encode() + b"\0" + Path(f).read_bytes())
    return h.hexdigest()[:16]


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[harness] {msg}", flush=True)


# ------------------------------------------------------------------------------------ suites
def val_suite(model, tokenizer, cfg: RunConfig, progress: bool = True) -> dict | None:
    """Loss/perplexity on the run's own validation split (harness.data.prepare), or None with a note."""
    from harness import perplexity

    from harness import data, datacache

    t0 = time.time()
    try:
        prepared = datacache.prepare(cfg.data, tokenizer, max_length=cfg.train.max_length, seed=cfg.train.seed,
                                     packing=False, add_bos=cfg.model.add_bos, use_cache=cfg.data.cache)
    except data.DataError as exc:  # e.g. an eval-only data config: say so, run the other suites
        _say(True, f"val suite skipped: data={cfg.data.name} gives no validation split: {exc}")
        return None
    rows = list(prepared.val)
    if cfg.train.eval_batches > 0:  # the trainer's cap on validation batches applies here too
        rows = rows[:cfg.train.eval_batches * cfg.train.batch_size]
    if not rows:
        _say(True, f"val suite skipped: data={cfg.data.name} has no validation rows (data.val_size={cfg.data.val_size})")
        return None
    res = perplexity.val_loss(model, rows, batch_size=cfg.train.batch_size,
                              pad_id=tokenizer.pad_token_id or 0, progress=progress)
    wall = time.time() - t0
    hash_cfg = {"data": dataclasses.asdict(cfg.data), "max_length": cfg.train.max_length, "seed": cfg.train.seed,
                "rows": len(rows)}
    return {"kind": "val", "metrics": {"loss": res["loss"], "perplexity": res["perplexity"]}, "n": len(rows),
            "tokens": res["tokens"], "config_hash": config_hash(hash_cfg), "wall_time_s": wall,
            "tokens_per_s": res["tokens"] / wall if wall > 0 else None}


def run_suites(model, tokenizer, cfg: RunConfig, run_dir: str | Path, progress: bool = True) -> dict:
    """Run every suite of cfg.eval on the model in memory; record each into eval.json; return them all."""
    from harness import lmeval

    run_dir = Path(run_dir)
    ev = cfg.eval
    vers = versions()
    suites: dict = {}

    def record(name: str, entry: dict) -> None:
        suites[name] = entry
        records.update_eval(run_dir, {name: entry}, vers)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in entry.get("metrics", {}).items()
                          if isinstance(v, (int, float)) and not k.endswith("_stderr"))
        _say(progress, f"{name}: {shown} (n={entry.get('n')}, {entry.get('wall_time_s', 0):.1f} s)")

    names = [s.name for s in ev.perplexity] + [lmeval.short_name(t) for t in ev.lm_eval.tasks] + [s.name for s in ev.generation]
    dupes = sorted({n for n in names if names.count(n) > 1} | ({"val"} & set(names)))
    if dupes:
        raise ConfigError([f"eval={ev.name}: suite names must be unique and not 'val'; repeated: {', '.join(dupes)}"])

    was_training = model.training
    model.eval()  # no dropout while scoring; the caller's mode is given back at the end
    try:
        _run_all(model, tokenizer, cfg, run_dir, progress, record)
    finally:
        model.train(was_training)
    return suites


def _run_all(model, tokenizer, cfg: RunConfig, run_dir: Path, progress: bool, record) -> None:
    from harness import lmeval, perplexity

    ev = cfg.eval
    if ev.val_loss:
        entry = val_suite(model, tokenizer, cfg, progress)
        if entry is not None:
            record("val", entry)

    for suite in ev.perplexity:
        entry, rows = perplexity.run_suite(model, tokenizer, suite, cfg.model, progress=progress)
        hash_cfg = {**dataclasses.asdict(suite), "bos_every_window": entry["bos_every_window"],
                    "max_length": entry["max_length"], "stride": entry["stride"]}
        entry["config_hash"] = config_hash(hash_cfg)
        atomic.write_jsonl(run_dir / "samples" / f"{suite.name}.jsonl", rows)
        entry["samples"] = f"samples/{suite.name}.jsonl"
        record(suite.name, entry)

    if ev.lm_eval.tasks:
        lm_hash = {k: v for k, v in dataclasses.asdict(ev.lm_eval).items() if k != "tasks"}

        def on_result(name: str, entry: dict) -> None:
            entry["config_hash"] = config_hash({"task": name, **lm_hash}, lmeval.task_files(name))
            record(name, entry)

        lmeval.run_tasks(model, tokenizer, ev.lm_eval, cfg.model, run_dir, on_result=on_result)

    for gsuite in ev.generation:
        from harness.generation import run_generation_suite  # the generation stage (another module)

        entry = run_generation_suite(model, tokenizer, gsuite, cfg, run_dir)
        entry.setdefault("config_hash", config_hash(dataclasses.asdict(gsuite)))
        record(gsuite.name, entry)


def has_suites(cfg: RunConfig) -> bool:
    ev = cfg.eval
    return bool(ev.val_loss or ev.perplexity or ev.lm_eval.tasks or ev.generation)


# ------------------------------------------------------------------------------ model loading
def _device(cfg: RunConfig) -> str:
    from harness.train import resolve_device  # the same rule as training (ConfigError for a missing GPU)

    return resolve_device(cfg)


def load_run_model(run_dir: Path, cfg: RunConfig, device: str):
    """Base model + the run's adapter/ (peft), full weights from model/, or the base model alone for a
    baseline run (summary.json method "base")."""
    import torch

    from harness import methods, models

    adapter, full = run_dir / "adapter", run_dir / "model"
    if (full / "config.json").exists():
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(full), dtype=torch.float32, use_safetensors=True)
        if (full / "tokenizer_config.json").exists():  # the trainer saves the tokenizer beside full weights
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(full))
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer = models.load_tokenizer(cfg.model)
        return model.to(device).eval(), tokenizer, "full weights"
    if (adapter / "adapter_config.json").exists():
        from peft import PeftModel

        quant = methods.build_quant_config(cfg.method, torch.float32)
        base, tokenizer = models.load_model_and_tokenizer(cfg.model, quantization_config=quant, device=device)
        return PeftModel.from_pretrained(base, str(adapter)).eval(), tokenizer, "adapter"
    summary = records.read_summary(run_dir) or {}
    if summary.get("method") == "base":  # a baseline run directory: the untrained model itself
        model, tokenizer = models.load_model_and_tokenizer(cfg.model, device=device)
        return model, tokenizer, "base model"
    raise EvalError(
        f"{run_dir} has neither adapter/adapter_config.json nor model/config.json: nothing trained to load. "
        f"(Did the run finish? train.save_model=false runs cannot be re-evaluated; evaluate the base model with "
        f"`harness eval model={cfg.model.name} eval=...`.)"
    )


def _eval_overrides_only(overrides: list[str], run_dir: Path) -> None:
    bad = [o for o in overrides if not o.lstrip("+~").split("=", 1)[0].split(".")[0] == "eval"]
    if bad:
        raise EvalError(
            f"harness eval {run_dir}: only eval settings can change for a trained run, got {bad}. "
            "Use eval=<name> or eval.<key>=<value> (e.g. eval=standard eval.lm_eval.limit=100)."
        )


def eval_config_for_run(run_dir: Path, overrides: list[str]) -> RunConfig:
    """The run's config.yaml with its eval group recomposed from overrides.yaml + the new overrides."""
    import yaml

    cfg = config.load_run_config(run_dir)
    if overrides:
        _eval_overrides_only(overrides, run_dir)
        ov_file = run_dir / "overrides.yaml"
        run_overrides = (yaml.safe_load(ov_file.read_text(encoding="utf-8")) or []) if ov_file.exists() else []
        cfg.eval = config.compose(list(run_overrides) + list(overrides)).eval
    return cfg


def evaluate_run_dir(run_dir: str | Path, overrides: list[str], progress: bool = True) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise EvalError(f"{run_dir} is not a run directory (no config.yaml). Give runs/<name>/<run_id>.")
    cfg = eval_config_for_run(run_dir, overrides)
    if not has_suites(cfg):
        raise EvalError(f"{run_dir}: eval={cfg.eval.name} has no suites. Add e.g. eval=quick or eval=standard.")
    device = _device(cfg)
    model, tokenizer, kind = load_run_model(run_dir, cfg, device)
    _say(progress, f"loaded {cfg.model.name} ({kind}) from {run_dir} on {device}")
    t0 = time.time()
    run_suites(model, tokenizer, cfg, run_dir, progress)
    summary = records.read_summary(run_dir)
    if summary is not None and summary.get("status") in ("completed", "baseline"):
        summary["eval_time_s"] = time.time() - t0
        atomic.write_json(run_dir / "summary.json", summary)
    return run_dir / "eval.json"


def rescore_run_dir(run_dir: str | Path, overrides: list[str], progress: bool = True) -> Path:
    """Recompute the metrics of the run's generation suites from their saved samples, with the metric
    lists of the (re)composed eval config: no model is loaded and nothing is generated again. Refused
    for a suite whose decoding settings differ from the ones its samples were generated with."""
    from harness import generation

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise EvalError(f"{run_dir} is not a run directory (no config.yaml). Give runs/<name>/<run_id>.")
    cfg = eval_config_for_run(run_dir, overrides)
    ev = records.read_eval(run_dir) or {}
    old_cfg = config.load_run_config(run_dir)
    generated_with = {s.name: s for s in old_cfg.eval.generation}
    done = 0
    for suite in cfg.eval.generation:
        entry = (ev.get("suites") or {}).get(suite.name)
        if entry is None or entry.get("kind") != "generation":
            raise EvalError(f"{run_dir}: no generation results for suite {suite.name!r} in eval.json to rescore; "
                            "run `harness eval` without --rescore")
        before = generated_with.get(suite.name)
        old_fields = generation.decoding_fields(before) if before is not None else None
        new_fields = generation.decoding_fields(suite)
        if old_fields is not None and old_fields != new_fields:
            diff = sorted(k for k, v in new_fields.items() if old_fields.get(k) != v)
            raise EvalError(f"{run_dir}: suite {suite.name!r} would decode differently than its samples were made "
                            f"({', '.join(diff)} changed); rescoring would mislabel them. Run `harness eval` without --rescore.")
        rows = records.read_samples(run_dir, suite.name)
        new = generation.rescore_entry(entry, rows, suite, cfg.eval.bootstrap_samples, cfg.eval.seed)
        records.update_eval(run_dir, {suite.name: new}, versions())
        shown = ", ".join(f"{k}={v:.4g}" for k, v in new["metrics"].items())
        _say(progress, f"{suite.name} rescored from {len(rows)} samples: {shown}")
        done += 1
    if not done:
        raise EvalError(f"{run_dir}: eval={cfg.eval.name} has no generation suites to rescore")
    return run_dir / "eval.json"


def evaluate_base(overrides: list[str], progress: bool = True) -> Path:
    """Evaluate the untrained base model into a new run directory runs/<model>-base/<run_id>/."""
    import torch
    import yaml

    from harness import models

    cfg = config.compose(overrides)
    if not has_suites(cfg):
        raise EvalError(f"eval={cfg.eval.name} has no suites; add e.g. eval=quick (conf/eval/*.yaml).")
    name = cfg.name or f"{cfg.model.name}-base"
    run_id = cfg.run_id or records.new_run_id()
    run_dir = records.run_dir_for(cfg.output_dir, name, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(cfg), sort_keys=False))
    atomic.write_text(run_dir / "overrides.yaml", yaml.safe_dump(list(overrides)))
    device = _device(cfg)
    t_start = time.time()
    started = records.now_iso()
    # method.quant != none: the base model quantized with bitsandbytes as that method would (no training);
    # this is how the data-type comparison (sweeps/reproduce-qlora-dtypes.yaml) measures quantization error.
    quantized = cfg.method.quant != "none"
    label = "base" if not quantized else f"base-{cfg.method.quant}" + ("-dq" if cfg.method.double_quant else "")
    axes = {"model": cfg.model.name, "method": label}
    if quantized:
        axes.update({"method.quant": cfg.method.quant, "method.double_quant": cfg.method.double_quant})
    summary = {
        "schema": records.SCHEMA, "status": "running", "reason": "", "name": name, "run_id": run_id,
        "run_dir": str(run_dir), "study": cfg.study, "trial": cfg.trial, "model": cfg.model.name, "method": label,
        "data": cfg.data.name, "seed": cfg.eval.seed, "axes": axes,
        "trainable_params": 0, "started_at": started,
    }
    atomic.write_json(run_dir / "summary.json", summary)
    try:
        from harness import methods

        quant = methods.build_quant_config(cfg.method, torch.float32) if quantized else None
        model, tokenizer = models.load_model_and_tokenizer(cfg.model, quantization_config=quant, device=device)
        total = sum(p.numel() for p in model.parameters())
        manifest = {"schema": records.SCHEMA, **records.environment(), "torch": torch.__version__,
                    "cuda": torch.version.cuda if torch.cuda.is_available() else None, "device": device,
                    "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
                    "seeds": {"eval": cfg.eval.seed}, "model": models.identity(cfg.model)}
        atomic.write_json(run_dir / "manifest.json", manifest)
        _say(progress, f"evaluating base {cfg.model.name} on {device} into {run_dir}")
        t0 = time.time()
        torch.manual_seed(cfg.eval.seed)
        run_suites(model, tokenizer, cfg, run_dir, progress)
        from harness.train import peak_rss_mb

        summary.update(status="baseline", total_params=total, trainable_share=0.0, eval_time_s=time.time() - t0,
                       model_bytes=int(model.get_memory_footprint()), peak_memory_mb=peak_rss_mb(),
                       peak_memory_kind="rss" if device == "cpu" else "cuda_max_allocated")
    except BaseException as exc:
        summary.update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                       reason=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        summary.update(wall_time_s=time.time() - t_start, finished_at=records.now_iso())
        atomic.write_json(run_dir / "summary.json", summary)
    return run_dir / "eval.json"


def crosscheck(overrides: list[str], limit: int, max_length: int, batch_size: int, progress: bool = True) -> dict:
    from harness import lmeval, models

    cfg = config.compose(overrides)
    model, tokenizer = models.load_model_and_tokenizer(cfg.model, device=_device(cfg))
    res = lmeval.crosscheck_wikitext(model, tokenizer, max_length=max_length, batch_size=batch_size, limit=limit,
                                     model_cfg=cfg.model, progress=progress)
    res["model"] = cfg.model.name
    return res


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="*", metavar="RUN_DIR|OVERRIDE",
                   help="a run directory and/or Hydra overrides (eval=standard, model=smollm2-135m, eval.lm_eval.limit=50)")
    p.add_argument("--crosscheck", action="store_true",
                   help="compare our wikitext2 word perplexity with lm-eval's loglikelihood_rolling on the same model")
    p.add_argument("--docs", type=int, default=0, help="--crosscheck: first N wikitext documents (0 = all 62)")
    p.add_argument("--max-length", type=int, default=1024, help="--crosscheck: window length (default 1024)")
    p.add_argument("--batch-size", type=int, default=4, help="--crosscheck: windows per forward pass")
    p.add_argument("--rescore", action="store_true",
                   help="RUN_DIR: recompute the generation suites' metrics from their saved samples with the "
                        "eval config's metric lists (e.g. after adding a metric); no model is loaded")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-suite lines")


def split_targets(targets: list[str]) -> tuple[Path | None, list[str]]:
    run_dir, overrides = None, []
    for t in targets:
        if "=" in t:
            overrides.append(t)
        elif run_dir is None:
            p = Path(t)
            if not p.is_dir():
                raise EvalError(f"{t!r} is neither an existing run directory nor an override (key=value).")
            run_dir = p
        else:
            raise EvalError(f"one run directory at a time; got {run_dir} and {t}")
    return run_dir, overrides


def run(args: argparse.Namespace) -> int:
    progress = not args.quiet
    try:
        run_dir, overrides = split_targets(args.targets)
        if args.crosscheck:
            if run_dir is not None:
                raise EvalError("--crosscheck evaluates a base model: give model=NAME, not a run directory")
            res = crosscheck(overrides, args.docs, args.max_length, args.batch_size, progress)
            print(records.dumps(res))
            worst = max(res["rel_diff"].values())
            print(f"[harness] crosscheck {res['model']}: word_perplexity ours {res['ours']['word_perplexity']:.4f} "
                  f"lm-eval {res['lm_eval']['word_perplexity']:.4f}, max relative difference {worst:.2e} "
                  f"({'OK' if worst <= 1e-3 else 'MISMATCH'} at 0.1%)")
            return 0 if worst <= 1e-3 else 1
        if args.rescore:
            if run_dir is None:
                raise EvalError("--rescore needs a run directory: harness eval RUN_DIR --rescore [eval=...]")
            out = rescore_run_dir(run_dir, overrides, progress)
        elif run_dir is not None:
            out = evaluate_run_dir(run_dir, overrides, progress)
        else:
            if not any(o.split("=", 1)[0].lstrip("+") in ("model", "experiment") for o in overrides):
                raise EvalError("give a run directory, or model=NAME (or an experiment=NAME that sets one) to "
                                "evaluate a base model (e.g. harness eval model=smollm2-135m eval=quick)")
            out = evaluate_base(overrides, progress)
    except (ConfigError, EvalError, FileNotFoundError, ValueError) as exc:
        print(f"harness eval: {exc}", file=sys.stderr)
        return 2
    print(f"[harness] results: {out}")
    return 0
