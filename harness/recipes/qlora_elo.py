"""Reproduce QLoRA Table 1 (Dettmers et al., 2023): Elo of 8 chatbots from GPT-4 pairwise judgments.

    python -m harness.recipes.qlora_elo [--orderings 10000] [--out reports/reproduce-qlora-elo]

The paper ranks the chatbots on the 80 Vicuna prompts by Elo (start 1000, K = 32) "averaged for
10,000 random initial orderings" of GPT-4's pairwise judgments. The judgments ship in the data kit
(qlora-vicuna-gpt4-ratings/, 56 files `<answers1>-vs-<answers2>-gpt-4-reviewer-threeclass.jsonl`).
This converts them to the pairwise-judgment JSONL that `harness human elo` reads (score 1 -> "a",
2 -> "b", 3 -> "tie" (half a point each), -1 -> dropped and counted), ranks them with the same code
(harness.human.aggregate.rank_elo), and writes judgments.jsonl, results.json (ours vs the paper, rank
agreement, largest difference, sensitivity variants), references.json and report.md.
Method and remaining differences: docs/reproductions/qlora-elo.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import atomic, paths
from harness.human.aggregate import format_elo_table, rank_elo
from harness.run.environment import git_info, package_versions
from harness.run.record import now_iso

SOURCE = "Dettmers et al. 2023, QLoRA: Efficient Finetuning of Quantized LLMs, Table 1 (arXiv:2305.14314)"
SUFFIX = "-gpt-4-reviewer-threeclass.jsonl"
_GEN = "-guanaco-vicuna-generations-topp0.9-temp0.7"
MODEL_NAMES = {  # file-name stem -> the paper's model name
    "answer-gpt4": "GPT-4",
    "65b" + _GEN: "Guanaco 65B",
    "30b" + _GEN: "Guanaco 33B",  # the LLaMA "30B" checkpoint is 32.5B parameters; the paper says 33B
    "answer-vicuna-13b": "Vicuna 13B",
    "answer-gpt35": "ChatGPT",
    "13b" + _GEN: "Guanaco 13B",
    "answer-bard": "Bard",
    "7b" + _GEN: "Guanaco 7B",
}
PAPER_ELO = {  # Table 1, GPT-4 judge, Vicuna benchmark: (Elo, 95% CI half-width)
    "GPT-4": (1348, 1), "Guanaco 65B": (1022, 1), "Guanaco 33B": (992, 1), "Vicuna 13B": (974, 1),
    "ChatGPT": (966, 1), "Guanaco 13B": (916, 1), "Bard": (902, 1), "Guanaco 7B": (879, 1),
}
SCORE_TO_WINNER = {1: "a", 2: "b", 3: "tie"}
TOLERANCE = 20.0  # Elo points: our mean may differ by this much and still count as reproduced


class ReproductionError(ValueError):
    pass


def convert(ratings_dir: str | Path) -> tuple[list[dict], dict]:
    """GPT-4 review files -> pairwise judgments (item_id, model_a, model_b, winner, judge, source) + counts."""
    d = Path(ratings_dir)
    files = sorted(d.glob("*" + SUFFIX))
    if not files:
        raise ReproductionError(f"no *{SUFFIX} files in {d}; set HARNESS_DATA or pass --ratings-dir "
                                "(the data kit's qlora-vicuna-gpt4-ratings/)")
    judgments, problems = [], []
    counts = {"files": len(files), "lines": 0, "dropped_unparsable": 0, "ties": 0, "dropped_by_file": {}}
    for f in files:
        stem = f.name[: -len(SUFFIX)]
        left, sep, right = stem.partition("-vs-")
        unknown = [s for s in (left, right) if s not in MODEL_NAMES]
        if not sep or unknown:
            problems.append(f"{f.name}: unknown answer set(s) {unknown or [stem]}; known: {', '.join(MODEL_NAMES)}")
            continue
        for n, row in enumerate(atomic.read_jsonl(f), 1):
            counts["lines"] += 1
            score = row.get("score")
            if score == -1:  # GPT-4's output could not be parsed into a verdict
                counts["dropped_unparsable"] += 1
                counts["dropped_by_file"][f.name] = counts["dropped_by_file"].get(f.name, 0) + 1
                continue
            if score not in SCORE_TO_WINNER or "question_id" not in row:
                problems.append(f"{f.name}:{n}: score {score!r} / question_id {row.get('question_id')!r} not understood "
                                "(expected score 1, 2, 3 or -1)")
                continue
            counts["ties"] += score == 3
            judgments.append({"item_id": row["question_id"], "model_a": MODEL_NAMES[left], "model_b": MODEL_NAMES[right],
                              "winner": SCORE_TO_WINNER[score], "judge": "gpt-4", "source": f.name})
    if problems:
        raise ReproductionError("cannot convert the ratings:\n" + "\n".join(f"  - {p}" for p in problems))
    counts["matches"] = len(judgments)
    pairs = {}
    for j in judgments:
        pairs.setdefault(frozenset((j["model_a"], j["model_b"])), set()).add(j["source"])
    counts["pairs"] = len(pairs)
    counts["pairs_with_both_orders"] = sum(len(v) == 2 for v in pairs.values())
    return judgments, counts


def compare(ours: dict[str, float], paper: dict[str, float]) -> dict:
    """Rank agreement and differences between two {model: elo} maps over the paper's models."""
    from scipy.stats import kendalltau, spearmanr

    models = [m for m in paper if m in ours]
    x, y = [ours[m] for m in models], [paper[m] for m in models]
    diffs = {m: ours[m] - paper[m] for m in models}
    worst = max(diffs, key=lambda m: abs(diffs[m]))
    return {"spearman": float(spearmanr(x, y).statistic), "kendall_tau": float(kendalltau(x, y).statistic),
            "order_matches": sorted(models, key=lambda m: -ours[m]) == sorted(models, key=lambda m: -paper[m]),
            "order_ours": sorted(models, key=lambda m: -ours[m]), "order_paper": sorted(models, key=lambda m: -paper[m]),
            "max_abs_diff": abs(diffs[worst]), "max_abs_diff_model": worst,
            "mean_abs_diff": sum(abs(v) for v in diffs.values()) / len(diffs), "missing_models": [m for m in paper if m not in ours]}


