"""Run directories: create them, write their records, read them back (docs/run-record.md).

Writers are used by the pipeline and the evaluator; readers by sweeps, status and reports.
Reports import only this module's readers (no torch).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, TypedDict

from harness import atomic, paths

SCHEMA = 1


STATUSES = ("running", "completed", "failed", "diverged", "interrupted", "pruned", "baseline")

# Config keys (and subtrees) that say where and as what a run is filed, and who watches it, not what it
# computes: they may differ when a run_id is resumed (a sweep retries an interrupted trial under a new trial
# number and tags; a run resumed with another tracker), and they are no axes of a comparison.
BOOKKEEPING_KEYS = ("name", "output_dir", "run_id", "study", "trial", "storage", "resume", "tracker")


class RunError(RuntimeError):
    """A run directory that cannot be (re)used as asked; the message says why and what to do."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}


def config_changes(recorded: dict, now: dict, ignore: tuple[str, ...] = BOOKKEEPING_KEYS) -> list[str]:
    """`key: recorded -> now` for every leaf that differs between two resolved configs (config.yaml
    trees), bookkeeping keys left out."""
    old, new = _flatten(recorded), _flatten(now)
    absent = "(absent)"
    out = []
    for key in sorted(set(old) | set(new)):
        if any(key == k or key.startswith(k + ".") for k in ignore):
            continue
        if old.get(key, absent) != new.get(key, absent):
            out.append(f"{key}: {old.get(key, absent)!r} -> {new.get(key, absent)!r}")
    return out


class RecordError(ValueError):
    """A run record that does not fit its schema (a field the schema does not know, a wrong type)."""


class Summary(TypedDict, total=False):
    """summary.json (docs/run-record.md): a run's status, identity and cost. Written only by write_summary."""

    schema: int
    status: str  # one of STATUSES
    reason: str
    name: str
    run_id: str
    run_dir: str
    study: str
    trial: int
    model: str
    method: str
    data: str
    seed: int
    axes: dict
    resumed: bool
    config_changes_on_resume: list  # a --force resume: the keys that changed, "key: recorded -> now"
    trainable_params: int
    total_params: int
    trainable_share: float
    precision: str
    device: str
    model_bytes: int
    adapter_bytes: int
    peak_memory_mb: float
    peak_memory_kind: str
    wall_time_s: float
    train_time_s: float  # training alone (benchmarks during training left out: benchmark_time_s)
    benchmark_time_s: float  # eval.during_training: seconds spent in its benchmarks (this attempt)
    eval_time_s: float
    train_tokens: int
    tokens_per_s: float
    steps: int
    epochs_done: float
    train_loss_mean: float
    final_train_loss: float
    final_val_loss: float
    best_val_loss: float
    pruned_at_step: int
    world_size: int  # processes that trained the run together (train.devices; 1 = one process)
    global_batch_size: int  # rows per optimizer step: train.batch_size x train.grad_accum x world_size
    started_at: str
    finished_at: str
    trained_at: str  # the final weights are saved: a rerun of this run_id evaluates them instead of training again


class Manifest(TypedDict, total=False):
    """manifest.json (docs/run-record.md): where and from what a run was made. Written only by write_manifest."""

    schema: int
    harness_version: str
    command: list
    git: dict
    python: str
    platform: str
    hostname: str
    user: str
    cpu: str
    cpu_model_id: str  # /proc/cpuinfo's family / model / stepping: one model name can be CPUs of two speeds
    cpu_count: int
    packages: dict
    torch: str
    cuda: str
    device: str
    gpu: str
    malloc: dict  # the allocator setting: glibc reuses freed blocks (harness/run/memory.py) or its default, and why
    precision: str
    seeds: dict
    model: dict
    data: dict
    bf16_fast_backward_layers: int
    trainable_copied_from_file_mb: float  # trainable weights copied out of the checkpoint's mmap before training (model/load.py)
    kept_by_fork_server: list  # a warm trial: what its fork server had loaded for it, e.g. ["tokenizer"] (model/preload.py)
    frozen_casts_kept: int  # bf16/fp16 training: frozen Linear layers whose weight is cast once (harness/train/frozen_cast.py)
    bnb_4bit_layers_held: int  # QLoRA: 4-bit layers kept in their training layout while training (model/methods.py)
    bf16_layout: dict  # bf16 on CPU: whether the tn matmul layout was applied, both timings, why (harness/train/bf16cpu.py)
    train_attention: dict  # bf16 on CPU: whether training ran the block-causal kernel, both timings, why (harness/train/attention.py)
    lora_dropout: dict  # LoRA on CPU: the adapters' dropout masks from 15-bit integers: layers, p, effective_p (harness/train/dropout.py)
    reference_model: str  # preference objectives: "adapter disabled" | "adapter copy" | "copy" | "none" (docs/preference.md)
    distributed: dict  # a run over several processes: world_size, local_world_size, backend, launcher, strategy, threads_per_process
    init_from: dict  # train.init_from: the finished run training started from (run_dir, kind, name, objective, method)


