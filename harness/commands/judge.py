"""`harness judge RUN_A RUN_B`: a local model judges two runs' generations in both orders (harness/eval/judge.py)
and writes judgments JSONL that `harness human elo` reads; with --human, agreement with human raters.

    harness judge RUN_A RUN_B [--suite SUITE] [--judge model=NAME ...] [--template FILE] [--out FILE]
        [--limit N] [--tie-margin 0] [--calibrate] [--human human.judgments.jsonl ...] [--json FILE]

--suite defaults to the one generation suite both runs have samples for. --judge takes config overrides (repeat it:
--judge model=gemma3-270m --judge model.add_bos=true); default model=smollm2-135m. The output defaults to
judgments/<suite>.<judge>.jsonl. Prints the position-bias figures and the Elo ranking of the model judge, and with
--human the human judges' ranking beside it and Cohen's kappa between the two (harness/human/agreement.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import atomic
from harness.config import ConfigError
from harness.eval.registry import EvalError
from harness.human.sheets import HumanEvalError

DEFAULT_JUDGE = "model=smollm2-135m"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two (or more) run directories with generation samples")
    p.add_argument("--suite", default="", help="generation suite whose samples/<suite>.jsonl to judge (default: the only "
                                               "one both runs have)")
    p.add_argument("--judge", action="append", default=[], metavar="OVERRIDE",
                   help=f"judge model config override, repeatable (default {DEFAULT_JUDGE}; any model config works)")
    p.add_argument("--template", default="", help="judge prompt template file with {question}, {answer_a}, {answer_b} "
                                                  "(default: harness.eval.judge.DEFAULT_TEMPLATE)")
    p.add_argument("--out", default="", help="judgments JSONL (default judgments/<suite>.<judge>.jsonl)")
    p.add_argument("--limit", type=int, default=0, help="judge the first N shared items (0 = all)")
    p.add_argument("--tie-margin", type=float, default=0.0,
                   help="call a tie when |logp(A) - logp(B)| is below this (default 0: ties only when 'tie' is likeliest)")
    p.add_argument("--calibrate", action="store_true",
                   help="subtract the labels' log-probabilities on a content-free prompt before deciding "
                        "(contextual calibration: removes a judge's fixed preference for A or B)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--human", nargs="*", default=[], metavar="FILE",
                   help="human judgments JSONL (e.g. from harness human import) to rank beside the model judge and "
                        "compare with it (Cohen's kappa)")
    p.add_argument("--orderings", type=int, default=1000, help="Elo orderings for the printed rankings")
    p.add_argument("--json", default="", help="also write the summary (position bias, Elo, agreement) here")


def _default_suite(run_dirs: list[str]) -> str:
    sets = [{p.stem for p in (Path(rd) / "samples").glob("*.jsonl")} for rd in run_dirs]
    common = sorted(set.intersection(*sets)) if sets else []
    if len(common) != 1:
        raise EvalError(f"pass --suite: the runs share {len(common)} suites with samples ({', '.join(common) or 'none'})")
    return common[0]


def run(args: argparse.Namespace) -> int:
    from harness.eval.judge import DEFAULT_TEMPLATE, judge, load_items, load_judge, position_bias
    from harness.human.agreement import judge_agreement
    from harness.human.aggregate import format_elo_table, rank_elo
    from harness.human.collect import read_judgments

    try:
        if len(args.run_dirs) < 2:
            raise EvalError("give two run directories (RUN_A RUN_B) to compare")
        suite = args.suite or _default_suite(args.run_dirs)
        template = Path(args.template).read_text(encoding="utf-8") if args.template else DEFAULT_TEMPLATE
        labels, items, notes = load_items(args.run_dirs, suite, args.limit)
        for n in notes:
            print(f"note: {n}")
        human, problems = read_judgments(args.human) if args.human else ([], [])
        if problems:
            raise HumanEvalError("--human: " + "; ".join(problems[:10]))
        model, tokenizer, model_cfg = load_judge(args.judge or [DEFAULT_JUDGE])
        print(f"[harness] judge {model_cfg.name}: {len(items)} items x {len(labels) * (len(labels) - 1)} orders", flush=True)
        judgments = judge(model, tokenizer, labels, items, judge_name=model_cfg.name, suite=suite, template=template,
                          tie_margin=args.tie_margin, add_bos=model_cfg.add_bos, batch_size=args.batch_size,
                          calibrate=args.calibrate)
    except (ConfigError, EvalError, HumanEvalError, OSError, ValueError) as exc:
        print(f"harness judge: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"judgments/{suite}.{model_cfg.name}{'-calibrated' if args.calibrate else ''}.jsonl")
    atomic.write_jsonl(out, judgments)
    bias = position_bias(judgments)
    print(f"{len(judgments)} judgments -> {out}  (rank them: harness human elo {out})")
    print(f"position bias: first shown wins {bias['first_wins']:.1%}, second {bias['second_wins']:.1%}, "
          f"ties {bias['ties']:.1%}; verdict flips with the order in {bias['flips']} of "
          f"{bias['pairs_both_orders']} pairs ({bias['flip_rate']:.1%})")
    summary = {"suite": suite, "judge": judgments[0]["judge"], "runs": labels, "out": str(out), "position_bias": bias,
               "elo_model": rank_elo(judgments, orderings=args.orderings)}
    print(f"\nElo, judge {summary['judge']}\n{format_elo_table(summary['elo_model'])}")
    if human:
        summary["elo_human"] = rank_elo(human, orderings=args.orderings)
        summary["agreement"] = agr = judge_agreement(judgments, human)
        print(f"\nElo, human judgments ({len(human)})\n{format_elo_table(summary['elo_human'])}")
        kappa = "n/a" if agr["cohen_kappa"] is None else f"{agr['cohen_kappa']:.3f}"
        share = "n/a" if agr["agreement"] is None else f"{agr['agreement']:.1%}"
        print(f"\nagreement (model consensus of both orders vs each human judgment, {agr['compared']} compared on "
              f"{agr['units_both']} shared item-pairs): Cohen's kappa {kappa}, same verdict {share}")
    if args.json:
        atomic.write_json(args.json, summary)
        print(f"-> {args.json}")
    return 0
