"""`harness report`: what won, by how much, at what cost, and how sure we are -- from run records only.

    harness report STUDY [--runs-root runs] [--storage URL] [--out reports]
    harness report RUN_DIR [RUN_DIR ...] --name NAME

Reads run directories (docs/run-record.md, via harness.records readers; never torch, never
recomputes a metric) and writes reports/<name>/: report.md, report.html (one self-contained file),
results.csv and results.json (one row per run), figures/*.png|svg. Prints the report.html path.
Statistics live in harness.stats, figures in harness.figures, HTML in harness.report_html; this
module collects the records, aggregates them, runs the paired tests and writes the files.
Same records -> same bytes, except the one "Generated:" line (honours SOURCE_DATE_EPOCH).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import io
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness import __version__, atomic, paths, records, stats

SEED_AXES = ("seed", "train.seed")
COST = (  # (flat metric, header)
    ("summary.trainable_params", "trainable params"), ("summary.trainable_share", "trainable share"),
    ("summary.peak_memory_mb", "peak memory (MB)"), ("summary.train_time_s", "train time (s)"),
    ("summary.tokens_per_s", "tokens/s"), ("summary.adapter_bytes", "adapter size (bytes)"),
)
PAIRED = {"lm_eval": ("acc",), "generation": ("bleu", "chrf", "rougeL")}  # per-item keys tested per suite kind
BINARY = ("acc", "acc_norm", "exact_match")
PERCENT = ("acc", "acc_norm", "exact_match", "rouge1", "rouge2", "rougeL", "rougeLsum", "f1")  # 0-1 -> points x100
PRIMARY_ORDER = ("bleu", "acc", "chrf", "rougeL", "word_perplexity", "loss")
NOT_OK = ("failed", "diverged", "pruned", "interrupted", "running", "unreadable")


# ------------------------------------------------------------------------------- small helpers
def metric_direction(name: str) -> str | None:
    """'max' (higher is better), 'min' (lower is better) or None (no direction), from the name."""
    n = name.lower()
    if "tokens_per_s" in n or "throughput" in n:
        return "max"
    if "bits_per_byte" in n:
        return "min"
    tokens = set(n.replace(".", "_").split("_"))
    if tokens & {"loss", "perplexity", "ppl", "ter", "memory", "mem", "time", "nll", "bytes", "params", "share", "stderr"}:
        return "min"
    if tokens & {"acc", "bleu", "chrf", "rouge1", "rouge2", "rougel", "rougelsum", "match", "f1", "score", "elo", "win"}:
        return "max"
    return None


def fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—" if v is None else str(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if abs(v) >= 1e4 or (abs(v) >= 1000 and float(v).is_integer()) or abs(v) >= 10 ** digits:
        return f"{v:,.0f}"
    if abs(v) >= 1000:
        return f"{v:,.1f}"
    return f"{v:.{digits}g}"


def fmt_p(p: float) -> str:
    if not isinstance(p, (int, float)) or not math.isfinite(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"= {p:.3f}" if p < 0.1 else f"= {p:.2f}"


def _num(v) -> float:
    """Record value -> float (non-finite floats are stored as the strings nan/inf by harness.atomic)."""
    if isinstance(v, bool) or v is None:
        return math.nan
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(v)
    return math.nan


def csv_safe(v) -> str:
    """A CSV cell a spreadsheet will not run as a formula: leading = + - @ tab CR get a quote."""
    s = "" if v is None else (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v))
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


def axis_label(axes: dict, varying: list[str]) -> str:
    """Short name of a configuration: the values of the axes that vary between configurations."""
    parts = []
    for k in varying:
        if k in axes:
            v = axes[k]
            parts.append(str(v) if "." not in k else f"{k.split('.')[-1]}={fmt(v) if isinstance(v, float) else v}")
    return " ".join(parts) or ", ".join(f"{k}={v}" for k, v in sorted(axes.items())) or "(no axes)"


# ---------------------------------------------------------------------------------- run records
@dataclass
class Run:
    path: Path
    summary: dict
    metrics: dict
    eval: dict
    manifest: dict
    config: dict
    error: str = ""

    @property
    def status(self) -> str:
        return "unreadable" if self.error else str(self.summary.get("status", "unknown"))

    @property
    def axes(self) -> dict:
        ax = self.summary.get("axes") or {}
        if not ax:  # older/hand-made records: fall back to the group choices
            ax = {k: self.summary[k] for k in ("model", "method", "data") if self.summary.get(k)}
        return {k: v for k, v in ax.items() if k not in SEED_AXES}

    @property
    def key(self) -> str:
        return json.dumps(self.axes, sort_keys=True, default=str)

    @property
    def trial(self) -> int:
        t = self.summary.get("trial")
        return t if isinstance(t, int) and not isinstance(t, bool) else -1

    @property
    def seed(self):
        return self.summary.get("seed", (self.summary.get("axes") or {}).get("seed", 0))


def varying_axes(axes_list: list[dict]) -> list[str]:
    """Axis names whose value (or presence) differs between configurations, sorted."""
    values: dict[str, set] = {}
    for ax in axes_list:
        for k in ax:
            values.setdefault(k, set())
    for ax in axes_list:
        for k in values:
            values[k].add(json.dumps(ax.get(k), sort_keys=True, default=str))
    return sorted(k for k, v in values.items() if len(v) > 1)


def load_run(path: Path, summary: dict | None = None) -> Run:
    try:
        summary = summary if summary is not None else (records.read_summary(path) or {})
        ev = records.read_eval(path) or {}
        metrics = records.flat_metrics(path)
        man = atomic.read_json(path / "manifest.json") if (path / "manifest.json").exists() else {}
        cfg = {}
        if (path / "config.yaml").exists():
            with open(path / "config.yaml", encoding="utf-8") as f:
                cfg = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        return Run(path, summary, metrics, ev, man, cfg if isinstance(cfg, dict) else {})
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return Run(path, {}, {}, {}, {}, {}, error=f"{type(exc).__name__}: {exc}")


def collect(args) -> tuple[str, list[Run], list[str]]:
    """(report name, runs, input directories) from the positional targets."""
    targets = list(args.targets)
    dirs = [Path(t) for t in targets]
    if all(d.is_dir() for d in dirs):
        found = sorted({p for d in dirs for p in records.find_run_dirs(d)})
        if not found:
            raise SystemExit(f"error: no summary.json under {', '.join(targets)}; pass run directories or a study name")
        runs = [load_run(p) for p in found]
        studies = {str(r.summary.get("study") or "") for r in runs if not r.error}
        name = args.name or (studies.pop() if len(studies) == 1 else "")
        if not name:
            raise SystemExit("error: these run directories belong to no single study; name the report with --name NAME")
        for b in args.baseline or []:
            runs.extend(load_run(p) for p in records.find_run_dirs(b))
        return paths.check_name(name, "report name"), runs, [str(d) for d in dirs]
    if len(targets) != 1:
        missing = [t for t in targets if not Path(t).is_dir()]
        raise SystemExit(f"error: not run directories: {', '.join(missing)}; pass one STUDY name or existing RUN_DIRs")
    study = paths.check_name(targets[0], "study name")
    root = Path(args.runs_root)
    if not root.is_dir():
        raise SystemExit(f"error: runs root {root} does not exist; pass --runs-root DIR (where the study's runs are)")
    runs, seen = [], set()
    for p in records.find_run_dirs(root):
        try:
            s = records.read_summary(p) or {}
        except (OSError, ValueError) as exc:
            runs.append(Run(p, {}, {}, {}, {}, {}, error=f"{type(exc).__name__}: {exc} (study unknown)"))
            continue
        seen.add(s.get("study") or "")
        if s.get("study") == study:
            runs.append(load_run(p, s))
    if not [r for r in runs if not r.error]:
        known = ", ".join(sorted(s for s in seen if s)) or "none"
        raise SystemExit(f"error: no run directory under {root} has study {study!r} in summary.json. Studies found: {known}")
    for b in args.baseline or []:
        runs.extend(load_run(p) for p in records.find_run_dirs(b))
    if not args.no_auto_baseline and not any(r.status == "baseline" for r in runs):
        runs.extend(auto_baselines(root, runs))
    return paths.check_name(args.name or study, "report name"), runs, [str(root / study)]


def auto_baselines(root: Path, runs: list[Run]) -> list[Run]:
    """For each model of the study, the latest base-model evaluation under root that belongs to no
    study (`harness eval model=X eval=...` writes runs/X-base/<run_id>/), so reports show the
    untrained reference without extra flags. --no-auto-baseline turns this off."""
    models = {str(r.summary.get("model")) for r in runs if r.summary.get("model")}
    latest: dict[str, tuple[str, Path, dict]] = {}
    for p in records.find_run_dirs(root):
        try:
            s = records.read_summary(p) or {}
        except (OSError, ValueError):
            continue
        if s.get("status") == "baseline" and not s.get("study") and str(s.get("model")) in models:
            k = (str(s.get("finished_at") or ""), str(p))
            if str(s["model"]) not in latest or k > latest[str(s["model"])][:2]:
                latest[str(s["model"])] = (*k, s)
    return [load_run(Path(p), s) for _, p, s in (latest[m] for m in sorted(latest))]


# ------------------------------------------------------------------------------------ aggregate
@dataclass
class Config:
    key: str
    axes: dict
    runs: list[Run]
    baseline: bool
    label: str = ""
    cells: dict = field(default_factory=dict)  # metric -> {mean, lo, hi, n}


def aggregate(runs: list[Run], metrics: list[str]) -> list[Config]:
    groups: dict[tuple[bool, str], list[Run]] = {}
    for r in runs:
        if r.status in ("completed", "baseline"):
            groups.setdefault((r.status == "baseline", r.key), []).append(r)
    out = []
    for (is_base, key), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: (str(r.seed), str(r.path)))
        c = Config(key, rs[0].axes, rs, is_base)
        for m in metrics:
            mean, lo, hi, n = stats.mean_ci([r.metrics.get(m, math.nan) for r in rs])
            if n:
                c.cells[m] = {"mean": mean, "lo": lo, "hi": hi, "n": n}
        out.append(c)
    varying = varying_axes([c.axes for c in out if not c.baseline])
    for c in out:
        c.label = ("base " + str(c.axes.get("model", ""))).strip() if c.baseline else axis_label(c.axes, varying)
    return out


def choose_primary(metrics: list[str], requested: str, optuna_info: dict | None) -> str:
    if requested:
        if requested not in metrics:
            raise SystemExit(f"error: --metric {requested!r} is in no completed run. Available: {', '.join(metrics)}")
        return requested
    for m in study_objectives(optuna_info):
        if m in metrics:
            return m
    for want in PRIMARY_ORDER:
        for m in metrics:
            if m.split(".", 1)[-1] == want and not m.startswith("summary."):
                return m
    return next((m for m in metrics if not m.startswith("summary.")), "summary.best_val_loss")


def study_objectives(optuna_info: dict | None) -> list[str]:
    """The study's objective metrics, in order: user attribute "objectives" (harness sweep), else
    "metric"/"objective"."""
    attrs = (optuna_info or {}).get("user_attrs", {})
    objs = attrs.get("objectives")
    if isinstance(objs, list):
        return [str(o) for o in objs]
    return [str(attrs[k]) for k in ("metric", "objective") if isinstance(attrs.get(k), str)]


def rank(configs: list[Config], metric: str, direction: str) -> list[Config]:
    sign = -1.0 if direction == "max" else 1.0

    def k(c):
        m = c.cells.get(metric, {}).get("mean", math.nan)
        return (c.baseline, not math.isfinite(m), sign * m if math.isfinite(m) else 0.0, c.label)

    return sorted(configs, key=k)


def best_marks(configs: list[Config], columns: list[str]) -> dict[str, float]:
    """Per column, the best mean among trained configurations (baselines are references only)."""
    best = {}
    for m in columns:
        d = metric_direction(m)
        vals = [c.cells[m]["mean"] for c in configs if not c.baseline and m in c.cells and math.isfinite(c.cells[m]["mean"])]
        if d and vals and len(vals) > 1:
            best[m] = max(vals) if d == "max" else min(vals)
    return best


# ------------------------------------------------------------------------------ paired statistics
class SampleCache:
    """Per-item scores read once per (run, suite) and indexed by item id per key."""

    def __init__(self):
        self._rows: dict[tuple[str, str], list[dict]] = {}
        self._by_key: dict[tuple[str, str, str], dict[str, float]] = {}

    def get(self, run: Run, suite: str) -> list[dict]:
        k = (str(run.path), suite)
        if k not in self._rows:
            self._rows[k] = records.read_samples(run.path, suite)
        return self._rows[k]

    def scores(self, run: Run, suite: str, key: str) -> dict[str, float]:
        k = (str(run.path), suite, key)
        if k not in self._by_key:
            self._by_key[k] = {str(s.get("id")): _num(s.get(key)) for s in self.get(run, suite) if key in s}
        return self._by_key[k]


def _run_pairs(a: list[Run], b: list[Run]) -> list[tuple[Run, Run]]:
    """Which runs to pair: a single run on either side pairs with every run of the other (a baseline
    is deterministic); otherwise runs with the same seed; with no common seed, in seed order."""
    if len(a) == 1 or len(b) == 1:
        return [(x, y) for x in a for y in b]
    bs = {str(r.seed): r for r in b}
    common = [(x, bs[str(x.seed)]) for x in a if str(x.seed) in bs]
    return common or list(zip(a, b))


def paired_values(cache: SampleCache, a: Config, b: Config, suite: str, key: str):
    xa, xb, items, unmatched, pairs = [], [], set(), 0, _run_pairs(a.runs, b.runs)
    for ra, rb in pairs:
        sa, sb = cache.scores(ra, suite, key), cache.scores(rb, suite, key)
        common = sorted(sa.keys() & sb.keys())
        unmatched += len(sa.keys() ^ sb.keys())
        for i in common:
            if math.isfinite(sa[i]) and math.isfinite(sb[i]):
                xa.append(sa[i])
                xb.append(sb[i])
                items.add(i)
            else:
                unmatched += 1
    return xa, xb, len(items), len(pairs), unmatched


def compare(configs: list[Config], cache: SampleCache, args) -> tuple[list[dict], list[str]]:
    """Paired tests: each configuration against the best one per tested metric, and against the
    baseline(s); Holm-adjusted over every comparison shown."""
    notes = []
    trained = [c for c in configs if not c.baseline]
    bases = [c for c in configs if c.baseline]
    suites = {}
    for c in configs:
        for r in c.runs:
            for s, res in sorted((r.eval.get("suites") or {}).items()):
                for key in PAIRED.get(res.get("kind", ""), ()):
                    if key in (res.get("metrics") or {}):
                        suites.setdefault((s, key), res.get("kind"))
    out = []
    for (suite, key), kind in sorted(suites.items()):
        m = f"{suite}.{key}"
        d = metric_direction(m) or "max"
        ranked = [c for c in rank(trained, m, d) if m in c.cells]
        if not ranked:
            continue
        best = ranked[0]
        shown = ranked[1 : 1 + args.max_compare]
        if len(ranked) - 1 > args.max_compare:
            notes.append(f"{m}: compared the top {args.max_compare} of {len(ranked) - 1} configurations with the best; "
                         f"raise --max-compare to test more (all are in the leaderboard).")
        todo = [(c, best, "vs best") for c in shown]
        for base in bases:
            same_model = [c for c in ranked[: 1 + args.max_compare] if c.axes.get("model") == base.axes.get("model")]
            todo += [(c, base, "vs baseline") for c in (same_model or ranked[: 1 + args.max_compare])]
        for a, b, kind_cmp in todo:
            xa, xb, n_items, n_pairs, unmatched = paired_values(cache, a, b, suite, key)
            row = {"suite": suite, "metric": key, "flat_metric": m, "a": a.label, "b": b.label, "kind": kind_cmp,
                   "n_items": n_items, "run_pairs": n_pairs, "n": len(xa), "unmatched": unmatched,
                   "delta": math.nan, "ci": [math.nan, math.nan], "p": math.nan}
            if len(xa) < 2:
                row["test"] = "none (no paired samples)"
            elif key in BINARY and set(xa) | set(xb) <= {0.0, 1.0}:
                row.update(test="McNemar exact", delta=sum(xa) / len(xa) - sum(xb) / len(xb), p=stats.mcnemar_exact(xa, xb))
            elif args.paired_test == "permutation":
                delta, p = stats.paired_permutation(xa, xb, n=args.permutations, seed=args.seed)
                row.update(test="paired permutation", delta=delta, p=p)
            else:
                delta, ci, p = stats.paired_bootstrap(xa, xb, n=args.bootstrap, seed=args.seed)
                row.update(test="paired bootstrap (mean of per-item scores)", delta=delta, ci=list(ci), p=p)
            out.append(row)
    for row, adj in zip(out, stats.holm([r["p"] for r in out])):
        row["p_holm"] = adj
        row["verdict"] = verdict(row)
    return out, notes


def verdict(row: dict) -> str:
    scale = 100.0 if row["metric"] in PERCENT else 1.0
    name = f"{row['suite']} {row['metric']}"
    if not math.isfinite(row["p"]):
        return f"{row['a']} vs {row['b']} on {name}: not tested ({row['test']})"
    delta = row["delta"] * scale
    d = metric_direction(row["flat_metric"]) or "max"
    better = (delta > 0) == (d == "max")
    sig = row["p_holm"] < 0.05
    word = (("better" if better else "worse") + ", significant") if sig and delta != 0 else "not significant"
    seeds = f" × {row['run_pairs']} run pairs" if row["run_pairs"] > 1 else ""
    left_out = f"; {row['unmatched']} item scores without a partner left out" if row["unmatched"] else ""
    return (f"{row['a']} vs {row['b']} on {name}: {delta:+.2f} points, {word} "
            f"(p {fmt_p(row['p_holm'])} Holm-adjusted, raw p {fmt_p(row['p'])}, n = {row['n_items']} items{seeds}{left_out})")


# -------------------------------------------------------------------------------- other sections
def load_optuna(storage: str, study: str) -> tuple[dict | None, str]:
    if storage.startswith("sqlite:///"):
        f = Path(storage[len("sqlite:///"):])
        if not f.exists():
            return None, f"No Optuna storage at {f}: optimisation history is drawn from run records; no importances."
    try:
        import optuna
        from optuna.importance import FanovaImportanceEvaluator, get_param_importances

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        target = storage
        if storage.startswith("journal:"):  # harness sweep's shared-file storage
            from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

            path = str(Path(storage[len("journal:"):].removeprefix("//")).expanduser())
            if not Path(path).exists():
                return None, f"No Optuna journal at {path}: optimisation history is drawn from run records; no importances."
            target = optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
        st = optuna.load_study(study_name=study, storage=target)
    except Exception as exc:  # noqa: BLE001 - any storage problem becomes a visible note, not a crash
        return None, f"Could not load Optuna study {study!r} from {storage}: {type(exc).__name__}: {exc}"
    trials = st.get_trials(deepcopy=False)
    info = {"storage": storage, "directions": [d.name.lower() for d in st.directions], "user_attrs": dict(st.user_attrs),
            "trials": [(t.number, (t.values or [math.nan])[0], t.state.name) for t in trials],
            "importances": {}, "importance_note": ""}
    done = [t for t in trials if t.state.name == "COMPLETE"]
    if not any(t.params for t in done):
        info["importance_note"] = ("No hyperparameter importances: the study's completed trials carry no sampled "
                                   "parameters (a grid sweep keeps its cells in trial user_attrs). See the "
                                   "'swept hyperparameters' figure instead.")
        return info, ""
    try:
        imp = get_param_importances(st, evaluator=FanovaImportanceEvaluator(n_trees=32, seed=0),
                                    target=(lambda t: t.values[0]) if len(st.directions) > 1 else None)
        info["importances"] = {k: float(v) for k, v in imp.items()}
    except Exception as exc:  # noqa: BLE001
        info["importance_note"] = f"Hyperparameter importances unavailable: {type(exc).__name__}: {exc}"
    return info, ""


def gather_references(runs: list[Run], extra_files: list[Path]) -> list[dict]:
    """Published numbers from references files (--references, inputs) and from the runs' config.yaml. A
    number a file gives (same metric and value) replaces the config's copy: the file is the newer word,
    e.g. one that adds `axes` to references older runs carry without them."""
    from_files = []
    for f in extra_files:
        data = atomic.read_json(f)
        for ref in data if isinstance(data, list) else data.get("references", []):
            from_files.append({**ref, "_from": str(f)})
    given = {(str(r.get("metric")), _num(r.get("value"))) for r in from_files}
    refs, seen = [], set()
    for r in runs:
        for ref in r.config.get("references") or []:
            if isinstance(ref, dict):
                k = json.dumps(ref, sort_keys=True, default=str)
                if k not in seen and (str(ref.get("metric")), _num(ref.get("value"))) not in given:
                    seen.add(k)
                    refs.append({**ref, "_from": "config.yaml", "_axes": r.axes})
    return refs + from_files


def reference_rows(refs: list[dict], configs: list[Config], best: Config | None) -> list[dict]:
    rows = []
    for ref in refs:
        metric = str(ref.get("metric", ""))
        target = best
        if isinstance(ref.get("axes"), dict):  # the reference names the configuration it describes
            target = next((c for c in configs if all(c.axes.get(k) == v for k, v in ref["axes"].items())), None)
        elif ref.get("_axes"):  # the run that carried it: its trained configuration, else its base-model one
            same = [c for c in configs if c.axes == ref["_axes"]]
            target = next((c for c in same if not c.baseline), same[0] if same else best)
        cell = (target.cells.get(metric) if target else None) or {}
        value, tol, measured = _num(ref.get("value")), ref.get("tolerance"), cell.get("mean", math.nan)
        if not math.isfinite(measured):
            status = "not measured"
        elif tol is None:
            status = "reference only"
        else:
            status = "within tolerance" if abs(measured - value) <= float(tol) else "outside tolerance"
        rows.append({"metric": metric, "config": target.label if target else "—", "measured": measured,
                     "published": value, "tolerance": tol, "status": status, "source": str(ref.get("source", "")),
                     "note": str(ref.get("note", ""))})
    return rows


def comparability(runs: list[Run]) -> list[str]:
    """Warnings when runs that are compared differ in task config, data or metric signature."""
    seen: dict[str, dict[str, set]] = {}

    def add(what, key, value):
        if value not in (None, ""):
            seen.setdefault(what, {}).setdefault(key, set()).add(str(value))

    for r in runs:
        if r.status not in ("completed", "baseline"):
            continue
        for s, res in (r.eval.get("suites") or {}).items():
            add("eval config_hash", s, res.get("config_hash"))
            for m, sig in (res.get("signatures") or {}).items():
                add("metric signature", f"{s}.{m}", sig)
        data = r.manifest.get("data") or {}
        add("data hash", str(data.get("name", "")), ",".join(str(f.get("sha256", ""))[:16] for f in data.get("files") or []))
        model = r.manifest.get("model") or {}
        add("model weights hash", str(model.get("name", "")), (model.get("sha256") or "")[:16] or None)
    out = []
    for what, keys in sorted(seen.items()):
        for k, vals in sorted(keys.items()):
            if len(vals) > 1:
                out.append(f"Runs differ in {what} for {k}: {', '.join(sorted(vals))}. Numbers across these runs are not comparable.")
    return out


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
        "cpus": many(r.manifest.get("cpu") for r in ok),
        "gpus": many(r.manifest.get("gpu") for r in ok),
        "data files": many(f"{f.get('path')} sha256:{str(f.get('sha256'))[:16]}" for r in ok
                           for f in (r.manifest.get("data") or {}).get("files") or []),
        "models": many(f"{(r.manifest.get('model') or {}).get('name')} sha256:{str((r.manifest.get('model') or {}).get('sha256'))[:16]}"
                       for r in ok if r.manifest.get("model")),
        "packages": {k: sorted(v) for k, v in sorted(pk.items())},
    }


def find_inputs(inputs: list[str], runs: list[Run], filename: str, explicit: str | None) -> list[Path]:
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise SystemExit(f"error: {filename} file {p} does not exist")
        return [p]
    cands = [Path(d) / filename for d in inputs] + [r.path / filename for r in runs]
    return sorted({p for p in cands if p.is_file()})


def find_human(runs: list[Run], inputs: list[str], args) -> list[tuple[str, dict]]:
    """human.json files (docs/human-eval.md) for this report: those named with --human, those in the
    inputs or run directories, and any under --human-root whose "runs" name one of these runs."""
    files = set()
    for h in args.human or []:
        if not Path(h).is_file():
            raise SystemExit(f"error: --human {h}: no such file (harness human import writes human.json)")
        files.add(Path(h))
    files.update(find_inputs(inputs, runs, "human.json", None))
    ids = set()
    for r in runs:
        ids.add(str(r.path))
        if r.summary.get("name") and r.summary.get("run_id"):
            ids.add(f"{r.summary['name']}/{r.summary['run_id']}")
    root = Path(args.human_root)
    if root.is_dir():
        for p in sorted(root.rglob("human.json")):
            try:
                doc = atomic.read_json(p)
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and ids & {str(x) for x in doc.get("runs") or []}:
                files.add(p)
    return [(str(p), atomic.read_json(p)) for p in sorted(files)]


# ------------------------------------------------------------------------------------ the model
def build(name: str, runs: list[Run], inputs: list[str], args) -> tuple[dict, list]:
    from harness import figures

    t0 = time.perf_counter()
    ok_runs = [r for r in runs if r.status in ("completed", "baseline")]

    def quality_of(rs):
        return sorted({m for r in rs for m in r.metrics if not m.startswith("summary.") and not m.endswith("_stderr")})

    quality = quality_of(ok_runs)
    if any("summary.best_val_loss" in r.metrics for r in ok_runs):
        quality.append("summary.best_val_loss")  # every trained run has it, evaluated or not
    cost = [m for m, _ in COST if any(m in r.metrics for r in ok_runs)]
    study = name
    storage = args.storage or f"sqlite:///{Path(args.studies_dir) / study}.db"
    optuna_info, optuna_note = load_optuna(storage, study) if not args.no_optuna else (None, "Optuna storage not read (--no-optuna).")
    trained_quality = quality_of([r for r in ok_runs if r.status == "completed"])  # rank by what trained runs have
    trained_quality += [m for m in quality if m.startswith("summary.")]
    primary = choose_primary(trained_quality if not args.metric else quality, args.metric, optuna_info)
    objs, dirs = study_objectives(optuna_info), (optuna_info or {}).get("directions") or []
    study_dir = {"maximize": "max", "minimize": "min"}.get(dirs[objs.index(primary)]) if primary in objs[: len(dirs)] else None
    direction = args.direction or study_dir or metric_direction(primary) or "max"
    quality = [primary] + [m for m in quality if m != primary]
    configs = rank(aggregate(runs, quality + cost), primary, direction)
    trained = [c for c in configs if not c.baseline]
    best = trained[0] if trained and primary in trained[0].cells else None
    cache = SampleCache()
    comparisons, cmp_notes = compare(configs, cache, args)
    warnings = comparability(runs) + cmp_notes
    for r in runs:
        if r.status == "baseline" and r.summary.get("study") != name:
            warnings.append(f"Base-model reference {r.path} was evaluated outside this study (added as the baseline row).")
    if optuna_note:
        warnings.append(optuna_note)
    if optuna_info and optuna_info.get("importance_note"):
        warnings.append(optuna_info["importance_note"])
    failed = sorted((r for r in runs if r.status not in ("completed", "baseline")), key=lambda r: str(r.path))
    refs = reference_rows(gather_references(runs, find_inputs(inputs, runs, "references.json", args.references)), configs, best)
    human = find_human(runs, inputs, args)

    # figures
    figs = []
    by_method: dict[str, list] = {}
    for r in sorted(runs, key=lambda r: str(r.path)):
        if r.status in ("completed", "diverged", "pruned", "interrupted", "failed"):
            by_method.setdefault(str(r.summary.get("method") or r.axes.get("method", "?")), []).append(
                records.read_metrics(r.path))  # non-finite values ("nan" strings) are skipped when drawn
    groups = {c.key: str(c.axes.get("method", c.label)) for c in configs}
    pts_src = [c for c in configs]
    for xm, xl, logx, fname in (("summary.peak_memory_mb", "peak memory (MB)", False, "quality_vs_memory"),
                                ("summary.trainable_params", "trainable parameters", True, "quality_vs_params")):
        pts = [{"label": c.label, "group": groups[c.key], "x": c.cells.get(xm, {}).get("mean", math.nan),
                "y": c.cells.get(primary, {}).get("mean", math.nan),
                "yerr": (c.cells.get(primary, {}).get("hi", math.nan) - c.cells.get(primary, {}).get("mean", math.nan))}
               for c in pts_src]
        for p in pts:
            p["yerr"] = p["yerr"] if math.isfinite(p["yerr"]) else 0.0
            if logx and p["x"] == 0:
                p["x"] = math.nan  # the base model trains nothing: no point on a log axis
        front = stats.pareto_front([(p["y"], p["x"]) for p in pts], (direction, "min"))
        figs.append(figures.scatter_front(fname, f"{primary} vs {xl}", pts, xl, primary, front, direction, logx=logx, svg=not args.no_svg))
    figs.insert(0, figures.loss_curves(by_method, svg=not args.no_svg))
    completed = [r for r in runs if r.status == "completed"]
    if optuna_info:
        figs.append(figures.history(optuna_info["trials"], optuna_info["directions"][0], (study_objectives(optuna_info) or ["objective"])[0],
                                    f"Optuna storage {storage}", svg=not args.no_svg))
        figs.append(figures.importances(optuna_info["importances"], "fANOVA (32 trees, seed 0)", svg=not args.no_svg))
    else:
        trials = [(r.trial, r.metrics.get(primary, math.nan), "COMPLETE") for r in completed if r.trial >= 0]
        trials += [(r.trial, math.nan, r.status.upper()) for r in failed if r.trial >= 0]
        figs.append(figures.history(trials, "maximize" if direction == "max" else "minimize", primary, "run records", svg=not args.no_svg))
    varying = varying_axes([c.axes for c in trained])
    panels = {k: [(r.axes.get(k), r.metrics.get(primary, math.nan), str(r.axes.get("method", "")))
                  for r in completed if k in r.axes] for k in varying}
    figs.append(figures.param_panels(panels, primary, svg=not args.no_svg))
    figs = [f for f in figs if f is not None]

    findings = key_findings(configs, best, primary, comparisons)
    status_counts: dict[str, int] = {}
    for r in runs:
        status_counts[r.status] = status_counts.get(r.status, 0) + 1
    model = {
        "name": name, "primary": primary, "direction": direction, "quality": quality, "cost": cost,
        "status_counts": dict(sorted(status_counts.items())), "n_runs": len(runs),
        "best": best.label if best else None, "configs": configs, "best_marks": best_marks(configs, quality + cost),
        "comparisons": comparisons, "warnings": warnings, "failed": failed, "references": refs, "human": human,
        "provenance": provenance(runs), "samples": sample_rows(configs, best, cache), "optuna": optuna_info,
        "paired_test": args.paired_test, "findings": findings, "build_s": time.perf_counter() - t0,
    }
    return model, figs


def key_findings(configs: list[Config], best: Config | None, primary: str, comparisons: list[dict]) -> list[str]:
    """Three sentences a reader wants first: who won, is the win real, and what is the cheapest
    configuration that is not significantly worse than the winner (by peak memory)."""
    if best is None:
        return []
    cell = best.cells[primary]
    ci = f" ± {fmt((cell['hi'] - cell['lo']) / 2, 2)}" if math.isfinite(cell.get("lo", math.nan)) else ""
    out = [f"Best on {primary}: {best.label} ({fmt(cell['mean'])}{ci}, {cell['n']} run{'s' if cell['n'] != 1 else ''})."]
    on_primary = [c for c in comparisons if c["flat_metric"] == primary]
    vs_best = [c for c in on_primary if c["kind"] == "vs best" and c["b"] == best.label]
    if vs_best:
        out.append("Runner-up: " + vs_best[0]["verdict"] + ".")
    vs_base = [c for c in on_primary if c["kind"] == "vs baseline" and c["a"] == best.label]
    out += [f"Against the base model: {c['verdict']}." for c in vs_base[:1]]
    worse = {c["a"] for c in vs_best if math.isfinite(c.get("p_holm", math.nan)) and c["p_holm"] < 0.05}
    tested = {c["a"] for c in vs_best} | {best.label}
    mem = "summary.peak_memory_mb"
    ok = [c for c in configs if not c.baseline and c.label in tested and c.label not in worse and mem in c.cells]
    if vs_best and ok and mem in best.cells:
        cheap = min(ok, key=lambda c: (c.cells[mem]["mean"], c.label))
        if cheap is not best:
            out.append(f"Lowest peak memory not significantly worse than the best: {cheap.label} "
                       f"({fmt(cheap.cells[mem]['mean'])} MB vs {fmt(best.cells[mem]['mean'])} MB).")
        else:
            out.append(f"No configuration that is not significantly worse than the best uses less peak memory (best: {fmt(best.cells[mem]['mean'])} MB).")
    return out


def sample_rows(configs: list[Config], best: Config | None, cache: SampleCache, k: int = 3) -> list[dict]:
    """The first k items (by id) of each generation suite: prompt, reference, and the outputs of the
    best configuration and of each baseline (their lowest-seed run)."""
    shown = ([best] if best else []) + [c for c in configs if c.baseline]
    out = []
    suites = sorted({s for c in shown for s, res in (c.runs[0].eval.get("suites") or {}).items() if res.get("kind") == "generation"})
    for s in suites:
        by_cfg = {c.label: {str(x.get("id")): x for x in cache.get(c.runs[0], s)} for c in shown}
        ids = sorted(set().union(*[set(v) for v in by_cfg.values()]))[:k]
        for i in ids:
            first = next(v[i] for v in by_cfg.values() if i in v)
            out.append({"suite": s, "id": i, "prompt": str(first.get("prompt", "")),
                        "reference": str((first.get("references") or [""])[0]),
                        "outputs": [(lbl, str(v[i].get("prediction", "")) if i in v else "—") for lbl, v in by_cfg.items()]})
    return out


# ----------------------------------------------------------------------------------- the files
def run_rows(runs: list[Run]) -> tuple[list[str], list[dict]]:
    axes = sorted({k for r in runs for k in (r.summary.get("axes") or {})})
    mets = sorted({m for r in runs for m in r.metrics})
    head = ["run_dir", "name", "run_id", "study", "trial", "seed", "status", "reason", "pruned_at_step"]
    rows = []
    for r in sorted(runs, key=lambda r: str(r.path)):
        s = r.summary
        row = {"run_dir": str(r.path), "name": s.get("name"), "run_id": s.get("run_id"), "study": s.get("study"),
               "trial": s.get("trial"), "seed": s.get("seed"), "status": r.status, "reason": r.error or s.get("reason", ""),
               "pruned_at_step": s.get("pruned_at_step")}
        row.update({f"axes.{k}": (s.get("axes") or {}).get(k) for k in axes})
        row.update({m: r.metrics.get(m) for m in mets})
        rows.append(row)
    return head + [f"axes.{k}" for k in axes] + mets, rows


def to_csv(header: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([csv_safe(h) for h in header])
    for row in rows:
        w.writerow([csv_safe(row.get(h)) for h in header])
    return buf.getvalue()


def timestamp() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch else _dt.datetime.now(_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


_MD_TAG = re.compile(r"<(?=[A-Za-z/!?])")
_MD_ENTITY = re.compile(r"&(?=[#A-Za-z0-9])")


def md_escape(s) -> str:
    """Markdown-safe text: no raw HTML (a `<` that could open a tag, an `&` that could start an
    entity), no links, no table breaks (`|`, newlines). Plain `p < 0.001` stays readable."""
    s = _MD_ENTITY.sub("&amp;", str(s))
    s = _MD_TAG.sub("&lt;", s)
    s = s.replace("[", "\\[").replace("]", "\\]")  # no [text](javascript:...) links
    return s.replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def cell_text(cell: dict | None, row_n: int) -> str:
    if not cell:
        return "—"
    s = fmt(cell["mean"])
    if math.isfinite(cell.get("lo", math.nan)) and cell["hi"] > cell["lo"]:
        s += f" ± {fmt((cell['hi'] - cell['lo']) / 2, 2)}"
    if cell["n"] != row_n:
        s += f" (n={cell['n']})"
    return s


def to_markdown(m: dict, figs: list, stamp: str) -> str:
    L = [f"# Report: {md_escape(m['name'])}", "", f"Generated: {stamp}", ""]
    counts = ", ".join(f"{v} {k}" for k, v in m["status_counts"].items())
    L += [f"{m['n_runs']} runs ({counts}). Primary metric: `{m['primary']}` ({'higher' if m['direction'] == 'max' else 'lower'} is better)."
          + (f" Best configuration: **{md_escape(m['best'])}**." if m["best"] else ""), ""]
    if m["findings"]:
        L += ["## Key findings", ""] + [f"- {md_escape(f)}" for f in m["findings"]] + [""]
    if m["warnings"]:
        L += ["## Warnings", ""] + [f"- ⚠ {md_escape(w)}" for w in m["warnings"]] + [""]

    def table(cols: list[tuple[str, str]]):
        out = ["| configuration | n | " + " | ".join(md_escape(h) for _, h in cols) + " |",
               "|---|---:|" + "---:|" * len(cols)]
        for c in m["configs"]:
            n = len(c.runs)
            cells = []
            for key, _ in cols:
                t = md_escape(cell_text(c.cells.get(key), n))
                if key in m["best_marks"] and c.cells.get(key, {}).get("mean") == m["best_marks"][key] and not c.baseline:
                    t = f"**{t}** ★"
                cells.append(t)
            out.append(f"| {md_escape(c.label)}{' (reference)' if c.baseline else ''} | {n} | " + " | ".join(cells) + " |")
        return out

    L += ["## Leaderboard", "", "Mean ± 95% CI half-width (t-distribution) over seeds; ★ best per column.", ""]
    L += table([(q, q) for q in m["quality"]]) + [""]
    L += ["## Cost", ""] + table([(k, h) for k, h in COST if k in m["cost"]]) + [""]
    L += ["## Paired significance", "",
          f"Paired on evaluation item ids; Holm correction over all {len(m['comparisons'])} comparisons. "
          "BLEU/chrF/ROUGE use the mean of per-item (sentence-level) scores, not corpus BLEU.", ""]
    L += [f"- {md_escape(r['verdict'])}" for r in m["comparisons"]] + [""]
    L += ["## Figures", ""] + [f"![{md_escape(f.title)}](figures/{f.name}.png)\n\n{md_escape(f.caption)}\n" for f in figs]
    if m["samples"]:
        L += ["## Sample outputs", ""]
        for s in m["samples"]:
            L += [f"**{md_escape(s['suite'])} {md_escape(s['id'])}**: {md_escape(s['prompt'])}", "",
                  f"- reference: {md_escape(s['reference'])}"] + [f"- {md_escape(lbl)}: {md_escape(o)}" for lbl, o in s["outputs"]] + [""]
    if m["references"]:
        L += ["## Published results", "", "| metric | configuration | measured | published | tolerance | status | source | note |",
              "|---|---|---:|---:|---:|---|---|---|"]
        L += [f"| {md_escape(r['metric'])} | {md_escape(r['config'])} | {fmt(r['measured'])} | {fmt(r['published'])} | "
              f"{fmt(r['tolerance'])} | {r['status']} | {md_escape(r['source'])} | {md_escape(r['note'])} |" for r in m["references"]] + [""]
    if m["human"]:
        L += ["## Human evaluation", ""] + [f"- `{md_escape(p)}` (tables in report.html)" for p, _ in m["human"]] + [""]
    L += ["## Runs that did not complete", ""]
    if m["failed"]:
        L += ["| run | status | reason | pruned at step |", "|---|---|---|---:|"]
        L += [f"| {md_escape(r.path)} | {r.status} | {md_escape(r.error or r.summary.get('reason', ''))} | {fmt(r.summary.get('pruned_at_step'))} |"
              for r in m["failed"]]
    else:
        L += ["None: every run completed."]
    L += ["", "## Provenance", ""]
    for k, v in m["provenance"].items():
        if k == "packages":
            L += ["- packages: " + "; ".join(f"{md_escape(p)} {md_escape(', '.join(vs))}" for p, vs in v.items())]
        else:
            L += [f"- {k}: {md_escape(', '.join(v)) or '—'}"]
    return "\n".join(L) + "\n"


def to_json(m: dict, rows: list[dict]) -> dict:
    return {
        "schema": 1, "report": m["name"], "primary_metric": m["primary"], "direction": m["direction"],
        "runs": rows,
        "leaderboard": [{"label": c.label, "axes": c.axes, "baseline": c.baseline, "n": len(c.runs),
                         "run_dirs": [str(r.path) for r in c.runs], "metrics": c.cells} for c in m["configs"]],
        "comparisons": m["comparisons"], "references": m["references"], "warnings": m["warnings"],
        "provenance": m["provenance"],
    }


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", metavar="STUDY|RUN_DIR", help="a study name, or one or more run directories")
    p.add_argument("--runs-root", default="runs", help="where a study's run directories are (default: runs)")
    p.add_argument("--storage", default="", help="Optuna storage URL (default: sqlite:///studies/<study>.db if it exists)")
    p.add_argument("--studies-dir", default="studies", help=argparse.SUPPRESS)
    p.add_argument("--out", default="reports", help="output root; the report goes to OUT/<name>/ (default: reports)")
    p.add_argument("--name", default="", help="report name (required for run directories from no single study)")
    p.add_argument("--metric", default="", help="primary metric, a flat name like e2e.bleu (default: the study's, else a sensible one)")
    p.add_argument("--direction", choices=("max", "min"), default=None, help="is higher or lower --metric better (default: from the name)")
    p.add_argument("--paired-test", choices=("bootstrap", "permutation"), default="bootstrap",
                   help="test for continuous per-item scores (accuracy always uses McNemar's exact test)")
    p.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples (default 1000)")
    p.add_argument("--permutations", type=int, default=10000, help="paired permutation samples (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed for bootstrap/permutation (default 0)")
    p.add_argument("--max-compare", type=int, default=20, help="configurations tested against the best, per metric (default 20)")
    p.add_argument("--baseline", action="append", metavar="RUN_DIR", help="add a base-model run directory (repeatable)")
    p.add_argument("--no-auto-baseline", action="store_true",
                   help="do not add the latest base-model evaluation (status baseline, no study) of the study's model(s)")
    p.add_argument("--references", default=None, help="published results JSON (default: references.json in the inputs)")
    p.add_argument("--human", action="append", metavar="FILE",
                   help="human.json from `harness human import` (repeatable; found automatically under --human-root)")
    p.add_argument("--human-root", default="human", help="where human.json files are searched for this report's runs (default: human)")
    p.add_argument("--no-svg", action="store_true", help="write PNG figures only (faster)")
    p.add_argument("--no-optuna", action="store_true", help="do not read the Optuna storage")


def run(args) -> int:
    from harness import report_html

    t0 = time.perf_counter()
    name, runs, inputs = collect(args)
    model, figs = build(name, runs, inputs, args)
    out = Path(args.out) / paths.check_name(name, "report name")
    stamp = timestamp()
    header, rows = run_rows(runs)
    for f in figs:
        atomic.write_bytes(out / "figures" / f"{f.name}.png", f.png)
        if f.svg is not None:
            atomic.write_bytes(out / "figures" / f"{f.name}.svg", f.svg)
    atomic.write_text(out / "results.csv", to_csv(header, rows))
    atomic.write_json(out / "results.json", to_json(model, rows))
    atomic.write_text(out / "report.md", to_markdown(model, figs, stamp))
    atomic.write_text(out / "report.html", report_html.render(model, figs, stamp))
    print(f"report: {out / 'report.html'} ({len(runs)} runs, {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    print(out / "report.html")
    return 0
