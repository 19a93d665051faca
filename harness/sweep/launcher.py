"""Where a sweep's workers run: the launcher options, from a preset (conf/launcher/NAME.yaml, or launcher/NAME.yaml
in a --config-dir folder), the spec's `launcher:` block and the command line, in that order (later wins). Pure
apart from reading presets. Kinds: `local` (worker processes on this machine, --workers N), `slurm` (a job array of
workers through sbatch: harness/sweep/slurm.py) and `external` (queue the study and print the worker command, for
a scheduler of your own: Kubernetes, PBS, ...). Format and step by step: docs/cluster.md.

    harness sweep sweeps/lr_search.yaml --launcher slurm --workers 8 --storage postgresql://me@login1/harness \\
        --partition gpu --gpus-per-trial 1 --cpus-per-trial 8 --time 04:00

Every problem is reported at once, each naming the option, the value and the fix (LauncherError).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

KINDS = ("local", "slurm", "external")  # what a preset's `kind:` may be


class LauncherError(ValueError):
    """Launcher options that cannot work; `errors` lists each with its fix (shaped like spec.SpecError)."""

    def __init__(self, source: str, errors: list[str]):
        self.errors = list(errors)
        super().__init__(f"invalid launcher options ({source}):\n" + "\n".join(f"  - {e}" for e in self.errors))


@dataclass
class LauncherSpec:
    """Resolved launcher options. Times are Slurm's D-HH:MM:SS; empty strings are "leave it to the cluster"."""

    kind: str = "local"  # local | slurm | external
    preset: str = "local"  # the conf/launcher/<preset>.yaml it started from
    workers: int | None = None  # local processes, Slurm array tasks, or the workers you will start (external)
    partition: str = ""
    account: str = ""
    qos: str = ""
    time: str = ""  # wall-time limit of each array task
    cpus_per_trial: int = 1  # --cpus-per-task of each array task (one trial at a time per task)
    gpus_per_trial: int = 0  # --gres=gpu:N
    mem: str = ""  # --mem of each array task, e.g. 16G
    stop_before_s: int = 120  # SIGTERM the worker this long before the time limit: its trial saves and is re-queued
    sbatch_args: list[str] = field(default_factory=list)  # more #SBATCH lines, e.g. [--constraint=a100, --exclusive]
    setup: list[str] = field(default_factory=list)  # shell lines run before the worker (module load ..., source venv)


SLURM_ONLY = ("partition", "account", "qos", "time", "cpus_per_trial", "gpus_per_trial", "mem", "stop_before_s",
              "sbatch_args", "setup")
OPTIONS = tuple(f.name for f in dataclasses.fields(LauncherSpec) if f.name != "preset")
FLAGS = {"partition": "--partition", "account": "--account", "qos": "--qos", "time": "--time", "mem": "--mem",
         "cpus_per_trial": "--cpus-per-trial", "gpus_per_trial": "--gpus-per-trial", "workers": "--workers",
         "kind": "--launcher"}

_TIME = re.compile(r"^(?:(\d+)-)?(\d{1,3}):(\d{2})(?::(\d{2}))?$")
_NAME = re.compile(r"^[A-Za-z0-9_.,+-]{1,128}$")  # partition, account, qos
_MEM = re.compile(r"^\d+[KMGT]?$")


def slurm_time(value: Any) -> tuple[str, str]:
    """(Slurm's D-HH:MM:SS, "") for HH:MM, HH:MM:SS, D-HH:MM or D-HH:MM:SS, else ("", why). Slurm itself reads
    two fields as MM:SS (`--time 04:00` is four minutes there); harness reads HH:MM and writes three fields."""
    if isinstance(value, int) and not isinstance(value, bool):
        return "", "a number: YAML reads 4:00 unquoted as 240 (base 60). Quote it: time: '04:00' (HH:MM)"
    m = _TIME.match(str(value).strip())
    if not m:
        return "", "use HH:MM (e.g. 04:00, four hours), HH:MM:SS or D-HH:MM[:SS] (e.g. 2-00:00)"
    days, hours, minutes, seconds = (int(x) if x else 0 for x in m.groups())
    if minutes > 59 or seconds > 59 or (days and hours > 23):
        return "", "minutes and seconds go up to 59 (and hours to 23 after a day count)"
    if days == hours == minutes == seconds == 0:
        return "", "a time limit of zero lets no trial run"
    return (f"{days}-" if days else "") + f"{hours:02d}:{minutes:02d}:{seconds:02d}", ""


def _int(low: int) -> Callable[[Any], tuple[Any, str]]:
    def check(v: Any) -> tuple[Any, str]:
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            return None, f"a whole number >= {low} is required"
        return v, ""
    return check


def _name(v: Any) -> tuple[Any, str]:
    return (str(v), "") if _NAME.match(str(v)) else (None, "letters, digits and _.,+- only (a Slurm name)")


def _mem(v: Any) -> tuple[Any, str]:
    return (str(v), "") if _MEM.match(str(v)) else (None, "a size like 16G, 4000M or 4000 (megabytes)")


def _lines(flag: bool) -> Callable[[Any], tuple[Any, str]]:
    def check(v: Any) -> tuple[Any, str]:
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() and "\n" not in x for x in v):
            return None, "a list of one-line strings is required"
        if flag and any(not x.startswith("--") for x in v):
            return None, "each entry is one sbatch option written --name=value (e.g. --constraint=a100)"
        return list(v), ""
    return check


