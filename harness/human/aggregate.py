"""Ratings -> results: per-system means with intervals, annotator agreement, pairwise win tables and Elo.
The statistics themselves are pure functions in harness/human/ratings.py.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from harness.human.ratings import (
    bradley_terry,
    bradley_terry_bootstrap,
    bt_mle_exists,
    bt_to_elo_scale,
    cohen_kappa,
    elo_orderings,
    krippendorff_alpha,
    mean_ci,
    summarize_samples,
    wilson_interval,
    win_matrix,
)
from harness.human.sheets import SCALE, HumanEvalError


def _agreement(units: dict, annotators: list[str], level: str, weights: str | None) -> dict:
    """units: {unit: {annotator: value}} -> Krippendorff's alpha (+ Cohen's kappa with two annotators)."""
    multi = {u: v for u, v in units.items() if len(v) >= 2}
    out = {"annotators": len({a for v in units.values() for a in v}), "units_multi_rated": len(multi),
           "krippendorff_alpha": krippendorff_alpha([[v.get(a) for a in annotators] for v in multi.values()], level),
           "level": level}
    if level == "ordinal":
        out["krippendorff_alpha_interval"] = krippendorff_alpha(
            [[v.get(a) for a in annotators] for v in multi.values()], "interval")
    raters = sorted({a for v in multi.values() for a in v})
    if len(raters) == 2:
        both = [v for v in multi.values() if raters[0] in v and raters[1] in v]
        xa, xb = [v[raters[0]] for v in both], [v[raters[1]] for v in both]
        out["cohen_kappa"] = cohen_kappa(xa, xb)
        if weights:
            out[f"cohen_kappa_{weights}"] = cohen_kappa(xa, xb, weights=weights, labels=list(range(SCALE[0], SCALE[1] + 1)))
    return out


def aggregate(good: list[dict], key: dict, orderings: int = 1000, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Means with CIs, win rates with Wilson intervals, Bradley-Terry, Elo, agreement (pure)."""
    rows, labels = key["rows"], [r["label"] for r in key["runs"]]
    out: dict = {"mode": key["mode"], "runs": labels}
    if key["mode"] == "pointwise":
        scores, agree = {}, {}
        for c in key["criteria"]:
            per_unit: dict[str, dict] = {}
            unit_run: dict[str, str] = {}
            for r in good:
                per_unit.setdefault(rows[r["id"]]["unit"], {})[r["annotator"]] = r[c]
                unit_run[rows[r["id"]]["unit"]] = rows[r["id"]]["run"]
            agree[c] = _agreement(per_unit, key["annotators"], "ordinal", "quadratic")
            for lab in labels:
                mine = [v for u, v in per_unit.items() if unit_run[u] == lab]
                unit_means = [float(np.mean(list(v.values()))) for v in mine]  # annotators averaged per item first
                mean, lo, hi = mean_ci(unit_means)
                n_ratings = sum(len(v) for v in mine)
                scores.setdefault(lab, {})[c] = {"mean": mean, "ci95": [lo, hi], "n_items": len(unit_means), "n_ratings": n_ratings}
        out.update({"criteria": key["criteria"], "scores": scores, "agreement": agree})
        return out
    judgments = [{"item_id": rows[r["id"]]["item_id"], "model_a": rows[r["id"]]["run_a"], "model_b": rows[r["id"]]["run_b"],
                  "winner": r["winner"], "judge": r["annotator"], "unit": rows[r["id"]]["unit"],
                  "first": rows[r["id"]]["pair"][0]} for r in good]
    out["pairs"] = pair_table(judgments, labels)
    idx = {lab: i for i, lab in enumerate(labels)}
    a = np.array([idx[j["model_a"]] for j in judgments], dtype=np.int64)
    b = np.array([idx[j["model_b"]] for j in judgments], dtype=np.int64)
    s = np.array([{"a": 1.0, "tie": 0.5, "b": 0.0}[j["winner"]] for j in judgments])
    if len(judgments):
        prior = 1.0
        point = bt_to_elo_scale(bradley_terry(win_matrix(a, b, s, len(labels)), prior=prior))
        boot = bt_to_elo_scale(bradley_terry_bootstrap(a, b, s, len(labels), bootstrap, seed, prior))
        q = np.quantile(boot, [0.025, 0.975], axis=0)
        out["bradley_terry"] = {
            "scale": "elo (400 log10 strength + 1000)", "prior_ties_per_pair": prior, "bootstrap": bootstrap,
            "mle_exists": bt_mle_exists(win_matrix(a, b, s, len(labels))),
            "models": {lab: {"score": float(point[i]), "ci95": [float(q[0, i]), float(q[1, i])]} for i, lab in enumerate(labels)},
        }
        out["elo"] = rank_elo(judgments, orderings=orderings, seed=seed)
    # agreement on the outcome in a fixed orientation (the key's run order), whatever side each row showed
    per_unit: dict[str, dict] = {}
    for j in judgments:
        outcome = "tie" if j["winner"] == "tie" else ("first" if (j["winner"] == "a") == (j["model_a"] == j["first"]) else "second")
        per_unit.setdefault(j["unit"], {})[j["judge"]] = outcome
    out["agreement"] = {"winner": _agreement(per_unit, key["annotators"], "nominal", None)}
    out["judgments"] = [{k: v for k, v in j.items() if k not in ("unit", "first")} for j in judgments]
    return out


