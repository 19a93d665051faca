"""The report's inputs: run directories (via harness.run.record readers), the study's Optuna storage,
baselines, and human-evaluation files found beside them. Nothing here computes a statistic.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness import atomic, paths
from harness.run.record import find_run_dirs, flat_metrics, read_eval, read_summary


class ReportError(ValueError):
    """A report that cannot be built from what was given (no runs, an unknown study or metric, a missing file)."""


SEED_AXES = ("seed", "train.seed")


NOT_OK = ("failed", "diverged", "pruned", "interrupted", "running", "unreadable")


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
    def model_hash(self) -> str:
        """sha256 of the base weights the run started from (manifest.json), "" when not recorded."""
        return str((self.manifest.get("model") or {}).get("sha256") or "")

    @property
    def data_hash(self) -> str:
        """The sha256 of each data file the run read (manifest.json), joined; "" when not recorded."""
        files = (self.manifest.get("data") or {}).get("files") or []
        return ",".join(str(f.get("sha256") or "") for f in files if isinstance(f, dict))

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
        summary = summary if summary is not None else (read_summary(path) or {})
        ev = read_eval(path) or {}
        metrics = flat_metrics(path)
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
        found = sorted({p for d in dirs for p in find_run_dirs(d)})
        if not found:
            raise ReportError(f"no summary.json under {', '.join(targets)}; pass run directories or a study name")
        runs = [load_run(p) for p in found]
        studies = {str(r.summary.get("study") or "") for r in runs if not r.error}
        name = args.name or (studies.pop() if len(studies) == 1 else "")
        if not name:
            raise ReportError("these run directories belong to no single study; name the report with --name NAME")
        for b in args.baseline or []:
            runs.extend(load_run(p) for p in find_run_dirs(b))
        return paths.check_name(name, "report name"), runs, [str(d) for d in dirs]
    if len(targets) != 1:
        missing = [t for t in targets if not Path(t).is_dir()]
        raise ReportError(f"not run directories: {', '.join(missing)}; pass one STUDY name or existing RUN_DIRs")
    study = paths.check_name(targets[0], "study name")
    root = Path(args.runs_root)
    if not root.is_dir():
        raise ReportError(f"runs root {root} does not exist; pass --runs-root DIR (where the study's runs are)")
    runs, seen = [], set()
    for p in find_run_dirs(root):
        try:
            s = read_summary(p) or {}
        except (OSError, ValueError) as exc:
            runs.append(Run(p, {}, {}, {}, {}, {}, error=f"{type(exc).__name__}: {exc} (study unknown)"))
            continue
        seen.add(s.get("study") or "")
        if s.get("study") == study:
            runs.append(load_run(p, s))
    if not [r for r in runs if not r.error]:
        known = ", ".join(sorted(s for s in seen if s)) or "none"
        raise ReportError(f"no run directory under {root} has study {study!r} in summary.json. Studies found: {known}")
    for b in args.baseline or []:
        runs.extend(load_run(p) for p in find_run_dirs(b))
    if not args.no_auto_baseline and not any(r.status == "baseline" for r in runs):
        runs.extend(auto_baselines(root, runs))
    return paths.check_name(args.name or study, "report name"), runs, [str(root / study)]


def auto_baselines(root: Path, runs: list[Run]) -> list[Run]:
    """For each base model of the study, the latest base-model evaluation under root that belongs to no
    study (`harness eval model=X eval=...` writes runs/X-base/<run_id>/), so reports show the untrained
    reference without extra flags. A base model is its weights: an evaluation is attached when its
    manifest's model sha256 is the one the study's runs started from, never by model name (a user's own
    model under a built-in name is another model). --no-auto-baseline turns this off."""
    hashes = {r.model_hash for r in runs if r.model_hash}
    latest: dict[str, tuple[str, str, dict]] = {}
    for p in find_run_dirs(root):
        try:
            s = read_summary(p) or {}
            if s.get("status") != "baseline" or s.get("study"):
                continue
            man = atomic.read_json(p / "manifest.json") if (p / "manifest.json").exists() else {}
        except (OSError, ValueError):
            continue
        h = str((man.get("model") or {}).get("sha256") or "") if isinstance(man, dict) else ""
        if h in hashes:
            k = (str(s.get("finished_at") or ""), str(p))
            if h not in latest or k > latest[h][:2]:
                latest[h] = (*k, s)
    return [load_run(Path(p), s) for _, p, s in (latest[h] for h in sorted(latest))]


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
        info["importance_note"] = ("No hyperparameter importances: the study's completed trials carry no Optuna "
                                   "parameters (a grid study queued before grid cells were recorded as Optuna params). "
                                   "See the 'swept hyperparameters' figure instead.")
        return info, ""
    try:
        imp = get_param_importances(st, evaluator=FanovaImportanceEvaluator(n_trees=32, seed=0),
                                    target=(lambda t: t.values[0]) if len(st.directions) > 1 else None)
        info["importances"] = {k: float(v) for k, v in imp.items()}
    except Exception as exc:  # noqa: BLE001
        info["importance_note"] = f"Hyperparameter importances unavailable: {type(exc).__name__}: {exc}"
    return info, ""


def find_inputs(inputs: list[str], runs: list[Run], filename: str, explicit: str | None) -> list[Path]:
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise ReportError(f"{filename} file {p} does not exist")
        return [p]
    cands = [Path(d) / filename for d in inputs] + [r.path / filename for r in runs]
    return sorted({p for p in cands if p.is_file()})


def find_human(runs: list[Run], inputs: list[str], args) -> list[tuple[str, dict]]:
    """human.json files (docs/human-eval.md) for this report: those named with --human, those in the
    inputs or run directories, and any under --human-root whose "runs" name one of these runs."""
    files = set()
    for h in args.human or []:
        if not Path(h).is_file():
            raise ReportError(f"--human {h}: no such file (harness human import writes human.json)")
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
