"""Sweep overhead: time per trial outside training and evaluation, and how a sweep scales with the
number of trials and of local workers, with trials started warm (forked from each worker's fork server,
harness/sweep/warm.py: the default) and cold (`--cold`: a fresh `python -m harness train`), side by side.

    python -m benchmarks.run --only sweep [--quick]

Part 1 runs `harness sweep` (its real driver, one child process per trial) on short tiny-model
trials for each (trials, workers) pair, plus the 8-trial grid with --workers 2 (not with --quick), each
pair cold then warm, and reads every trial's records:
  driver wall     trial.json wall_time_s: the sweep driver's clock around the child process
  process start   driver wall - summary wall_time_s: interpreter start, imports, config composition
  in-process      summary wall_time_s - train_time_s - eval_time_s: run directory, model load, data
                  preparation, trainer construction, saving, record writing
Part 2 times the same stages on the benchmark model (the real 135M one unless --quick), once in a
fresh process, to project the overhead of a 60-second trial, and checks which of them a second trial
gets from a cache (model conversion: harness.model.load's safetensors cache; data preparation:
harness.data.cache, timed against an uncached preparation in the same process).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks import common

TRIAL_BUDGET_S = 60.0
GRID = (8, 2)  # the grid of the warm-start target: 8 tiny trials, --workers 2
WARM_OVERHEAD_TARGET_S = 1.5
GRID_RATIO_TARGET = 0.4
STAGES = ("import_libraries_s", "compose_s", "model_load_s", "model_identity_hash_s",
          "environment_record_s", "data_prepare_s")


def spec_text(study: str, n_trials: int) -> str:
    """A grid sweep of n short tiny-model trials (one learning rate each)."""
    lrs = [round(1e-4 * (i + 1), 6) for i in range(n_trials)]
    return (
        f"study: {study}\n"
        "description: benchmark of the sweep driver's per-trial overhead (tiny model, a few steps)\n"
        "base: [model=tiny-llama, data=alpaca-tiny, tracker=none, eval=none, train.max_steps=2, train.batch_size=2,\n"
        "       train.max_length=128, train.log_every=1, train.save_model=false, data.max_rows=40]\n"
        f"grid: {{train.lr: {json.dumps(lrs)}}}\n"
        "seeds: [0]\n"
        "objectives: [{metric: summary.best_val_loss, direction: minimize}]\n"
    )


def trial_breakdown(run_dir: Path) -> dict | None:
    """One finished trial's driver wall, process start and in-process overhead (None if incomplete)."""
    tj, sj = run_dir / "trial.json", run_dir / "summary.json"
    if not tj.exists() or not sj.exists():
        return None
    trial, summary = json.loads(tj.read_text()), json.loads(sj.read_text())
    wall, inner = trial.get("wall_time_s"), summary.get("wall_time_s")
    train_s, eval_s = summary.get("train_time_s"), summary.get("eval_time_s") or 0.0
    if not all(isinstance(v, (int, float)) for v in (wall, inner, train_s)):
        return None
    return {"state": trial.get("state"), "driver_wall_s": wall, "process_start_s": wall - inner,
            "in_process_overhead_s": inner - train_s - eval_s, "train_s": train_s, "eval_s": eval_s,
            "overhead_s": trial.get("overhead_s")}


def measure_sweep(work: Path, n_trials: int, workers: int, timeout_s: float, start: str = "warm") -> dict:
    """One `harness sweep` of n_trials tiny trials on `workers` local workers, trials started `start` (warm|cold)."""
    study = f"bench-n{n_trials}-w{workers}-{start}"
    d = work / study
    d.mkdir(parents=True, exist_ok=True)
    spec = d / f"{study}.yaml"
    spec.write_text(spec_text(study, n_trials))
    url = f"sqlite:///{(d / 'study.db').resolve()}"
    cmd = [sys.executable, "-m", "harness", "sweep", str(spec), "--workers", str(workers), "--runs-root", str(d / "runs"),
           "--storage", url] + (["--cold"] if start == "cold" else [])
    res = common.run_command(cmd, d / "sweep.log", timeout_s)
    trials = [t for t in (trial_breakdown(p) for p in sorted((d / "runs").glob(f"{study}/*"))) if t]
    starts = sorted({json.loads((p / "trial.json").read_text()).get("start", "?")
                     for p in (d / "runs").glob(f"{study}/*") if (p / "trial.json").exists()})
    row = {"trials": n_trials, "workers": workers, "start": "/".join(starts) or start, "sweep_wall_s": res["wall_s"], "completed": sum(t["state"] == "COMPLETE" for t in trials),
           "returncode": res["returncode"]}
    if res["returncode"] != 0 or len(trials) < n_trials:
        row["error"] = f"sweep exit {res['returncode']}, {len(trials)}/{n_trials} trial records: {common.log_tail(res['log'])}"
    for key in ("driver_wall_s", "process_start_s", "in_process_overhead_s", "train_s", "overhead_s"):
        row[key] = common.median(t[key] for t in trials)
    row["trials_per_min"] = 60.0 * n_trials / res["wall_s"] if res["wall_s"] else None
    row["overhead_share"] = common.ratio(row["overhead_s"], row["driver_wall_s"])
    return row