def pair_table(judgments: list[dict], labels: list[str]) -> list[dict]:
    """Win/tie/loss counts and rates (Wilson 95% intervals) per pair of models, in label order."""
    out = []
    for x, y in itertools.combinations(labels, 2):
        w = t = l = 0
        for j in judgments:
            if {j["model_a"], j["model_b"]} != {x, y}:
                continue
            if j["winner"] == "tie":
                t += 1
            elif (j["winner"] == "a") == (j["model_a"] == x):
                w += 1
            else:
                l += 1
        n = w + t + l
        if not n:
            continue
        rate = lambda k: {"value": k / n, "ci95": list(wilson_interval(k, n))}  # noqa: E731
        out.append({"model_a": x, "model_b": y, "n": n, "wins_a": w, "ties": t, "wins_b": l,
                    "win_rate_a": rate(w), "tie_rate": rate(t), "win_rate_b": rate(l),
                    "score_a": rate(w + 0.5 * t)})
    return out


def rank_elo(judgments: list[dict], k: float = 32.0, initial: float = 1000.0, orderings: int = 10_000,
             seed: int = 0) -> dict:
    """Elo averaged over random orderings of the matches, ranked by mean rating (pure)."""
    if not judgments:
        raise HumanEvalError("no judgments to rank")
    models = sorted({j["model_a"] for j in judgments} | {j["model_b"] for j in judgments})
    idx = {m: i for i, m in enumerate(models)}
    a = np.array([idx[j["model_a"]] for j in judgments], dtype=np.int64)
    b = np.array([idx[j["model_b"]] for j in judgments], dtype=np.int64)
    s = np.array([{"a": 1.0, "tie": 0.5, "b": 0.0}[j["winner"]] for j in judgments])
    t0, c0 = time.perf_counter(), time.process_time()
    final = elo_orderings(a, b, s, len(models), k=k, initial=initial, orderings=orderings, seed=seed)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    st = summarize_samples(final)
    wins = np.bincount(a, weights=(s == 1), minlength=len(models)) + np.bincount(b, weights=(s == 0), minlength=len(models))
    ties = np.bincount(a, weights=(s == 0.5), minlength=len(models)) + np.bincount(b, weights=(s == 0.5), minlength=len(models))
    games = np.bincount(a, minlength=len(models)) + np.bincount(b, minlength=len(models))
    order = np.argsort(-st["mean"], kind="stable")
    rows = []
    for rank, i in enumerate(order, 1):
        rows.append({"rank": rank, "model": models[i], "elo": float(st["mean"][i]),
                     "mean_ci95_half": float(st["mean_ci_half"][i]), "sd": float(st["sd"][i]),
                     "interval95": [float(st["lo"][i]), float(st["hi"][i])],
                     "matches": int(games[i]), "wins": int(wins[i]), "ties": int(ties[i]),
                     "losses": int(games[i] - wins[i] - ties[i])})
    return {"k": k, "initial": initial, "orderings": orderings, "seed": seed, "matches": int(a.size),
            "elapsed_s": round(elapsed, 3), "cpu_s": round(cpu, 3), "ranking": rows,
            "note": "elo = mean over orderings; mean_ci95_half = 1.96 sd / sqrt(orderings) (the paper's ±); "
                    "interval95 = 2.5-97.5 percentiles of the final rating over orderings"}


def format_elo_table(result: dict) -> str:
    lines = [f"{'rank':>4}  {'model':<40} {'elo':>8} {'±':>5}  {'95% over orderings':>20}  {'W/T/L':>14}"]
    for r in result["ranking"]:
        lo, hi = r["interval95"]
        lines.append(f"{r['rank']:>4}  {r['model']:<40} {r['elo']:>8.1f} {r['mean_ci95_half']:>5.1f}  "
                     f"{f'[{lo:.0f}, {hi:.0f}]':>20}  {r['wins']:>4}/{r['ties']}/{r['losses']}")
    lines.append(f"{result['matches']} matches, {result['orderings']} orderings, K={result['k']:g}, "
                 f"start {result['initial']:g}, {result['elapsed_s']:.2f} s ({result['cpu_s']:.2f} s CPU)")
    return "\n".join(lines)