def _one_order(judgments: list[dict], first: bool) -> list[dict]:
    """Keep one file per pair: the order whose model_a comes first (or last) in the paper's table."""
    rank = {m: i for i, m in enumerate(PAPER_ELO)}
    return [j for j in judgments if (rank[j["model_a"]] < rank[j["model_b"]]) == first]


def reproduce(ratings_dir: str | Path, out: str | Path, orderings: int = 10_000, seed: int = 0,
              k: float = 32.0, initial: float = 1000.0) -> Path:
    judgments, counts = convert(ratings_dir)
    out = Path(out)
    atomic.write_jsonl(out / "judgments.jsonl", judgments)
    main = rank_elo(judgments, k=k, initial=initial, orderings=orderings, seed=seed)
    ours = {r["model"]: r["elo"] for r in main["ranking"]}
    paper = {m: float(v) for m, (v, _) in PAPER_ELO.items()}
    variants = {}
    for name, subset in (("ties_dropped", [j for j in judgments if j["winner"] != "tie"]),
                         ("one_order_higher_ranked_first", _one_order(judgments, True)),
                         ("one_order_higher_ranked_second", _one_order(judgments, False))):
        res = rank_elo(subset, k=k, initial=initial, orderings=orderings, seed=seed)
        elo = {r["model"]: r["elo"] for r in res["ranking"]}
        variants[name] = {"matches": res["matches"], "elo": elo, **compare(elo, paper)}
    rows = []
    by_model = {r["model"]: r for r in main["ranking"]}
    for rank_paper, (m, (v, half)) in enumerate(PAPER_ELO.items(), 1):
        r = by_model.get(m)
        rows.append({"model": m, "paper": v, "paper_ci95_half": half, "rank_paper": rank_paper,
                     "ours": r and r["elo"], "ours_ci95_half": r and r["mean_ci95_half"],
                     "ours_interval95": r and r["interval95"], "rank_ours": r and r["rank"],
                     "diff": r and r["elo"] - v, "within_tolerance": bool(r and abs(r["elo"] - v) <= TOLERANCE)})
    agreement = compare(ours, paper)
    results = {
        "schema": 1, "recipe": "qlora_elo", "source": SOURCE, "created_at": now_iso(),
        "settings": {"k": k, "initial": initial, "orderings": orderings, "seed": seed, "ties": "0.5 points each",
                     "unparsable": "score -1 dropped (counted in data.dropped_unparsable)", "tolerance_elo": TOLERANCE},
        "data": {"ratings_dir": str(ratings_dir), **counts}, "models": rows, "agreement": agreement,
        "reproduced": agreement["order_matches"] and all(r["within_tolerance"] for r in rows),
        "elo": main, "variants": variants, "environment": {"git": git_info(), "packages": package_versions(("numpy", "scipy"))},
    }
    atomic.write_json(out / "results.json", results)
    atomic.write_json(out / "references.json", [
        {"metric": f"elo.{m}", "value": v, "tolerance": TOLERANCE, "paper_ci95_half": half, "source": SOURCE,
         "reference_only": False,
         "note": "same GPT-4 judgment files and Elo procedure; which files (orders) the paper used is not stated"}
        for m, (v, half) in PAPER_ELO.items()])
    atomic.write_text(out / "report.md", render_report(results))
    return out