def sweep_goals(walls: dict[tuple, dict]) -> list[dict]:
    """The warm-start targets from the measured pairs: warm overhead per trial (one worker: no second trainer
    competing for the cores), and the GRID sweep's warm / cold wall time."""
    goals = []
    single = [(n, by) for (n, w), by in sorted(walls.items()) if w == 1 and "warm" in by]
    if single:
        n, by = single[-1]
        warm = by["warm"]["overhead_s"]
        cold = by.get("cold", {}).get("overhead_s")
        goals.append(common.goal(f"overhead per trial beyond train + eval, warm start ({n} tiny trials, 1 worker)",
                                 warm, f"< {WARM_OVERHEAD_TARGET_S} s", None if warm is None else warm < WARM_OVERHEAD_TARGET_S,
                                 f"cold start in the same run: {cold:.2f} s" if cold is not None else ""))
    grid = walls.get(GRID, {})
    if "warm" in grid and "cold" in grid:
        r = common.ratio(grid["warm"]["sweep_wall_s"], grid["cold"]["sweep_wall_s"])
        goals.append(common.goal(f"{GRID[0]}-trial tiny grid, --workers {GRID[1]}: wall time warm / cold", r,
                                 f"<= {GRID_RATIO_TARGET}", None if r is None else r <= GRID_RATIO_TARGET,
                                 f"{grid['warm']['sweep_wall_s']:.1f} s warm vs {grid['cold']['sweep_wall_s']:.1f} s cold"))
    return goals


