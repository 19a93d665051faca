"""Synthetic run records for report tests and the report benchmark (docs/run-record.md layout).

    from tests.fixtures_runs import make_study, make_optuna_storage
    run_dirs = make_study(tmp_path / "runs", study="demo", n_configs=6, seeds=3)
    python -m tests.fixtures_runs runs-bench --study bench --configs 200 --seeds 5   # 1,000 runs

Each configuration (method x LoRA rank x learning rate) gets `seeds` completed runs with
summary.json, config.yaml, overrides.yaml, manifest.json, metrics.jsonl (train/val loss curves),
eval.json (hellaswag-like accuracy, e2e-like generation, validation loss) and samples/*.jsonl with
stable item ids. Extra runs: one failed (reason starts with "=" to test CSV neutralisation), one
diverged, one pruned, one interrupted, and a baseline (status "baseline") whose first e2e
prediction is `<script>window.__pwned=1</script>` (planted to test HTML escaping).
Everything is derived from a seeded generator: the same arguments write the same bytes.

eval.json suite entries carry `metric_meta` as the evaluator writes it (META; metric_meta=False writes
records from before it existed) and, with `contamination={suite: share}`, the `contamination` field of a
trained run's entries (docs/run-record.md).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import yaml

PLANTED = "<script>window.__pwned=1;document.title='PWNED'</script>"
FORMULA_REASON = "=HYPERLINK(\"http://evil.example\",\"click\") RuntimeError: CUDA out of memory"
METHODS = ("full", "lora", "qlora")
BLEU_SIG = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
MODEL_SHA = "feedface" * 8
DATA_SHA = "bcc37c64db1a739a" + "0" * 48


def _meta(higher_is_better, scale, per_item=None) -> dict:
    return {"higher_is_better": higher_is_better, "scale": scale, "per_item": per_item}


# metric_meta as harness.eval.suites records it (tests/test_metrics.py checks these against the registry)
META = {
    "hellaswag": {"acc": _meta(True, "binary", "acc"), "acc_stderr": _meta(None, "fraction"),
                  "acc_norm": _meta(True, "binary", "acc_norm")},
    "e2e": {"bleu": _meta(True, "percent", "bleu"), "chrf": _meta(True, "percent", "chrf"),
            "rougeL": _meta(True, "fraction", "rougeL")},
    "val": {"loss": _meta(False, "raw"), "perplexity": _meta(False, "raw")},
}


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".yaml":
        path.write_text(yaml.dump(obj, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=True))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in obj))
    else:
        path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def config_axes(i: int) -> dict:
    """The i-th configuration of the synthetic grid."""
    method = METHODS[i % 3]
    k = i // 3
    axes = {"model": "tiny-llama", "method": method, "train.lr": float(f"{1e-4 * (1 + 0.5 * (k % 8)):.6g}")}
    if method != "full":
        axes["method.r"] = (8, 16, 32, 64)[(k // 8) % 4] + 64 * (k // 32)  # unique beyond 32 configs
    elif k >= 8:
        axes["train.warmup_ratio"] = round(0.01 * (k // 8), 4)
    return axes


def _effect(axes: dict) -> float:
    """True quality of a configuration (in 'skill' units): method, rank and lr all matter a little."""
    base = {"full": 0.6, "lora": 0.45, "qlora": 0.35, "base": 0.0}[axes["method"]]
    lr = axes.get("train.lr", 2e-4)
    base -= 0.8 * (math.log10(lr) - math.log10(2e-4)) ** 2
    return base + 0.02 * math.log2(axes.get("method.r", 16) / 16 + 1e-9 if "method.r" in axes else 1.0)


def _run(root: Path, study: str, trial: int, seed: int, axes: dict, status: str, items: int, *,
         reason: str = "", pruned_at: int | None = None, config_hash: str = "cfg-hs-1",
         plant: bool = False, references: list | None = None, in_study: bool = True,
         metric_meta: bool = True, contamination: dict | None = None, model_sha: str = MODEL_SHA,
         data_sha: str = DATA_SHA, eval_config: dict | None = None, name: str = "") -> Path:
    method = axes["method"]
    name = name or (f"{study}-{method}" if method != "base" else "tiny-llama-base")
    run_id = f"t{trial:04d}-s{seed}" if trial >= 0 else "baseline"
    run_dir = root / name / run_id
    rng = np.random.default_rng([trial + 10, seed])
    trainable = {"full": 1_000_000, "base": 0}.get(method, 4_000 * axes.get("method.r", 16))
    mem = {"full": 2400.0, "lora": 1500.0, "qlora": 900.0, "base": 700.0}[method] + float(rng.normal(0, 20))
    skill = _effect(axes)
    steps = 0 if status == "baseline" else (pruned_at or 40)
    summary = {
        "schema": 1, "status": status, "reason": reason, "name": name, "run_id": run_id,
        "run_dir": str(run_dir), "study": study if in_study else "", "trial": trial,
        "model": axes["model"], "method": method, "data": "alpaca-demo", "seed": seed, "axes": dict(axes),
        "trainable_params": trainable, "total_params": 1_000_000, "trainable_share": trainable / 1_000_000,
        "peak_memory_mb": round(mem, 1), "peak_memory_kind": "rss",
        "wall_time_s": round(60 + 30 * (method == "full") + float(rng.normal(0, 2)), 2),
        "train_time_s": round(45 + 25 * (method == "full") + float(rng.normal(0, 2)), 2),
        "eval_time_s": 10.0, "train_tokens": 40_000 * (steps > 0),
        "tokens_per_s": round((900.0 if method == "full" else 1300.0) + float(rng.normal(0, 30)), 1) if steps else 0.0,
        "steps": steps, "epochs_done": round(steps / 100, 3),
        "final_train_loss": None, "final_val_loss": None, "best_val_loss": None,
        "pruned_at_step": pruned_at,
        "adapter_bytes": (4 * trainable if method != "base" else 0),
        "started_at": "2026-11-21T23:30:00Z", "finished_at": "2026-11-21T23:31:21Z",
    }
    curve = []
    lr = axes.get("train.lr", 2e-4)
    for step in range(5, steps + 1, 5):
        loss = 1.5 + 2.0 * math.exp(-step * lr * 120) - 0.3 * skill + float(rng.normal(0, 0.03))
        if status == "diverged" and step >= 15:
            loss = "nan"  # harness.atomic stores non-finite floats as strings
        curve.append({"step": step, "epoch": step / 100, "train_loss": loss, "lr": lr, "tokens_per_s": 1000.0,
                      "mem_mb": mem, "time_s": step * 1.5})
        if step % 10 == 0:
            v = loss if isinstance(loss, str) else loss + 0.05
            curve.append({"step": step, "val_loss": v, "val_ppl": v if isinstance(v, str) else math.exp(min(v, 50))})
    if curve:
        summary["final_train_loss"] = [r for r in curve if "train_loss" in r][-1]["train_loss"]
        vals = [r["val_loss"] for r in curve if "val_loss" in r and not isinstance(r["val_loss"], str)]
        if vals:
            summary["final_val_loss"] = vals[-1]
            summary["best_val_loss"] = min(vals)
    if status == "diverged":
        summary["final_train_loss"] = summary["final_val_loss"] = "nan"
    config = {"model": {"name": axes["model"]}, "method": {"name": method, "r": axes.get("method.r", 16)},
              "train": {"lr": lr, "seed": seed}, "study": study, "trial": trial, "references": references or [],
              "notes": "synthetic fixture <b>not bold</b>"}
    if eval_config is not None:
        config["eval"] = eval_config
    manifest = {
        "schema": 1, "harness_version": "0.1.0", "command": ["harness", "train"],
        "git": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False},
        "python": "3.11.7", "platform": "Linux-test", "hostname": "fixture", "torch": "2.13.0+cpu", "cuda": None,
        "device": "cpu", "cpu": "Fixture CPU @ 2.0GHz", "cpu_model_id": "family 25 model 17 stepping 1", "gpu": None,
        "packages": {"transformers": "5.23.0", "peft": "0.21.2", "trl": "1.16.0"},
        "seeds": {"train": seed},
        "data": {"name": "alpaca-demo", "files": [{"path": "alpaca/alpaca_en_demo.json", "sha256": data_sha, "rows": 999}]},
        "model": {"name": axes["model"], "source": "tiny", "path": "", "sha256": model_sha},
    }
    _write(run_dir / "summary.json", summary)
    _write(run_dir / "config.yaml", config)
    _write(run_dir / "overrides.yaml", [f"{k}={v}" for k, v in sorted(axes.items())])
    _write(run_dir / "manifest.json", manifest)
    _write(run_dir / "metrics.jsonl", curve)
    if status not in ("completed", "baseline"):
        return run_dir
    # evaluation: item difficulty is fixed per item (same for every run), outcome depends on skill
    item_rng = np.random.default_rng(1234)
    difficulty = item_rng.normal(0, 1, size=items)
    hard_gen = item_rng.normal(0, 8, size=items)
    p_correct = 1 / (1 + np.exp(-(skill - difficulty)))
    acc = (rng.random(items) < p_correct).astype(int)
    acc_norm = (rng.random(items) < p_correct).astype(int)
    hs = [{"id": i, "acc": int(acc[i]), "acc_norm": int(acc_norm[i]), "target": i % 4,
           "pred": i % 4 if acc[i] else (i + 1) % 4} for i in range(items)]
    bleu = np.clip(35 + 25 * skill + hard_gen + rng.normal(0, 6, size=items), 0, 100)
    chrf = np.clip(bleu + 15 + rng.normal(0, 3, size=items), 0, 100)
    rouge = np.clip(bleu / 100 + 0.1 + rng.normal(0, 0.02, size=items), 0, 1)
    gen = []
    for i in range(items):
        pred = f"The Eagle is a coffee shop ({method}, item {i})."
        if plant and i == 0:
            pred = PLANTED + " " + pred
        gen.append({"id": f"e2e-{i:04d}", "prompt": f"name[The Eagle], eatType[coffee shop], area[riverside #{i}]",
                    "prediction": pred, "references": [f"The Eagle is a riverside coffee shop #{i}."],
                    "bleu": round(float(bleu[i]), 4), "chrf": round(float(chrf[i]), 4), "rougeL": round(float(rouge[i]), 4)})
    val_loss = summary["final_val_loss"] or 3.5
    ev = {"schema": 1, "versions": {"harness": "0.1.0", "lm_eval": "0.4.13", "sacrebleu": "2.6.0"},
          "suites": {
              "hellaswag": {"kind": "lm_eval", "metrics": {"acc": float(acc.mean()), "acc_stderr": float(acc.std() / math.sqrt(items)),
                                                         "acc_norm": float(acc_norm.mean())},
                            "n": items, "limit": items,
                            "num_fewshot": ((eval_config or {}).get("lm_eval") or {}).get("num_fewshot", 0),
                            "config_hash": config_hash,
                            "samples": "samples/hellaswag.jsonl"},
              "e2e": {"kind": "generation", "metrics": {"bleu": float(np.mean([g["bleu"] for g in gen])),
                                                       "chrf": float(np.mean([g["chrf"] for g in gen])),
                                                       "rougeL": float(np.mean([g["rougeL"] for g in gen]))},
                      "signatures": {"bleu": BLEU_SIG}, "n": items, "config_hash": "cfg-e2e-1", "samples": "samples/e2e.jsonl"},
              "val": {"kind": "val", "metrics": {"loss": val_loss, "perplexity": math.exp(val_loss)}, "n": 100},
          }}
    for suite, entry in ev["suites"].items():
        if metric_meta:
            entry["metric_meta"] = {m: META[suite][m] for m in entry["metrics"]}
        if status == "completed" and suite in (contamination or {}):
            share = contamination[suite]
            hit = round(share * items)
            entry["contamination"] = {"n": 13, "min_words": 8, "items": items, "contaminated": hit, "too_short": 2,
                                      "share": hit / items, "contaminated_ids": list(range(min(hit, 20))),
                                      "train_data": "alpaca-demo", "warn_above": 0.01}
    _write(run_dir / "eval.json", ev)
    _write(run_dir / "samples" / "hellaswag.jsonl", hs)
    _write(run_dir / "samples" / "e2e.jsonl", gen)
    return run_dir


def make_study(root, study: str = "demo", n_configs: int = 6, seeds: int = 3, items: int = 60, *,
               failures: bool = True, baseline: bool = True, mismatch: bool = False,
               references: bool = True, baseline_in_study: bool = True, metric_meta: bool = True,
               contamination: dict | None = None, fewshot_mismatch: bool = False, changed_data: bool = False,
               baseline_sha: str = MODEL_SHA) -> list[Path]:
    """Write a synthetic study under `root`; return the run directories written (sorted).

    mismatch=True gives the last configuration's runs a different hellaswag config_hash (the
    report must warn that those numbers are not comparable). baseline_in_study=False writes the
    baseline as `harness eval model=...` does outside a sweep (empty study). metric_meta=False writes
    eval.json as the evaluator did before it recorded metric_meta. contamination={suite: share} adds the
    contamination field to trained runs' entries of those suites. fewshot_mismatch=True records an
    eval section in config.yaml and evaluates the last configuration's hellaswag with num_fewshot 5
    (no sweep axis varies it). changed_data=True gives configuration 0's odd-seed runs other data files.
    baseline_sha: the baseline's weights hash (the trained runs start from MODEL_SHA).
    """
    root = Path(root)
    out = []
    trial = 0
    refs = [{"metric": "e2e.bleu", "value": 45.0, "tolerance": 10.0, "source": "Hu et al. 2021, Table 3 <i>(fixture)</i>",
             "note": "GPT-2 M + LoRA"},
            {"metric": "hellaswag.acc", "value": 0.30, "source": "HF leaderboard (fixture)", "note": "no tolerance given"}]
    for c in range(n_configs):
        axes = config_axes(c)
        for s in range(seeds):
            odd = c == n_configs - 1 and (mismatch or fewshot_mismatch)
            h = "cfg-hs-2" if odd else "cfg-hs-1"
            ev_cfg = {"lm_eval": {"limit": items, "num_fewshot": 5 if odd else 0, "seed": 0, "batch_size": 8},
                      "seed": 0} if fewshot_mismatch else None
            out.append(_run(root, study, trial, s, axes, "completed", items, config_hash=h,
                            references=refs if (references and c == 0) else None, metric_meta=metric_meta,
                            contamination=contamination, eval_config=ev_cfg,
                            data_sha="0badc0de" * 8 if (changed_data and c == 0 and s % 2) else DATA_SHA))
            trial += 1
    if failures:
        extra = [("failed", FORMULA_REASON, None), ("diverged", "loss became nan at step 15", None),
                 ("pruned", "pruned at step 10 by MedianPruner", 10), ("interrupted", "SIGTERM received at step 20", None)]
        for status, reason, pruned in extra:
            out.append(_run(root, study, trial, 0, config_axes(trial % max(1, n_configs)), status, items,
                            reason=reason, pruned_at=pruned, metric_meta=metric_meta))
            trial += 1
    if baseline:
        out.append(_run(root, study, -1, 0, {"model": "tiny-llama", "method": "base"}, "baseline", items, plant=True,
                        in_study=baseline_in_study, metric_meta=metric_meta, model_sha=baseline_sha))
    return sorted(out)


def make_optuna_storage(db_path, study: str, run_dirs, metric: str = "e2e.bleu", direction: str = "maximize") -> str:
    """An Optuna SQLite study whose trials mirror the fixture runs (trial numbers in order)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{Path(db_path).resolve()}"
    st = optuna.create_study(study_name=study, storage=url, direction=direction, load_if_exists=True)
    st.set_user_attr("objectives", [metric])  # as harness sweep records them
    summaries = [json.loads((Path(d) / "summary.json").read_text()) for d in run_dirs]
    summaries = sorted((s for s in summaries if s["trial"] >= 0), key=lambda s: s["trial"])
    states = {"completed": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED}
    for s in summaries:
        axes = s["axes"]
        params = {"method": axes["method"], "train.lr": axes["train.lr"], "seed": s["seed"]}
        dists = {"method": CategoricalDistribution(list(METHODS)), "train.lr": FloatDistribution(1e-5, 1e-2, log=True),
                 "seed": IntDistribution(0, 100)}
        state = states.get(s["status"], optuna.trial.TrialState.FAIL)
        value = None
        if state == optuna.trial.TrialState.COMPLETE:
            ev = json.loads((Path(s["run_dir"]) / "eval.json").read_text())
            suite, m = metric.split(".", 1)
            value = ev["suites"][suite]["metrics"][m]
        st.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value, state=state))
    return url


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="write a synthetic study of run records (report tests/benchmarks)")
    p.add_argument("root")
    p.add_argument("--study", default="bench")
    p.add_argument("--configs", type=int, default=100)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--items", type=int, default=100)
    a = p.parse_args(argv)
    dirs = make_study(a.root, a.study, a.configs, a.seeds, a.items)
    print(f"wrote {len(dirs)} run directories under {a.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
