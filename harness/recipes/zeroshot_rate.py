"""Items per second of the zero-shot recipe's tasks on a slice, to estimate the full sets' wall time without
running them (docs/reproductions/smollm2-zeroshot.md, "Wall time").

    OMP_NUM_THREADS=1 python -m harness.recipes.zeroshot_rate --limit 60

Loads the recipe's model (conf/experiment/reproduce-smollm2-zeroshot.yaml) in fp32 on the CPU and runs each of its
tasks on the first `--limit` items through run_task (harness/eval/lm_eval.py), timing each by wall clock and by
this process's CPU time: on a shared machine the CPU time is what one idle core would take. Prints one line per
task and the estimate for the full sets (TASK_ITEMS) from both rates, and the JSON of it all last.
"""

from __future__ import annotations

import argparse
import json
import time


def estimate(rates: dict[str, dict], items: dict[str, int]) -> dict[str, float]:
    """Seconds for the full sets: items / items-per-second, summed, from the CPU and from the wall rate."""
    cpu = sum(items[t] / r["items_per_cpu_s"] for t, r in rates.items())
    wall = sum(items[t] / r["items_per_wall_s"] for t, r in rates.items())
    return {"full_sets_cpu_s": cpu, "full_sets_wall_s": wall}


def main(argv: list[str] | None = None) -> dict:
    from harness import config
    from harness.config import LmEvalConfig
    from harness.eval.lm_eval import TASK_ITEMS, build_lm, quietly, run_task
    from harness.model.load import load_model_and_tokenizer

    ap = argparse.ArgumentParser(prog="python -m harness.recipes.zeroshot_rate", description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=60, help="items per task (the first ones)")
    args = ap.parse_args(argv)
    cfg = config.compose(["experiment=reproduce-smollm2-zeroshot"])
    model, tok = load_model_and_tokenizer(cfg.model, device="cpu")
    lm = build_lm(model.eval(), tok, cfg.eval.lm_eval.batch_size, model_cfg=cfg.model)
    rates = {}
    with quietly():
        for task in cfg.eval.lm_eval.tasks:
            wall, cpu = time.time(), time.process_time()
            entry = run_task(lm, task, LmEvalConfig(tasks=[task], limit=args.limit), None)
            wall, cpu = time.time() - wall, time.process_time() - cpu
            rates[task] = {"n": entry["n"], "wall_s": wall, "cpu_s": cpu, "items_per_cpu_s": entry["n"] / cpu,
                           "items_per_wall_s": entry["n"] / wall}
            print(f"{task}: {entry['n']} items, {wall:.1f} s wall, {cpu:.1f} s CPU "
                  f"({entry['n'] / cpu:.3f} items per CPU-second)", flush=True)
    out = {"rates": rates, **estimate(rates, {t: TASK_ITEMS[t] for t in rates})}
    print(f"full sets: {out['full_sets_cpu_s'] / 3600:.1f} h on one idle core (CPU time), "
          f"{out['full_sets_wall_s'] / 3600:.1f} h at the wall rate measured here")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
