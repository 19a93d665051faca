"""Preference objectives' cost beside SFT's: steps/s, tokens/s and peak memory per method, on the same pairs.

    python -m benchmarks.preference --model tiny-llama --steps 10                       # seconds per run
    python -m benchmarks.preference --model smollm2-135m --steps 6 --methods lora,qlora,full

Every run is one `harness train` in its own process (peak RSS is that process's), with the same batch size and
train.max_length on the shared preference pairs (data=dpo-en-demo, no validation split, nothing saved):
  sft   the chosen answers as chat rows (prompt conversation + chosen), one sequence per example
  dpo   prompt + chosen and prompt + rejected per example, plus the reference forward (adapter disabled / a copy)
  orpo  prompt + chosen and prompt + rejected per example, no reference
Reads each run's summary.json: steps / train_time_s, tokens_per_s, peak_memory_mb (RSS on CPU, CUDA max allocated
on a GPU). Writes OUT/preference.{md,json}. Not part of benchmarks/run.py's ORDER (yet).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def sft_rows(path: Path) -> int:
    """The chosen side of the shared pairs as chat rows, for SFT on the same prompts and answers."""
    from harness import config
    from harness.data.preference import load_preference_rows

    d = config.compose(["data=dpo-en-demo", "train.objective=dpo"]).data
    train, val, _ = load_preference_rows(d, seed=0)
    with open(path, "w", encoding="utf-8") as f:
        for r in train + val:
            msgs = r["prompt"] if isinstance(r["prompt"], list) else [{"role": "user", "content": r["prompt"]}]
            f.write(json.dumps({"messages": [*msgs, {"role": "assistant", "content": r["chosen"]}]}) + "\n")
    return len(train) + len(val)


def run_one(objective: str, method: str, args, out: Path, sft_file: Path) -> dict:
    data = (["data=dpo-en-demo", f"train.objective={objective}"] if objective != "sft" else
            ["data=alpaca-tiny", "data.format=chat", f"data.path={sft_file}", "data.name=dpo-chosen-chat",
             "data.max_bad_share=1.0"])  # prompts longer than max_length are bad rows for SFT (DPO cuts them)
    lr = "2e-5" if method == "full" else "2e-4"
    cmd = [sys.executable, "-m", "harness", "train", f"model={args.model}", f"method={method}", *data,
           "data.val_size=0", "data.cache=false", f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}",
           f"train.max_length={args.max_length}", f"train.lr={lr}", "train.eval_every=0", "train.save_model=false",
           "train.log_every=1", "eval=none", "tracker=none", f"output_dir={out / 'runs'}",
           f"run_id={objective}-{method}"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    run_dir = next((out / "runs").glob(f"*/{objective}-{method}"), None)
    s = json.loads((run_dir / "summary.json").read_text()) if run_dir else {}
    m = json.loads((run_dir / "manifest.json").read_text()) if run_dir else {}
    row = {"objective": objective, "method": method, "status": s.get("status"), "steps": s.get("steps"),
           "train_time_s": s.get("train_time_s"), "tokens_per_s": s.get("tokens_per_s"),
           "peak_memory_mb": s.get("peak_memory_mb"), "peak_memory_kind": s.get("peak_memory_kind"),
           "reference_model": m.get("reference_model"), "wall_s": round(time.time() - t0, 1),
           "command": "harness train " + " ".join(cmd[4:])}
    row["steps_per_s"] = (row["steps"] / row["train_time_s"]) if row["steps"] and row["train_time_s"] else None
    if s.get("status") != "completed":
        row["error"] = (s.get("reason") or proc.stderr[-500:])
    return row


def table(rows: list[dict]) -> str:
    lines = ["| objective | method | steps/s | tokens/s | peak memory MB | reference | status |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda v, d=3: "-" if v is None else f"{v:.{d}g}"  # noqa: E731
        lines.append(f"| {r['objective']} | {r['method']} | {f(r['steps_per_s'])} | {f(r['tokens_per_s'])} | "
                     f"{f(r['peak_memory_mb'], 4)} | {r['reference_model'] or '-'} | {r['status']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--methods", default="lora,qlora,full")
    p.add_argument("--objectives", default="sft,dpo,orpo")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--out", default="/tmp/bench-preference")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sft_file = out / "dpo_chosen_chat.jsonl"
    sft_rows(sft_file)
    rows = []
    for method in args.methods.split(","):
        for objective in args.objectives.split(","):
            rows.append(run_one(objective, method, args, out, sft_file))
            print(json.dumps(rows[-1]), flush=True)
            (out / "preference.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
            (out / "preference.md").write_text(table(rows) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