CHECKS: dict[str, Callable[[Any], tuple[Any, str]]] = {
    "workers": _int(1), "cpus_per_trial": _int(1), "gpus_per_trial": _int(0), "stop_before_s": _int(0),
    "partition": _name, "account": _name, "qos": _name, "mem": _mem, "time": slurm_time,
    "sbatch_args": _lines(True), "setup": _lines(False),
}


def preset_files() -> dict[str, Any]:
    """Preset name -> its YAML file: conf/launcher/ and launcher/ in the user's config folders (theirs win)."""
    from harness.config.search import option_files

    return option_files("launcher")


def _did_you_mean(word: str, options) -> str:
    from harness.config.checks import did_you_mean

    return did_you_mean(str(word), options)


def _load_preset(name: str, errs: list[str], where: str) -> dict:
    files = preset_files()
    if name not in files:
        errs.append(f"{where} {name}: no launcher preset of that name (conf/launcher/, or launcher/ in your "
                    f"--config-dir).{_did_you_mean(name, files)} Presets: {', '.join(files) or 'none'}")
        return {}
    try:
        tree = yaml.safe_load(files[name].read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        errs.append(f"{files[name]}: not valid YAML: {exc}")
        return {}
    if not isinstance(tree, dict) or tree.get("kind") not in KINDS:
        errs.append(f"{files[name]}: a launcher preset is a mapping whose `kind:` is one of {', '.join(KINDS)}")
        return {}
    return tree


def _check_block(block: dict, where: str, errs: list[str], flags: bool = False) -> dict:
    """Known keys with valid values, normalised; a problem per bad one."""
    out = {}
    for k, v in block.items():
        if k not in CHECKS:
            if k != "kind":
                errs.append(f"{where}.{k}: unknown launcher option.{_did_you_mean(k, OPTIONS)} Options: {', '.join(OPTIONS)}")
            continue
        value, why = CHECKS[k](v)
        if why:
            errs.append(f"{FLAGS.get(k, k)} {v}: {why}" if flags else f"{where}.{k}={v!r}: {why}")
        else:
            out[k] = value
    return out


def parse_block(raw: Any, errs: list[str], where: str = "launcher") -> dict:
    """The spec's `launcher:` (a preset name, or a mapping with `kind:` and options) -> a checked mapping, kept
    on the spec; presets are read when the launcher is resolved. Problems go to errs."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw = {"kind": raw}
    if not isinstance(raw, dict):
        errs.append(f"{where}: a preset name (local, slurm) or a mapping like {{kind: slurm, partition: gpu, "
                    f"time: '04:00'}}, got {raw!r}")
        return {}
    out = _check_block(raw, where, errs)
    if "kind" in raw:
        base = _load_preset(str(raw["kind"]), errs, f"{where}.kind")
        out["kind"] = str(raw["kind"])
        if base and base.get("kind") != "slurm":
            errs += [f"{where}.{k}: only for a Slurm launcher (kind: slurm)" for k in out if k in SLURM_ONLY]
    return out


def resolve(spec_block: dict, flags: dict[str, Any], *, source: str = "command line") -> LauncherSpec:
    """Preset < the spec's block < flags (those not None). The preset is the flag's --launcher, else the spec's
    kind, else local. Raises LauncherError with every problem."""
    errs: list[str] = []
    given = {k: v for k, v in flags.items() if v is not None}
    name = str(given.get("kind") or spec_block.get("kind") or "local")
    preset = _load_preset(name, errs, "--launcher" if given.get("kind") else "launcher.kind")
    layers = {**_check_block({k: v for k, v in preset.items() if k != "kind"}, f"preset {name}", errs)}
    layers.update({k: v for k, v in spec_block.items() if k != "kind"})
    from_flags = _check_block({k: v for k, v in given.items() if k != "kind"}, "", errs, flags=True)
    layers.update(from_flags)
    kind = preset.get("kind", "local")
    if kind != "slurm":  # the spec's Slurm options do not apply when this command picks another launcher
        errs += [f"{FLAGS[k]}: only for a Slurm launcher; add --launcher slurm" for k in from_flags if k in SLURM_ONLY]
        layers = {k: v for k, v in layers.items() if k not in SLURM_ONLY}
    if kind == "slurm" and layers.get("time") and layers.get("stop_before_s"):
        d, _, hms = layers["time"].rpartition("-")
        h, m, sec = (int(x) for x in hms.split(":"))
        if layers["stop_before_s"] >= ((int(d or 0) * 24 + h) * 60 + m) * 60 + sec:
            errs.append(f"time {layers['time']} is not longer than stop_before_s={layers['stop_before_s']} (the worker is told to "
                        "stop that long before the limit): give more time, or set stop_before_s lower in the spec's launcher:")
    if errs:
        raise LauncherError(source, errs)
    return LauncherSpec(kind=kind, preset=name, **layers)


def job_id_from_env(env: dict | None = None) -> str:
    """The Slurm job this process runs in: ARRAYJOB_TASK for an array task (as squeue shows it), else the job
    id; "" outside Slurm. Recorded on each trial (user attribute slurm_job) and shown by `harness status`."""
    env = os.environ if env is None else env
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return env.get("SLURM_JOB_ID", "")
