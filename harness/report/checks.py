"""What the report must say about its runs before anyone reads a number: whether the compared runs were
evaluated alike (config hashes, metric signatures, eval settings nobody varied), started from the same data
and weights, whether an eval set overlaps the training data (contamination), and where everything came from
(provenance). Each check returns lines for the report's warnings, or a table.
"""
from __future__ import annotations

import json

from harness import __version__
from harness.report.aggregate import Config
from harness.report.fmt import fmt
from harness.report.runs import SEED_AXES, Run, varying_axes
from harness.run.environment import cpu_label

OK = ("completed", "baseline")


# ------------------------------------------------------------------------------ comparability
def _flatten(prefix: str, obj, out: dict[str, str]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = json.dumps(obj, sort_keys=True, default=str)


def suite_settings(run: Run, suite: str, entry: dict) -> dict[str, str]:
    """The settings one suite of one run was evaluated with, as `key -> JSON value`: its part of config.yaml's
    eval section (keys as overrides spell them: eval.lm_eval.limit, eval.generation.0.max_new_tokens), with
    what its eval.json entry records itself (limit, num_fewshot, the eval mode and its dtype) taking precedence, since `harness eval
    RUN_DIR eval=...` re-evaluates without rewriting config.yaml. Batch sizes are left out (same results)."""
    ev = run.config.get("eval") if isinstance(run.config.get("eval"), dict) else {}
    kind, out = entry.get("kind"), {}
    if kind == "lm_eval":
        _flatten("eval.lm_eval", {k: v for k, v in (ev.get("lm_eval") or {}).items() if k not in ("tasks", "batch_size")}, out)
        out.update({f"eval.lm_eval.{k}": json.dumps(entry[k]) for k in ("limit", "num_fewshot") if k in entry})
        if isinstance(entry.get("mode"), str):  # eval.mode and the dtype it ran in (harness/eval/precision.py)
            dtype = (entry.get("precision") or {}).get("dtype")
            out["eval.mode"] = json.dumps(f"{entry['mode']} ({dtype})" if dtype else entry["mode"])
    elif kind in ("perplexity", "generation"):
        items = ev.get(kind) if isinstance(ev.get(kind), list) else []
        for i, item in enumerate(items):
            if isinstance(item, dict) and item.get("name") == suite:
                _flatten(f"eval.{kind}.{i}", {k: v for k, v in item.items() if k not in ("name", "batch_size")}, out)
        if kind == "generation" and "seed" in ev:
            out["eval.seed"] = json.dumps(ev["seed"])  # sampling seed: not in the suite's config_hash
    elif kind == "val":
        _flatten("data", run.config.get("data") or {}, out)
        train = run.config.get("train") or {}
        out.update({f"train.{k}": json.dumps(train[k]) for k in ("max_length", "seed", "eval_batches", "batch_size")
                    if k in train})
    return out


def _covered(setting: str, varied: list[str]) -> bool:
    return any(setting == k or setting.startswith(k + ".") for k in varied)


def _values(vals: dict[str, int]) -> str:
    return ", ".join(f"{v} ({n} run{'s' if n != 1 else ''})" for v, n in sorted(vals.items()))


def eval_setting_lines(runs: list[Run]) -> list[str]:
    """One line per suite whose runs were evaluated differently: the settings that differ and that no sweep axis
    (nor the seed) varies; or, when config_hash differs but no recorded setting explains it, the hashes."""
    by_suite: dict[str, list[tuple[Run, dict]]] = {}
    for r in runs:
        if r.status in OK:
            for s, res in (r.eval.get("suites") or {}).items():
                if isinstance(res, dict):
                    by_suite.setdefault(s, []).append((r, res))
    out = []
    for suite, pairs in sorted(by_suite.items()):
        hashes = sorted({str(res["config_hash"]) for _, res in pairs if res.get("config_hash") not in (None, "")})
        varied = varying_axes([r.axes for r, _ in pairs]) + list(SEED_AXES)
        seen: dict[str, dict[str, int]] = {}
        for r, res in pairs:
            for k, v in suite_settings(r, suite, res).items():
                seen.setdefault(k, {}).setdefault(v, 0)
                seen[k][v] += 1
        differ = {k: vals for k, vals in sorted(seen.items()) if len(vals) > 1}  # among the runs that record k
        unvaried = {k: vals for k, vals in differ.items() if not _covered(k, varied)}
        if unvaried:
            shown = [f"{k} = {_values(vals)}" for k, vals in list(unvaried.items())[:3]]
            more = f"; and {len(unvaried) - 3} more" if len(unvaried) > 3 else ""
            out.append(f"Runs differ in an eval setting of {suite} that no sweep axis varies: {'; '.join(shown)}{more}. "
                       "Its numbers are not comparable across these runs.")
        elif len(hashes) > 1 and not differ:
            out.append(f"Runs differ in eval config_hash for {suite}: {', '.join(hashes)}. "
                       "Numbers across these runs are not comparable.")
    return out


def comparability(runs: list[Run]) -> list[str]:
    """Warnings when runs that are compared differ in eval settings, data, weights or metric signature."""
    seen: dict[str, dict[str, set]] = {}

    def add(what, key, value):
        if value not in (None, ""):
            seen.setdefault(what, {}).setdefault(key, set()).add(str(value))

    for r in runs:
        if r.status not in OK:
            continue
        for s, res in (r.eval.get("suites") or {}).items():
            for m, sig in (res.get("signatures") or {}).items():
                add("metric signature", f"{s}.{m}", sig)
        data = r.manifest.get("data") or {}
        add("data hash", str(data.get("name", "")), ",".join(str(f.get("sha256", ""))[:16] for f in data.get("files") or []))
        model = r.manifest.get("model") or {}
        add("model weights hash", str(model.get("name", "")), (model.get("sha256") or "")[:16] or None)
    out = eval_setting_lines(runs)
    for what, keys in sorted(seen.items()):
        for k, vals in sorted(keys.items()):
            if len(vals) > 1:
                out.append(f"Runs differ in {what} for {k}: {', '.join(sorted(vals))}. Numbers across these runs are not comparable.")
    return out


def identity_notes(configs: list[Config]) -> list[str]:
    """Runs with the same axes that started from other data files (or weights) are separate configurations:
    say so, since a reader expects them in one row."""
    groups: dict[tuple[bool, str], list[Config]] = {}
    for c in configs:
        groups.setdefault((c.baseline, json.dumps(c.axes, sort_keys=True, default=str)), []).append(c)
    out = []
    for cs in groups.values():
        if len(cs) < 2:
            continue
        label = cs[0].label.rsplit(" [", 1)[0]
        if len({c.data_hash for c in cs}) > 1:
            name = str((cs[0].runs[0].manifest.get("data") or {}).get("name", "")) or "?"
            hashes = ", ".join(sorted(c.data_hash[:16] or "unrecorded" for c in cs))
            out.append(f"Runs of {label} read different files for data {name} (sha256 {hashes}): "
                       f"shown as {len(cs)} separate rows, not averaged together.")
        else:
            hashes = ", ".join(sorted(c.model_hash[:16] or "unrecorded" for c in cs))
            out.append(f"Runs of {label} started from different weights (sha256 {hashes}): "
                       f"shown as {len(cs)} separate rows, not averaged together.")
    return out


# ------------------------------------------------------------------------------- contamination
def _pct(x: float) -> str:
    return f"{fmt(100.0 * x, 3)}%"


def contamination(configs: list[Config]) -> tuple[list[dict], list[str]]:
    """Per eval set, each trained configuration's overlap with its training data, from the `contamination`
    field of its runs' eval.json suite entries (share: mean over the configuration's runs); and a warning line
    per (eval set, training data) whose share is above the entry's warn_above."""
    tables: dict[str, dict] = {}
    for c in configs:
        if c.baseline:
            continue
        by_suite: dict[str, list[dict]] = {}
        for r in c.runs:
            for s, res in (r.eval.get("suites") or {}).items():
                ent = res.get("contamination") if isinstance(res, dict) else None
                if isinstance(ent, dict) and isinstance(ent.get("share"), (int, float)):
                    by_suite.setdefault(s, []).append(ent)
        for s, ents in by_suite.items():
            t = tables.setdefault(s, {"suite": s, "n": ents[0].get("n"), "min_words": ents[0].get("min_words"), "rows": []})
            t["rows"].append({
                "config": c.label, "train_data": str(ents[0].get("train_data", "")), "runs": len(ents),
                "share": sum(float(e["share"]) for e in ents) / len(ents),
                "contaminated": max(int(e.get("contaminated") or 0) for e in ents),
                "items": max(int(e.get("items") or 0) for e in ents),
                "too_short": max(int(e.get("too_short") or 0) for e in ents),
                "warn_above": min(float(e.get("warn_above", 0.01)) for e in ents),
            })
    out = [tables[s] for s in sorted(tables)]
    warnings = []
    for t in out:
        worst: dict[str, dict] = {}
        for row in t["rows"]:
            if row["train_data"] not in worst or row["share"] > worst[row["train_data"]]["share"]:
                worst[row["train_data"]] = row
        for data, row in sorted(worst.items()):
            if row["share"] > row["warn_above"]:
                warnings.append(f"Eval set {t['suite']} overlaps the training data {data}: {_pct(row['share'])} of its items "
                                f"share a {t['n']}-word sequence with it (above {_pct(row['warn_above'])}); "
                                "scores on it may be inflated.")
    return out, warnings


# ---------------------------------------------------------------------------------- provenance
def provenance(runs: list[Run]) -> dict:
    def many(values):
        return sorted({str(v) for v in values if v not in (None, "")})

    ok = [r for r in runs if not r.error]
    pk: dict[str, set] = {}
    for r in ok:
        for k, v in (r.manifest.get("packages") or {}).items():
            pk.setdefault(k, set()).add(str(v))
        if r.manifest.get("torch"):
            pk.setdefault("torch", set()).add(str(r.manifest["torch"]))
    return {
        "report harness version": [__version__],
        "run harness versions": many(r.manifest.get("harness_version") for r in ok),
        "git commits": many(f"{(r.manifest.get('git') or {}).get('commit')}" + (" (dirty)" if (r.manifest.get("git") or {}).get("dirty") else "")
                            for r in ok if (r.manifest.get("git") or {}).get("commit")),
        "python": many(r.manifest.get("python") for r in ok),
        "devices": many(r.manifest.get("device") for r in ok),
        "cpus": many(cpu_label(r.manifest.get("cpu"), r.manifest.get("cpu_model_id")) for r in ok),
        "gpus": many(r.manifest.get("gpu") for r in ok),
        "data files": many(f"{f.get('path')} sha256:{str(f.get('sha256'))[:16]}" for r in ok
                           for f in (r.manifest.get("data") or {}).get("files") or []),
        "models": many(f"{(r.manifest.get('model') or {}).get('name')} sha256:{str((r.manifest.get('model') or {}).get('sha256'))[:16]}"
                       for r in ok if r.manifest.get("model")),
        "packages": {k: sorted(v) for k, v in sorted(pk.items())},
    }
