"""Agreement between two judges of the same pairs (a model judge and human raters): Cohen's kappa on the verdict
per (item, pair of runs), in a fixed orientation, and the share of identical verdicts.

    harness judge RUN_A RUN_B --suite vicuna --human human/vicuna-r1/human.judgments.jsonl

Pure functions over judgment dicts ({item_id, model_a, model_b, winner}, the JSONL `harness human elo` reads);
statistics from harness/human/ratings.py.
"""

from __future__ import annotations

from typing import Sequence

from harness.human.ratings import cohen_kappa

OUTCOMES = ("first", "second", "tie")  # of the pair's runs in sorted order, whatever side each judgment showed


def oriented(j: dict) -> tuple[tuple[str, str, str], str]:
    """((item, run, run) in sorted run order, "first" | "second" | "tie" in that order)."""
    x, y = sorted((str(j["model_a"]), str(j["model_b"])))
    if j["winner"] == "tie":
        return (str(j["item_id"]), x, y), "tie"
    won = j["model_a"] if j["winner"] == "a" else j["model_b"]
    return (str(j["item_id"]), x, y), "first" if str(won) == x else "second"


def consensus(judgments: Sequence[dict]) -> dict[tuple, str]:
    """One verdict per (item, pair): the common verdict of all its judgments (e.g. a model judge's two orders),
    or a tie when they disagree."""
    seen: dict[tuple, set] = {}
    for j in judgments:
        unit, outcome = oriented(j)
        seen.setdefault(unit, set()).add(outcome)
    return {u: next(iter(v)) if len(v) == 1 else "tie" for u, v in seen.items()}


def judge_agreement(model_judgments: Sequence[dict], human_judgments: Sequence[dict]) -> dict:
    """Each human judgment against the model judge's consensus verdict on the same (item, pair of runs): Cohen's
    kappa (nominal, labels first / second / tie) and the share of equal verdicts. Units without both are counted."""
    model = consensus(model_judgments)
    a, b = [], []
    for j in human_judgments:
        unit, outcome = oriented(j)
        if unit in model:
            a.append(model[unit])
            b.append(outcome)
    human_units = {oriented(j)[0] for j in human_judgments}
    out = {"compared": len(a), "units_model": len(model), "units_human": len(human_units),
           "units_both": len(human_units & set(model)), "labels": list(OUTCOMES),
           "agreement": sum(x == y for x, y in zip(a, b)) / len(a) if a else None, "cohen_kappa": None}
    if len(a) >= 2:
        out["cohen_kappa"] = cohen_kappa(a, b, labels=list(OUTCOMES))
    return out