def render_report(res: dict) -> str:
    ag = res["agreement"]
    lines = [
        "# Reproduction: QLoRA Table 1 (Elo from GPT-4 judgments, Vicuna prompts)", "",
        f"Source: {res['source']}. Command: `python -m harness.recipes.qlora_elo --orderings {res['settings']['orderings']}`.", "",
        f"{res['data']['matches']} matches from {res['data']['files']} files ({res['data']['lines']} judgments; "
        f"{res['data']['dropped_unparsable']} unparsable dropped; {res['data']['ties']} ties counted as half a point each). "
        f"Elo: start {res['settings']['initial']:g}, K = {res['settings']['k']:g}, mean over {res['settings']['orderings']} random orderings.", "",
        "| Model | Paper | Ours | ± (95% CI of mean) | 95% over orderings | Ours − paper | Rank (paper / ours) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["models"]:
        if r["ours"] is None:
            lines.append(f"| {r['model']} | {r['paper']} ± {r['paper_ci95_half']} | missing | | | | {r['rank_paper']} / – |")
            continue
        lo, hi = r["ours_interval95"]
        lines.append(f"| {r['model']} | {r['paper']} ± {r['paper_ci95_half']} | {r['ours']:.0f} | {r['ours_ci95_half']:.1f} | "
                     f"[{lo:.0f}, {hi:.0f}] | {r['diff']:+.0f} | {r['rank_paper']} / {r['rank_ours']} |")
    lines += ["", f"Rank agreement: Spearman {ag['spearman']:.3f}, Kendall tau {ag['kendall_tau']:.3f}; order identical: "
              f"{'yes' if ag['order_matches'] else 'no'}. Largest absolute difference: {ag['max_abs_diff']:.1f} "
              f"({ag['max_abs_diff_model']}); mean {ag['mean_abs_diff']:.1f}. Tolerance ±{res['settings']['tolerance_elo']:g} Elo: "
              f"{'reproduced' if res['reproduced'] else 'NOT reproduced'}.", "", "Sensitivity (same orderings and seed):", "",
              "| Variant | Matches | Spearman | Order identical | Largest difference |", "|---|---:|---:|---|---:|"]
    for name, v in res["variants"].items():
        lines.append(f"| {name} | {v['matches']} | {v['spearman']:.3f} | {'yes' if v['order_matches'] else 'no'} | "
                     f"{v['max_abs_diff']:.1f} ({v['max_abs_diff_model']}) |")
    lines += ["", "See docs/reproductions/qlora-elo.md for what remains different from the paper.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.recipes.qlora_elo", description=__doc__.split("\n")[0])
    p.add_argument("--orderings", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="reports/reproduce-qlora-elo")
    p.add_argument("--ratings-dir", default="", help="default: <data root>/qlora-vicuna-gpt4-ratings")
    args = p.parse_args(argv)
    ratings_dir = args.ratings_dir or paths.data_root() / "qlora-vicuna-gpt4-ratings"
    try:
        out = reproduce(ratings_dir, args.out, orderings=args.orderings, seed=args.seed)
    except ReproductionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = atomic.read_json(out / "results.json")
    print(format_elo_table(res["elo"]))
    print(f"order matches the paper: {res['agreement']['order_matches']}; largest |diff| "
          f"{res['agreement']['max_abs_diff']:.1f} ({res['agreement']['max_abs_diff_model']})")
    print(out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