_TYPES = {int: (int,), float: (int, float), str: (str,), bool: (bool,), dict: (dict,), list: (list, tuple)}


def _type_ok(value: Any, tp: type) -> bool:
    if value is None:  # every field may be null: not known yet, or not applicable
        return True
    if isinstance(value, bool) and tp is not bool:  # True is an int to Python, not a count to us
        return False
    return isinstance(value, _TYPES.get(tp, (object,)))


def check_record(record: Mapping, schema: type, what: str) -> list[str]:
    """Every field of `record` that `schema` (a TypedDict) does not declare, or whose value has another type."""
    fields = typing.get_type_hints(schema)
    errors = []
    for key, value in record.items():
        if key not in fields:
            errors.append(f"{what}: unknown field {key!r}; {schema.__name__} in harness/run/record.py declares "
                          f"{', '.join(sorted(fields))}")
        elif not _type_ok(value, fields[key]):
            errors.append(f"{what}: field {key!r} = {value!r} is not a {fields[key].__name__}")
    if schema is Summary and record.get("status") not in (*STATUSES, None):
        errors.append(f"{what}: status {record.get('status')!r} is not one of {', '.join(STATUSES)}")
    return errors


def check_writer(path: Path) -> None:
    """RecordError unless this process may write the run record: one run trained by several processes
    (torchrun: RANK, WORLD_SIZE) has one record, written by rank 0 alone (harness/train/distributed.py)."""
    rank, size = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    if rank != "0" and size != "1":
        raise RecordError(f"{path}: rank {rank} of a {size}-process run tried to write the run record; "
                          "only rank 0 writes it (harness/train/distributed.py)")


def _write_checked(run_dir: str | Path, name: str, record: Mapping, schema: type) -> Path:
    path = Path(run_dir) / name
    check_writer(path)
    errors = check_record(record, schema, str(path))
    if errors:
        raise RecordError("; ".join(errors))
    return atomic.write_json(path, dict(record))


def write_summary(run_dir: str | Path, summary: Mapping) -> Path:
    """The one writer of summary.json: checked against Summary, written atomically."""
    return _write_checked(run_dir, "summary.json", summary, Summary)


def write_manifest(run_dir: str | Path, manifest: Mapping) -> Path:
    """The one writer of manifest.json: checked against Manifest, written atomically."""
    return _write_checked(run_dir, "manifest.json", manifest, Manifest)


def write_or_warn(write: Callable[..., Any], *args: Any, what: str) -> bool:
    """For failure handlers, which must never raise: write(*args); if that fails (a full disk, a read-only
    runs root), say so on stderr and return False, so the handler goes on to the failure's exit code."""
    try:
        write(*args)
        return True
    except Exception as exc:  # noqa: BLE001 - any failure to write is reported, never raised from a handler
        print(f"[harness] could not write {what}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def run_dir_for(output_dir: str, name: str, run_id: str) -> Path:
    """<output_dir>/<name>/<run_id>, with both names checked so nothing escapes output_dir. A relative
    output_dir (the default `runs`) is under the harness root ($HARNESS_ROOT / --root, default the cwd)."""
    paths.check_name(name, "run name")
    paths.check_name(run_id, "run_id")
    return paths.safe_join(paths.under_root(output_dir), name, run_id)


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
    check_writer(p)
    current = atomic.read_json(p) if p.exists() else {"schema": SCHEMA, "versions": {}, "suites": {}}
    current.setdefault("versions", {}).update(versions)
    current.setdefault("suites", {}).update(suites)
    return atomic.write_json(p, current)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


# Exit codes of `harness train` / a trial's child process, by run status; the sweep reads them back.
EXIT_CODES = {"completed": 0, "failed": 1, "pruned": 3, "diverged": 4, "interrupted": 130}
