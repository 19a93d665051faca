"""Benchmark entry point: measure the harness against what users would use instead, and against the
machine's limit, then write a Markdown table and a JSON record with the machine description.

    python -m benchmarks.run                               # everything, real model (make bench)
    python -m benchmarks.run --quick                       # tiny model, seconds per benchmark (smoke)
    python -m benchmarks.run --only matmul,training --reps 5 --steps 10
    python -m benchmarks.run --only evaluation --out /tmp/bench

Benchmarks (one module each): matmul (peak FLOP/s), training (harness vs plain loop vs TRL, memory,
MFU), packing, evaluation (perplexity vs lm-eval, multiple choice vs lm-eval, batched generation),
sweep (per-trial overhead, workers), report (harness report / status on 1,000 synthetic runs).
Results: OUT/results.{md,json} (OUT/quick.{md,json} with --quick), rewritten after every benchmark
so a run that is stopped still leaves what it measured. Method and caveats: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from benchmarks import common
from harness.run.environment import cpu_label

ORDER = ("matmul", "training", "packing", "evaluation", "sweep", "report")
MODULES = {"matmul": "benchmarks.matmul", "training": "benchmarks.training", "packing": "benchmarks.packing",
           "evaluation": "benchmarks.evaluation", "sweep": "benchmarks.sweep_overhead", "report": "benchmarks.report_scale"}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


# -------------------------------------------------------------------------------- rendering
def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "nan"
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.01:
            return f"{v:.3f}"
        return f"{v:.2e}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    return str(v)


def md_cell(v) -> str:
    return fmt(v).replace("|", "\\|").replace("\n", " ")


def render_section(sec: dict) -> list[str]:
    out = [f"## {sec['title']}", ""]
    if sec.get("params"):
        out += ["Parameters: " + ", ".join(f"{k}={md_cell(v)}" for k, v in sec["params"].items()), ""]
    cols = sec.get("columns") or sorted({k for r in sec["rows"] for k in r})
    if sec["rows"]:
        out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        out += ["| " + " | ".join(md_cell(r.get(c)) for c in cols) + " |" for r in sec["rows"]]
        out.append("")
    for g in sec.get("goals", []):
        mark = {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[g["met"]]
        note = f" ({g['note']})" if g.get("note") else ""
        out.append(f"- **{mark}** {g['goal']}: {md_cell(g['value'])} (target {g['target']}){note}")
    if sec.get("goals"):
        out.append("")
    out += [f"- {n}" for n in sec.get("notes", [])]
    errors = [r["error"] for r in sec["rows"] if r.get("error")]
    out += [f"- error: {e}" for e in errors]
    return out + [""]


def to_markdown(record: dict) -> str:
    m = record["machine"]
    cpu = cpu_label(m.get("cpu"), m.get("cpu_model_id"))
    lines = [
        "# Benchmark results", "",
        f"Command: `{record['command']}`  ",
        f"Started {record['started_at']}, {record['wall_s']:.0f} s. Machine: {cpu} × {m.get('cpu_count')} "
        f"logical CPUs, {m.get('memory_gb')} GB, torch {m.get('torch')} ({m.get('torch_threads')} threads), "
        f"CPU flags {', '.join(m.get('cpu_flags') or []) or '?'}; load average at start {fmt(m.get('load_avg_1m_5m_15m'))}.  ",
        "Ratios compare implementations measured in this same run; absolute numbers move between machines.", "",
        "## Goals", "", "| goal | value | target | status |", "|---|---|---|---|",
    ]
    for sec in record["sections"]:
        for g in sec.get("goals", []):
            status = {True: "met", False: "**not met**", None: "not measured"}[g["met"]]
            lines.append(f"| {md_cell(g['goal'])} | {md_cell(g['value'])} | {md_cell(g['target'])} | {status} |")
    lines.append("")
    for sec in record["sections"]:
        lines += render_section(sec)
    return "\n".join(lines) + "\n"


def write(record: dict, out_dir: Path, stem: str) -> tuple[Path, Path]:
    from harness import atomic

    j = atomic.write_json(out_dir / f"{stem}.json", record)
    m = atomic.write_text(out_dir / f"{stem}.md", to_markdown(record))
    return j, m


# ------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(ORDER)}")
    p.add_argument("--quick", action="store_true", help="tiny model and sizes: a smoke run in about a minute")
    p.add_argument("--reps", type=int, default=None, help="repetitions of whole measurements (default 3; 1 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="measured training steps per configuration (default 10)")
    p.add_argument("--bf16-steps", type=int, default=None, help="measured steps for bf16 configurations (default: --steps)")
    p.add_argument("--train-reps", type=int, default=None,
                   help="child processes per training configuration and implementation, run interleaved (default 2)")
    p.add_argument("--bf16-reps", type=int, default=None, help="the same for bf16 configurations (default: --train-reps)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up training steps, not measured (default 1)")
    p.add_argument("--max-length", type=int, default=None, help="training sequence length (default 256)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (default 4)")
    p.add_argument("--methods", default="", help="training methods (default full,lora,qlora)")
    p.add_argument("--precisions", default="", help="training precisions (default fp32,bf16)")
    p.add_argument("--impls", default="", help="training implementations (default harness,plain,trl)")
    p.add_argument("--report-runs", type=int, default=None, help="synthetic runs for the report benchmark (default 1000)")
    p.add_argument("--budget-min", type=float, default=None,
                   help="time budget in minutes: what has not started by then is reported 'not measured'")
    p.add_argument("--train-budget-min", type=float, default=None,
                   help="minutes for the training benchmark: configurations not started by then are 'not measured' "
                        "(they run in priority order: lora fp32, lora bf16, full fp32, qlora fp32, full bf16, qlora bf16)")
    p.add_argument("--packing-precision", default=None, choices=("auto", "fp32", "bf16"),
                   help="precision of the packing benchmark (default auto, the harness default)")
    p.add_argument("--packing-max-length", type=int, default=None,
                   help="sequence length of the packing benchmark (default 512: most alpaca rows are shorter, so "
                        "unpacked batches carry padding)")
    p.add_argument("--ppl-docs", type=int, default=None, help="wikitext2 documents for the perplexity comparison (default 1)")
    p.add_argument("--mc-tasks", default="", help="multiple-choice tasks of the evaluation benchmark, comma-separated "
                                                  "(default arc_easy; e.g. hellaswag,arc_easy)")
    p.add_argument("--mc-items", type=int, default=None, help="items per multiple-choice task (default 20)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results directory (default benchmarks/results)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (run dirs, child logs)")
    return p.parse_args(argv)


def options_from(args: argparse.Namespace) -> common.Options:
    overrides = {}
    for key, attr in (("reps", "reps"), ("steps", "steps"), ("bf16_steps", "bf16_steps"), ("train_reps", "train_reps"), ("bf16_reps", "bf16_reps"), ("warmup", "warmup_steps"), ("max_length", "max_length"),
                      ("batch_size", "batch_size"), ("report_runs", "report_runs"), ("ppl_docs", "ppl_docs"), ("mc_items", "mc_items"),
                      ("train_budget_min", "train_budget_min"),
                      ("packing_max_length", "packing_max_length")):
        v = getattr(args, key)
        if v is not None:
            if v < (0 if key == "warmup" else 1):
                raise SystemExit(f"error: --{key.replace('_', '-')}={v}: must be {'>= 0' if key == 'warmup' else '>= 1'}")
            overrides[attr] = v
    if args.packing_precision:
        overrides["packing_precision"] = args.packing_precision
    if args.mc_tasks:
        overrides["mc_task"] = ",".join(x.strip() for x in args.mc_tasks.split(",") if x.strip())
    for key in ("methods", "precisions", "impls"):
        if getattr(args, key):
            overrides[key] = tuple(x.strip() for x in getattr(args, key).split(",") if x.strip())
    if args.budget_min is not None:
        if args.budget_min <= 0:
            raise SystemExit(f"error: --budget-min={args.budget_min}: must be > 0")
        overrides["deadline"] = time.time() + 60.0 * args.budget_min
    opts = common.Options.quick_defaults(**overrides) if args.quick else common.Options(**overrides)
    bad = [m for m in opts.methods if m not in ("full", "lora", "qlora")]
    bad += [p for p in opts.precisions if p not in ("fp32", "bf16")]
    bad += [i for i in opts.impls if i not in ("harness", "plain", "trl")]
    if bad:
        raise SystemExit(f"error: unknown {bad}; methods: full,lora,qlora; precisions: fp32,bf16; impls: harness,plain,trl")
    return opts


def selected(only: str) -> list[str]:
    if not only:
        return list(ORDER)
    names = [x.strip() for x in only.split(",") if x.strip()]
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        raise SystemExit(f"error: --only {','.join(unknown)}: no such benchmark. Choose from: {','.join(ORDER)}")
    return [n for n in ORDER if n in names]


def run_one(name: str, opts: common.Options, done: dict) -> dict:
    t0 = time.time()
    if opts.out_of_time():
        sec = common.section(name, name, notes=["not measured: the run's time budget (--budget-min) was spent"])
        sec["wall_s"] = 0.0
        return sec
    try:
        mod = importlib.import_module(MODULES[name])
        if name == "training":
            sec = mod.run(opts, matmul_section=done.get("matmul"))
        else:
            sec = mod.run(opts)
    except Exception as exc:  # one broken benchmark must not lose the others' results
        traceback.print_exc()
        sec = common.section(name, name, notes=[f"not measured: the benchmark raised {type(exc).__name__}: {exc}"])
    sec["wall_s"] = time.time() - t0
    return sec


def main(argv=None) -> int:
    args = parse_args(argv)
    names = selected(args.only)
    opts = options_from(args)
    out_dir = Path(args.out)
    stem = "quick" if opts.quick else "results"
    if "training" in names and "matmul" not in names:
        names.insert(0, "matmul")  # MFU needs the peak measured in the same run
    record = {"schema": 1, "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
              "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_s": 0.0,
              "machine": common.machine(), "options": opts.as_dict(), "sections": []}
    t0 = time.time()
    done: dict = {}
    print(f"[bench] {', '.join(names)} ({'quick' if opts.quick else 'full'}); scratch {opts.workdir}", flush=True)
    try:
        for name in names:
            print(f"[bench] {name} ...", flush=True)
            sec = run_one(name, opts, done)
            done[name] = sec
            record["sections"].append(sec)
            record["wall_s"] = time.time() - t0
            record["machine"]["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
            j, m = write(record, out_dir, stem)
            status = "; ".join(f"{g['goal']}: {'met' if g['met'] else 'not met' if g['met'] is False else 'not measured'}"
                               for g in sec.get("goals", []))
            print(f"[bench] {name} done in {sec['wall_s']:.0f} s. {status}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(opts.workdir, ignore_errors=True)
    print(f"[bench] wrote {out_dir / (stem + '.md')} and {out_dir / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
