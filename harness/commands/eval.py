"""`harness eval RUN_DIR|overrides`: evaluate a run directory or a base model (harness/pipeline.py).

    harness eval RUN_DIR                          # the suites in the run's own config (eval=...)
    harness eval RUN_DIR eval=standard            # other suites on a trained run (adapter/ or model/)
    harness eval model=smollm2-135m eval=quick    # the untrained base model -> runs/<model>-base/<run_id>/
    harness eval model=smollm2-135m --crosscheck  # our wikitext2 perplexity vs lm-eval's, same model

A base model's evaluation goes under runs/ in the harness root (--root DIR / $HARNESS_ROOT, default the current
directory). Exit code 2 for a config that cannot run, a sweep on the command line (eval=quick,standard) or a key
set twice.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.commands.common import add_config_dir, add_root, check_overrides, use_config_dirs, use_root
from harness.config import ConfigError
from harness.eval.registry import EvalError
from harness.eval.suites import rescore_run_dir
from harness.model.load import ModelError
from harness.pipeline import crosscheck, evaluate_base, evaluate_run_dir
from harness.run.display import open_display
from harness.run.record import dumps


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
    p.add_argument("--trust-remote-code", action="store_true",
                   help="RUN_DIR: let the model run its own Python code (never taken from the run's config.yaml)")
    p.add_argument("--quiet", action="store_true", help="no progress display or per-suite lines")
    add_config_dir(p)
    add_root(p)


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
    use_config_dirs(args)
    use_root(args)
    progress = not args.quiet
    try:
        run_dir, overrides = split_targets(args.targets)
        check_overrides(overrides, "eval")
        with open_display("eval", quiet=args.quiet):
            out = _evaluate(args, run_dir, overrides, progress)
    except (ConfigError, EvalError, ModelError, FileNotFoundError, ValueError) as exc:
        print(f"harness eval: {exc}", file=sys.stderr)
        return 2
    if isinstance(out, int):  # --crosscheck: its verdict (the numbers are printed already)
        return out
    print(f"[harness] results: {out}")
    return 0


def _evaluate(args: argparse.Namespace, run_dir: Path | None, overrides: list[str], progress: bool) -> Path | int:
    """Run what the command line asks for; returns eval.json's path (or --crosscheck's exit code)."""
    if args.crosscheck:
        if run_dir is not None:
            raise EvalError("--crosscheck evaluates a base model: give model=NAME, not a run directory")
        res = crosscheck(overrides, args.docs, args.max_length, args.batch_size, progress)
        print(dumps(res))
        worst = max(res["rel_diff"].values())
        print(f"[harness] crosscheck {res['model']}: word_perplexity ours {res['ours']['word_perplexity']:.4f} "
              f"lm-eval {res['lm_eval']['word_perplexity']:.4f}, max relative difference {worst:.2e} "
              f"({'OK' if worst <= 1e-3 else 'MISMATCH'} at 0.1%)")
        return 0 if worst <= 1e-3 else 1
    if args.rescore:
        if run_dir is None:
            raise EvalError("--rescore needs a run directory: harness eval RUN_DIR --rescore [eval=...]")
        return rescore_run_dir(run_dir, overrides, progress)
    if run_dir is not None:
        return evaluate_run_dir(run_dir, overrides, progress, trust_remote_code=args.trust_remote_code)
    if not any(o.split("=", 1)[0].lstrip("+") in ("model", "experiment") for o in overrides):
        raise EvalError("give a run directory, or model=NAME (or an experiment=NAME that sets one) to "
                        "evaluate a base model (e.g. harness eval model=smollm2-135m eval=quick)")
    return evaluate_base(overrides, progress)
