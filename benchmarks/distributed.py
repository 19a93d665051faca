"""One run over N processes (train.devices=N, DDP under torchrun) against one process with the same global batch:
the loss per step (should agree to float rounding) and the training throughput.

    python -m benchmarks.distributed                                   # tiny-llama, then smollm2-135m (LoRA)
    python -m benchmarks.distributed --models tiny-llama --steps 6     # seconds-to-a-minute smoke run
    python -m benchmarks.distributed --devices 2 --batch-size 2 --steps 10 --warmup 2 --reps 2 --out /tmp/ddp

Each configuration is a real `harness train` command line (so process start, torchrun and the ranks' imports are
in the wall time): one process with train.batch_size = batch x devices and torch's default threads (all cores);
then train.devices = devices processes with train.batch_size = batch and cores / devices threads each (what the
launcher gives them); then one process like the first but with cores / devices threads (what one rank has; on a
machine shared with other work a process's threads also wait for each other, which this separates out). LoRA
without dropout, fp32, no warm-up, no weights saved; repetitions interleave the configurations so that other work
on the machine slows them alike. Throughput is rank 0's steady-state tokens/s (global tokens per step over the
step's time, median over the steps after the warm-up) from metrics.jsonl.
Results: OUT/distributed.{md,json} (default benchmarks/results/). Method: docs/multi-device.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks import common
from benchmarks.training import steps_from_metrics

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def overrides(model: str, data: str, steps: int, max_length: int, batch: int, devices: int, out: Path,
              run_id: str) -> list[str]:
    """The `harness train` overrides of one configuration (rows too long for max_length are skipped, not fatal)."""
    return [f"model={model}", f"data={data}", "method=lora", "method.dropout=0", "train.precision=fp32",
            "train.device=cpu", "train.warmup_ratio=0", f"train.max_steps={steps}", "train.log_every=1",
            f"train.max_length={max_length}", "train.eval_batches=1", "train.save_model=false", "eval=none",
            "tracker=none", "data.max_bad_share=0.5", f"train.batch_size={batch}", f"train.devices={devices}",
            f"output_dir={out}", f"run_id={run_id}"]


def compare(one: list[dict], many: list[dict]) -> dict:
    """Largest relative difference per step of train_loss and grad_norm between two metrics.jsonl's step rows."""
    out = {}
    for key in ("train_loss", "grad_norm"):
        a = {r["step"]: r[key] for r in one if r.get(key) is not None}
        b = {r["step"]: r[key] for r in many if r.get(key) is not None}
        common_steps = sorted(set(a) & set(b))
        diffs = [abs(a[s] - b[s]) / max(abs(a[s]), 1e-12) for s in common_steps]
        out[f"{key}_max_rel_diff"] = max(diffs) if diffs else None
        out[f"{key}_steps_compared"] = len(common_steps)
    return out


def _train(model: str, data: str, steps: int, max_length: int, batch: int, devices: int, work: Path, tag: str,
           timeout_s: float, threads: int = 0) -> dict:
    ov = overrides(model, data, steps, max_length, batch, devices, work, tag) + (
        [f"train.num_threads={threads}"] if threads else [])
    cmd = [sys.executable, "-m", "harness", "train", *ov]
    done = [r for r in work.glob(f"*/{tag}") if '"completed"' in (r / "summary.json").read_text()]
    if done:  # --work of an earlier run: its completed configurations are read again, not retrained
        res = {"returncode": 0, "wall_s": json.loads((work / f"{tag}.wall.json").read_text())["wall_s"]}
    else:
        res = common.run_command(cmd, work / f"{tag}.log", timeout_s)
        (work / f"{tag}.wall.json").write_text(json.dumps({"wall_s": res["wall_s"]}))
    runs = list(work.glob(f"*/{tag}"))
    if res["returncode"] != 0 or not runs:
        raise common.ChildError(f"{tag}: exit code {res['returncode']}: {common.log_tail(res.get('log', ''))}")
    run_dir = runs[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"run_dir": str(run_dir), "wall_s": res["wall_s"], "summary": summary,
            "steps": [r for r in metrics if "train_loss" in r]}


