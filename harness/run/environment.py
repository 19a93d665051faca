"""Where a run ran: package versions, git commit, CPU, host, command line, file hashes, and memory use.

Recorded in every run's manifest.json (docs/run-record.md) by the pipeline (harness/pipeline.py).
"""

from __future__ import annotations

import functools
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
    """Installed version of each package (None: not installed). Read once per process (20-100 ms of scanning
    sys.path for 17 packages): the modules a process has imported do not change under it, and a warm sweep
    trial inherits the reading its fork server made when it imported them (harness/sweep/warm.py)."""
    return dict(_package_versions(tuple(names)))


@functools.lru_cache(maxsize=None)
def _package_versions(names: tuple[str, ...]) -> tuple[tuple[str, str | None], ...]:
    out = []
    for n in names:
        try:
            out.append((n, metadata.version(n)))
        except metadata.PackageNotFoundError:
            out.append((n, None))
    return tuple(out)


def installed_requirements() -> list[str]:
    """Every installed distribution as "name==version", sorted (a run's requirements.txt for W&B). Read once per
    process like package_versions: parsing the metadata of ~170 packages takes 0.1-0.3 s, and a warm sweep trial
    inherits its fork server's reading instead of paying it again."""
    return list(_installed_requirements())


@functools.lru_cache(maxsize=None)
def _installed_requirements() -> tuple[str, ...]:
    found = set()
    for dist in metadata.distributions():
        try:
            name, version = dist.metadata["Name"], dist.version
        except (KeyError, UnicodeDecodeError, TypeError):  # a distribution with broken metadata: left out
            continue
        if name and version:
            found.add(f"{name}=={version}")
    return tuple(sorted(found, key=str.lower))


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once per process ("" where there is none): the name, model id and flags all come from it."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_model_id(cpuinfo: str | None = None) -> str | None:
    """The first processor's family, model and stepping from /proc/cpuinfo (x86: "family 25 model 17 stepping 1";
    ARM: "implementer 0x41 part 0xd0c variant 0x1"), None where there is none. Pure given `cpuinfo`. The model name
    and flags do not tell every machine apart: "AMD EPYC" with AVX512-BF16 came here as family 25 (Zen 4, bf16
    matmuls 2.1x fp32's) and as a CPU with Zen 5's flags (avx512_vp2intersect, avx_vnni: 4.2x),
    benchmarks/results/mfu.md."""
    if cpuinfo is None:
        cpuinfo = _cpuinfo()
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block only
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), value.strip())
    for keys, labels in ((("cpu family", "model", "stepping"), ("family", "model", "stepping")),
                         (("cpu implementer", "cpu part", "cpu variant"), ("implementer", "part", "variant"))):
        if fields.get(keys[0]) and fields.get(keys[1]):
            return " ".join(f"{label} {fields[k]}" for k, label in zip(keys, labels) if fields.get(k))
    return None


def cpu_label(name: str | None, model_id: str | None) -> str | None:
    """Pure: "AMD EPYC (family 25 model 17 stepping 1)", the name alone without an id, None without a name."""
    return f"{name} ({model_id})" if name and model_id else name


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # instructions that make bf16 matmuls native on x86 CPUs


def cpu_flags() -> list[str]:
    """The CPU's feature flags from /proc/cpuinfo (first processor), sorted; [] where there is none."""
    for line in _cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            return sorted(set(line.split(":", 1)[1].split()))
    return []


def cpu_kind(flags) -> str:
    """Pure: the CPU kind these benchmarks and the bf16 choice care about, from its flags."""
    flags = set(flags)
    if "amx_bf16" in flags:
        return "AMX (native bf16)"
    if "avx512_bf16" in flags:
        return "AVX512-BF16 (native bf16)"
    if "avx512f" in flags:
        return "AVX512 without BF16 (bf16 emulated)"
    if "avx2" in flags:
        return "AVX2 only (bf16 emulated)"
    return "other"


def cpu_identity() -> dict:
    """Model name, family / model / stepping, flags, kind and native bf16: what a per-machine measurement is keyed on."""
    flags = cpu_flags()
    return {"cpu": cpu_name(), "model_id": cpu_model_id(), "flags": flags, "kind": cpu_kind(flags),
            "native_bf16": any(f in flags for f in NATIVE_BF16_FLAGS)}


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
        "cpu_model_id": cpu_model_id(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
        "command": sys.argv,
    }


def run_environment(device: str) -> dict:
    """environment() plus torch, the device a run uses and the allocator setting (harness/run/memory.py): the head
    of every manifest.json (imports torch)."""
    import torch

    from harness.run import memory

    return {**environment(), "torch": torch.__version__,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None, "device": device,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None, "malloc": memory.record()}


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
