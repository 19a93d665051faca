"""Run directories: create them, write their records, read them back (docs/run-record.md).

Writers are used by the trainer and the evaluator; readers by sweeps, status and reports.
Reports import only this module's readers (no torch).
"""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from harness import __version__, atomic, paths

SCHEMA = 1
STATUSES = ("running", "completed", "failed", "diverged", "interrupted", "pruned", "baseline")
TRACKED_PACKAGES = (
    "torch", "transformers", "tokenizers", "peft", "bitsandbytes", "trl", "accelerate", "datasets",
    "optuna", "hydra-core", "omegaconf", "lm_eval", "sacrebleu", "rouge_score", "wandb", "numpy", "safetensors",
)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def run_dir_for(output_dir: str, name: str, run_id: str) -> Path:
    """<output_dir>/<name>/<run_id>, with both names checked so nothing escapes output_dir."""
    paths.check_name(name, "run name")
    paths.check_name(run_id, "run_id")
    return paths.safe_join(output_dir, name, run_id)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_info(root: Path = paths.REPO_ROOT) -> dict:
    def _git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
        return {"commit": commit or None, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions(names=TRACKED_PACKAGES) -> dict[str, str | None]:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Machine and software identity (no torch import: callers add device details)."""
    return {
        "harness_version": __version__,
        "git": git_info(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "user": getpass.getuser(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
        "command": sys.argv,
    }


# ----------------------------------------------------------------------------------- readers
def read_summary(run_dir: str | Path) -> dict | None:
    p = Path(run_dir) / "summary.json"
    return atomic.read_json(p) if p.exists() else None


def read_eval(run_dir: str | Path) -> dict | None:
    p = Path(run_dir) / "eval.json"
    return atomic.read_json(p) if p.exists() else None


def read_metrics(run_dir: str | Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    return atomic.read_jsonl(p) if p.exists() else []


def read_samples(run_dir: str | Path, suite: str) -> list[dict]:
    p = paths.safe_join(run_dir, "samples", f"{suite}.jsonl")
    return atomic.read_jsonl(p) if p.exists() else []


def flat_metrics(run_dir: str | Path) -> dict[str, float]:
    """`<suite>.<metric>` from eval.json plus `summary.<field>` for numeric summary fields."""
    out: dict[str, float] = {}
    summary = read_summary(run_dir) or {}
    for k, v in summary.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"summary.{k}"] = float(v)
    ev = read_eval(run_dir) or {}
    for suite, res in (ev.get("suites") or {}).items():
        for k, v in (res.get("metrics") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{suite}.{k}"] = float(v)
    return out


def find_run_dirs(root: str | Path) -> list[Path]:
    """Every directory under root that holds a summary.json, sorted."""
    root = Path(root)
    if (root / "summary.json").exists():
        return [root]
    return sorted(p.parent for p in root.rglob("summary.json"))


def update_eval(run_dir: str | Path, suites: dict[str, Any], versions: dict[str, Any]) -> Path:
    """Merge suite results into eval.json (atomic). Existing suites with the same name are replaced."""
    p = Path(run_dir) / "eval.json"
    current = atomic.read_json(p) if p.exists() else {"schema": SCHEMA, "versions": {}, "suites": {}}
    current.setdefault("versions", {}).update(versions)
    current.setdefault("suites", {}).update(suites)
    return atomic.write_json(p, current)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