def measure(model: str, *, data: str = "alpaca-demo", devices: int = 2, batch_size: int = 2, steps: int = 10,
            warmup: int = 2, max_length: int = 128, reps: int = 1, work: Path | None = None,
            timeout_s: float = 1800.0, with_share: bool = True) -> dict:
    """One model: `reps` interleaved pairs (one process, then `devices` processes). Returns the table row."""
    import tempfile

    work = work or Path(tempfile.mkdtemp(prefix="harness-ddp-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    total = warmup + steps + 1  # step 1 (trainer set-up) is never timed
    pairs = []
    threads = max(1, len(os.sched_getaffinity(0)) // devices)
    for rep in range(reps):
        one = _train(model, data, total, max_length, batch_size * devices, 1, work, f"{model}-one-{rep}", timeout_s)
        many = _train(model, data, total, max_length, batch_size, devices, work, f"{model}-ddp{devices}-{rep}",
                      timeout_s)
        # one process with one process's share of the cores: what each DDP rank has (scaling without threads)
        share = _train(model, data, total, max_length, batch_size * devices, 1, work, f"{model}-share-{rep}",
                       timeout_s, threads=threads) if with_share else None
        pairs.append((one, many, share))
    row: dict = {"model": model, "devices": devices, "global_batch": batch_size * devices, "max_length": max_length,
                 "steps_timed": steps, "threads_per_rank": threads}
    names = (("one", 0), (f"ddp{devices}", 1)) + ((("one_share", 2),) if with_share else ())
    for name, idx in names:
        tps = [common.step_throughput(*steps_from_metrics(p[idx]["steps"], warmup))["tokens_per_s"] for p in pairs]
        row[f"{name}_tokens_per_s"] = common.median(tps)
        row[f"{name}_tokens_per_s_reps"] = tps
        row[f"{name}_wall_s"] = common.median([p[idx]["wall_s"] for p in pairs])
        row[f"{name}_train_time_s"] = common.median([p[idx]["summary"].get("train_time_s") for p in pairs])
    row["speedup"] = common.ratio(row[f"ddp{devices}_tokens_per_s"], row["one_tokens_per_s"])
    if with_share:
        row["speedup_vs_share"] = common.ratio(row[f"ddp{devices}_tokens_per_s"], row["one_share_tokens_per_s"])
    diffs = [compare(p[0]["steps"], p[1]["steps"]) for p in pairs]
    row["train_loss_max_rel_diff"] = max(d["train_loss_max_rel_diff"] or 0.0 for d in diffs)
    row["grad_norm_max_rel_diff"] = max(d["grad_norm_max_rel_diff"] or 0.0 for d in diffs)
    row["steps_compared"] = min(d["train_loss_steps_compared"] for d in diffs)
    row["losses_one"] = [r["train_loss"] for r in pairs[0][0]["steps"]]
    row["losses_ddp"] = [r["train_loss"] for r in pairs[0][1]["steps"]]
    row["world_size_recorded"] = pairs[0][1]["summary"].get("world_size")
    return row


COLUMNS = ["model", "devices", "global_batch", "one_tokens_per_s", "one_share_tokens_per_s", "ddp2_tokens_per_s",
           "speedup", "speedup_vs_share", "one_wall_s", "ddp2_wall_s", "train_loss_max_rel_diff",
           "grad_norm_max_rel_diff", "steps_compared"]


def write(rows: list[dict], out: Path, params: dict, machine: dict) -> Path:
    from benchmarks.run import fmt

    out.mkdir(parents=True, exist_ok=True)
    cols = [c.replace("ddp2", f"ddp{params['devices']}") for c in COLUMNS]
    lines = ["# One run over several CPU processes (DDP, gloo) vs one process, same global batch", "",
             f"CPU: {machine.get('cpu')} ({machine.get('cpu_count')} cores; flags "
             f"{', '.join(machine.get('cpu_flags', []))}); load average at start {machine.get('load_avg_1m_5m_15m')}", "",
             f"Command: `python -m benchmarks.distributed {params['argv']}`", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    def cell(r: dict, c: str) -> str:  # tokens/s: the median, then each repetition's (a shared machine varies a lot)
        reps = r.get(f"{c}_reps")
        return fmt(r.get(c)) + (f" ({', '.join(fmt(x) for x in reps)})" if reps and len(reps) > 1 else "")

    for r in rows:
        lines.append("| " + " | ".join(cell(r, c) for c in cols) + " |")
    (out / "distributed.md").write_text("\n".join(lines) + "\n")
    (out / "distributed.json").write_text(json.dumps({"params": params, "machine": machine, "rows": rows}, indent=2,
                                                     default=str))
    return out / "distributed.md"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny-llama,smollm2-135m")
    p.add_argument("--data", default="alpaca-demo")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2, help="per process; one process gets batch x devices")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps after the warm-up")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--no-share", action="store_true",
                   help="skip the third configuration: one process with cores / devices threads")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--work", type=Path, default=None,
                   help="where the runs go (default: a new temp dir); an earlier --work's completed runs are reused")
    args = p.parse_args(argv)
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    params["argv"] = " ".join(argv if argv is not None else sys.argv[1:])
    machine = common.machine()
    rows = []
    for model in args.models.split(","):
        t0 = time.time()
        row = measure(model, data=args.data, devices=args.devices, batch_size=args.batch_size, steps=args.steps,
                      warmup=args.warmup, max_length=args.max_length, reps=args.reps, with_share=not args.no_share,
                      work=args.work)
        row["bench_s"] = time.time() - t0
        row["load_avg_after"] = list(os.getloadavg())
        rows.append(row)
        path = write(rows, args.out, params, machine)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("losses")}, default=str), flush=True)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
