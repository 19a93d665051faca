"""Where a run ran: package versions, git commit, CPU, host, command line, file hashes, and memory use.

Recorded in every run's manifest.json (docs/run-record.md) by the pipeline (harness/pipeline.py).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import platform
import resource
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from harness import __version__, paths

TRACKED_PACKAGES = (
    "torch", "transformers", "tokenizers", "peft", "bitsandbytes", "trl", "accelerate", "datasets",
    "optuna", "hydra-core", "omegaconf", "lm_eval", "sacrebleu", "rouge_score", "wandb", "numpy", "safetensors",
)


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


def run_environment(device: str) -> dict:
    """environment() plus torch and the device a run uses: the head of every manifest.json (imports torch)."""
    import torch

    return {**environment(), "torch": torch.__version__,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None, "device": device,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None}


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