# ------------------------------------------------------------------------------ stage timings
def child_stages(model: str, data: str, max_length: int) -> dict:
    """Child: time each per-trial stage outside training, in a fresh process, on the given model."""
    t = {}
    t0 = time.perf_counter()
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import Trainer  # noqa: F401  (what the trainer, harness.train, imports: no TRL)

    t["import_libraries_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    from harness import config, pipeline  # noqa: F401  (what a trial imports)
    from harness import data as hdata
    from harness.data.cache import prepare
    from harness.model.load import identity, load_model_and_tokenizer, local_dir
    from harness.run.environment import environment

    cfg = config.compose([f"model={model}", f"data={data}", "tracker=none", "eval=none"])
    t["compose_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    local_dir(cfg.model)
    t["model_cache_lookup_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    net, tok = load_model_and_tokenizer(cfg.model)
    t["model_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    identity(cfg.model)
    t["model_identity_hash_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    environment()
    t["environment_record_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    p = hdata.prepare(cfg.data, tok, max_length=max_length, packing=False, add_bos=cfg.model.add_bos)
    t["data_prepare_uncached_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()  # what the trainer does: hit if an earlier process stored this preparation
    p = prepare(cfg.data, tok, max_length=max_length, packing=False, add_bos=cfg.model.add_bos)
    t["data_prepare_s"] = time.perf_counter() - t0
    t["data_cache"] = p.stats["cache"]
    t["train_rows"] = len(p.train)
    return t


def child_qlora_base(model: str, reps: int = 3) -> dict:
    """Child: a QLoRA trial's 4-bit base on a CPU, quantized at load (what every trial did) vs loaded as kept
    after the first quantization (harness.model.load.quantized_dir), alternating, medians of reps; and whether
    the two give the same tensors."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness import config
    from harness.model.load import load_model_and_tokenizer, local_dir, quantized_dir
    from harness.model.methods import build_quant_config

    cfg = config.compose([f"model={model}", "method=qlora"])
    quant = build_quant_config(cfg.method, torch.float32)
    load_model_and_tokenizer(cfg.model, quantization_config=quant)  # keeps it if no earlier run did
    quantizing, kept, same = [], [], True
    for _ in range(reps):
        t0 = time.perf_counter()
        fresh = AutoModelForCausalLM.from_pretrained(str(local_dir(cfg.model)), dtype=torch.float32, use_safetensors=True,
                                                     quantization_config=quant, device_map={"": "cpu"})
        quantizing.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        loaded, _ = load_model_and_tokenizer(cfg.model, quantization_config=quant)
        kept.append(time.perf_counter() - t0)
        a, b = fresh.state_dict(), loaded.state_dict()
        same = same and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        del fresh, loaded, a, b
    return {"quantize_at_load_s": common.median(quantizing), "kept_load_s": common.median(kept),
            "same_tensors": same,
            "kept_dir": str(quantized_dir(cfg.model, quant, torch.float32))}


def child_checkpoint_save(model: str, data: str, method: str = "full") -> dict:
    """Child: what the Trainer's checkpoint at a trial's last step cost before it was dropped (harness/train/
    callbacks.py skip_final_checkpoint): a 2-step run of `method` saving at step 1, its checkpoint timed and sized
    (the step-2 one is the last step's: not written)."""
    import tempfile

    from transformers import Trainer

    from harness import config
    from harness.pipeline import train_run

    saves, real = [], Trainer._save_checkpoint

    def timed(self, *a, **kw):
        t0 = time.perf_counter()
        out = real(self, *a, **kw)
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        saves.append({"step": self.state.global_step, "seconds": time.perf_counter() - t0, "bytes": size})
        return out

    Trainer._save_checkpoint = timed
    with tempfile.TemporaryDirectory() as out:
        ov = [f"model={model}", f"data={data}", f"method={method}", "tracker=none", "eval=none", "train=quick",
              "train.max_steps=2", "train.save_every=1", "train.eval_every=0", f"output_dir={out}"]
        status, _ = train_run(config.compose(ov), ov)
    Trainer._save_checkpoint = real
    return {"status": status, "saves": saves}


def last_checkpoint_ab(model: str, data: str, steps: int = 10, reps: int = 2) -> list[dict]:
    """In this process: full fine-tunes of `steps` steps whose last step is a checkpoint step (train=quick saves
    every 10), with the last-step checkpoint skipped (as shipped) and written (the skip made a no-op callback),
    alternating; each run's train_time_s, wall and final loss."""
    import tempfile

    from transformers import TrainerCallback

    import harness.train.fit as fit
    from harness import config
    from harness.pipeline import train_run
    from harness.run.record import read_summary

    shipped, rows = fit.skip_final_checkpoint, []
    try:
        for rep in range(reps):
            for mode in ("skipped", "written"):
                fit.skip_final_checkpoint = shipped if mode == "skipped" else TrainerCallback
                with tempfile.TemporaryDirectory() as out:
                    ov = [f"model={model}", f"data={data}", "method=full", "tracker=none", "eval=none", "train=quick",
                          f"train.max_steps={steps}", f"output_dir={out}", f"run_id={mode}{rep}"]
                    t0 = time.perf_counter()
                    status, run_dir = train_run(config.compose(ov), ov)
                    s = read_summary(run_dir) or {}
                    rows.append({"last_checkpoint": mode, "rep": rep, "status": status, "train_time_s": s.get("train_time_s"),
                                 "wall_s": time.perf_counter() - t0, "final_train_loss": s.get("final_train_loss")})
    finally:
        fit.skip_final_checkpoint = shipped
    return rows


def run(opts: common.Options) -> dict:
    work = opts.workdir / "sweep"
    rows, notes = [], []
    if common.missing_modules("harness.sweep"):
        return common.section("sweep", "Sweep overhead", notes=["not measured: harness.sweep missing"])
    pairs = [(n, w) for n in opts.sweep_trials for w in opts.sweep_workers if w <= n]
    if not getattr(opts, "quick", False) and GRID not in pairs:
        pairs.append(GRID)
    walls: dict[tuple, dict] = {}
    for n, w in pairs:
        for start in ("cold", "warm"):  # the same pair, one after the other: their ratio is from one run
            if opts.out_of_time():
                notes.append(f"not measured: sweep n={n} workers={w} {start}: the run's time budget was spent")
                continue
            row = measure_sweep(work, n, w, opts.timeout(), start)
            row["load_1m"] = common.load_now()
            if row.get("error"):
                notes.append(f"sweep n={n} workers={w} {start}: {row['error']}")
            else:
                walls.setdefault((n, w), {})[start] = row
            rows.append(row)
    goals = sweep_goals(walls)
    stages: list[dict] = []
    for i in range(2):  # two fresh processes: the second shows what a later trial gets from a cache
        if opts.out_of_time():
            break
        try:
            stages.append(common.run_child("sweep_overhead", "child_stages",
                                           {"model": opts.model, "data": opts.data, "max_length": opts.max_length},
                                           work, f"stages-{i}", opts.timeout()))
        except common.ChildError as exc:
            notes.append(f"not measured: per-stage timings: {exc}")
            break
    for i, st in enumerate(stages):
        total = sum(st[k] for k in STAGES)
        rows.append({"trials": f"stages, process {i + 1} ({opts.model})", "workers": "-", **{k: st[k] for k in STAGES},
                     "data_prepare_uncached_s": st["data_prepare_uncached_s"], "data_cache": st["data_cache"],
                     "overhead_s": total,
                     "overhead_share": total / (TRIAL_BUDGET_S + total)})
    if stages:
        last = stages[-1]
        total = sum(last[k] for k in STAGES)
        share = total / (TRIAL_BUDGET_S + total)
        goals.append(common.goal(f"per-trial overhead < 10% of a 60-second trial ({opts.model}, {opts.data})",
                                 share, "< 0.10", share < 0.10,
                                 f"{total:.1f} s outside training in a fresh process: "
                                 + ", ".join(f"{k.removesuffix('_s')} {last[k]:.1f}" for k in STAGES)
                                 + " s (trainer set-up and saving not included)"))
        cached_model = last["model_cache_lookup_s"] < 1.0
        goals.append(common.goal("model conversion cached across trials", f"{last['model_cache_lookup_s']:.3f} s lookup",
                                 "converted once", cached_model))
    if stages:  # a warm trial does not import: the same stages less import_libraries_s (paid once per worker)
        last = stages[-1]
        warm_total = sum(last[k] for k in STAGES if k != "import_libraries_s")
        share = warm_total / (TRIAL_BUDGET_S + warm_total)
        goals.append(common.goal(f"warm per-trial overhead < 3% of a 60-second trial ({opts.model}, projected)", share,
                                 "< 0.03", share < 0.03,
                                 f"{warm_total:.1f} s: the fresh process's stages without the imports (a projection: "
                                 "trainer set-up and saving not included)"))
    if len(stages) == 2:
        uncached, second = stages[1]["data_prepare_uncached_s"], stages[1]["data_prepare_s"]
        cached_data = stages[1]["data_cache"] == "hit" and second < 0.5 * uncached
        goals.append(common.goal("data preparation cached across trials",
                                 f"{second:.2f} s in process 2 ({stages[1]['data_cache']}) vs {uncached:.2f} s uncached",
                                 "process 2 reuses it", cached_data, "" if cached_data else
                                 f"process 2's harness.data.cache.prepare was a {stages[1]['data_cache']}"))
    if not opts.out_of_time():
        try:
            q = common.run_child("sweep_overhead", "child_qlora_base", {"model": opts.model}, work, "qlora-base",
                                 opts.timeout())
            notes.append(f"QLoRA base on {opts.model} (CPU): quantized at load {q['quantize_at_load_s']:.2f} s, loaded "
                         f"as kept {q['kept_load_s']:.2f} s with its tokenizer (medians, alternating); same tensors: "
                         f"{q['same_tensors']}")
            goals.append(common.goal("quantized QLoRA base reused across trials",
                                     f"{q['kept_load_s']:.2f} s vs {q['quantize_at_load_s']:.2f} s quantizing",
                                     "faster, same tensors", q["same_tensors"] and q["kept_load_s"] < q["quantize_at_load_s"]))
        except common.ChildError as exc:
            notes.append(f"not measured: QLoRA base load: {exc}")
    if not opts.out_of_time():
        try:
            c = common.run_child("sweep_overhead", "child_checkpoint_save", {"model": opts.model, "data": opts.data},
                                 work, "checkpoint", opts.timeout())
            first = c["saves"][0] if c["saves"] else None
            notes.append(f"full fine-tuning of {opts.model}: the Trainer's checkpoint at a trial's last step, no longer "
                         "written (fit saves those weights): " + (f"{first['seconds']:.2f} s, {first['bytes'] / 1e6:.0f} MB "
                         f"(the step-1 checkpoint of a 2-step run; steps saved: {[x['step'] for x in c['saves']]})"
                         if first else "no checkpoint was saved"))
        except common.ChildError as exc:
            notes.append(f"not measured: checkpoint cost: {exc}")
    columns = ["trials", "workers", "start", "sweep_wall_s", "trials_per_min", "driver_wall_s", "process_start_s",
               "in_process_overhead_s", "train_s", "overhead_s", "overhead_share", "completed", "load_1m"]
    if stages:
        columns += [*STAGES, "data_prepare_uncached_s", "data_cache"]
    notes.append("start: how the trials started (warm: forked from the worker's fork server; cold: --cold). "
                 "A warm sweep's wall time includes each worker's fork server imports, once. "
                 "overhead_s = driver wall − train − eval per trial (the driver's own trial.json overhead_s); "
                 "overhead_share of the measured tiny trials is high by design (their training lasts a second). "
                 "The stages row times the same stages on the benchmark model and projects them onto a 60 s trial.")
    return common.section("sweep", "Sweep overhead per trial and scaling with trials and workers", rows, columns=columns,
                          goals=goals, notes=notes,
                          params={"trials": list(opts.sweep_trials), "workers": list(opts.sweep_workers), "grid": list(GRID),
                                  "trial_model": "tiny-llama", "stages_model": opts.model})
