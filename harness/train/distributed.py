"""One trial over several processes (train.devices=N): what a torchrun rank does that one process does not.

    harness train model=smollm2-135m method=lora train.devices=2    # harness/launch.py starts torchrun, which
                                                                     # starts 2 of `python -m harness train ...`

Each rank loads the model, takes its share of every global batch (the Trainer's distributed sampler) and
trains a DistributedDataParallel copy: gloo between CPU processes, nccl between GPUs (one GPU per rank). The
trial still has ONE run record, and rank 0 alone writes it: config.yaml, summary.json, manifest.json,
metrics.jsonl, eval.json, the adapter or weights (`write_manifest` below; harness/run/record.py refuses a
record write from any other rank). The other ranks write only what the Trainer's checkpoints need from each
of them (their RNG state, under checkpoints/, deleted when the run completes).

Every decision that stops training must be the same on every rank, or the others wait for ever in the next
gradient all-reduce: the logged training loss is already the mean over ranks (the Trainer gathers it), the
validation loss is reduced over ranks (score_rows_all_ranks), and the pruner is asked on rank 0 only, its
answer broadcast (SharedReporter). Nothing here imports transformers; torch only inside functions.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Mapping

from harness.config import ConfigError, RunConfig, TrainConfig
from harness.run import record

RUN_ID_ENV = "HARNESS_RUN_ID"  # set by the launcher (harness/launch.py): every rank files the same run directory


@dataclass(frozen=True)
class World:
    """This process's place among the processes training one run (torchrun's environment variables)."""

    rank: int = 0  # RANK: 0 writes the run record
    local_rank: int = 0  # LOCAL_RANK: the GPU this rank uses on its machine
    size: int = 1  # WORLD_SIZE: processes training the run
    local_size: int = 1  # LOCAL_WORLD_SIZE: of those, on this machine (train.devices)


def under_torchrun() -> bool:
    """Whether torchrun (torch.distributed.run) started this process: it sets LOCAL_RANK and WORLD_SIZE."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def world() -> World:
    if not under_torchrun():
        return World()
    env = os.environ
    size = int(env["WORLD_SIZE"])
    return World(rank=int(env.get("RANK", "0")), local_rank=int(env["LOCAL_RANK"]), size=size,
                 local_size=int(env.get("LOCAL_WORLD_SIZE", str(size))))


def is_main() -> bool:
    """Rank 0, or a process of its own: the one that writes the run record."""
    return world().rank == 0


def backend(device: str) -> str:
    """The collective backend between ranks: nccl between GPUs, gloo between CPU processes."""
    return "nccl" if device.startswith("cuda") else "gloo"


def cpu_threads(devices: int, num_threads: int = 0) -> int:
    """Torch threads per CPU process: train.num_threads when set, else this machine's cores / train.devices."""
    if num_threads:
        return num_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, devices))


# ------------------------------------------------------------------------------- rank start-up
def _die_with_parent() -> None:
    """Linux: SIGKILL this process when torchrun dies (PR_SET_PDEATHSIG), so no rank trains on, orphaned, into a
    run directory that a retry of the trial is already using. No-op elsewhere."""
    import signal

    from harness.run.parent import set_parent_death_signal

    set_parent_death_signal(signal.SIGKILL)


def start_rank(cfg: RunConfig) -> World:
    """Set up a process torchrun started, before anything loads: check it is one of train.devices processes on
    this machine, take the launcher's run_id, pick this rank's GPU, join the process group (gloo or nccl)."""
    w = world()
    if w.local_size != cfg.train.devices:
        raise ConfigError([
            f"train.devices={cfg.train.devices}, but torchrun started {w.local_size} processes on this machine "
            f"(LOCAL_WORLD_SIZE={w.local_size}). Set train.devices={w.local_size}, or run `harness train "
            f"train.devices=N ...` without torchrun: it starts torchrun itself."])
    _die_with_parent()
    if not cfg.run_id and os.environ.get(RUN_ID_ENV):
        cfg.run_id = os.environ[RUN_ID_ENV]
    if not cfg.run_id and w.size > 1:
        raise ConfigError([f"a run over {w.size} processes needs one run_id for all of them: give run_id=..., or "
                           "start it with `harness train train.devices=N ...`, which picks one."])
    import torch
    import torch.distributed as dist

    from harness.model.device import resolve_device

    device = resolve_device(cfg)
    if device == "cuda":
        if torch.cuda.device_count() <= w.local_rank:
            raise ConfigError([f"train.devices={cfg.train.devices} on train.device=cuda, but this machine has "
                               f"{torch.cuda.device_count()} GPU(s); use train.devices<={torch.cuda.device_count()}."])
        torch.cuda.set_device(w.local_rank)  # "cuda" now means this rank's GPU (model.to, bitsandbytes)
    if not dist.is_initialized():  # the Trainer (accelerate) reuses this group
        kwargs = {"device_id": torch.device("cuda", w.local_rank)} if device == "cuda" else {}
        dist.init_process_group(backend=backend(device), timeout=timedelta(minutes=30), **kwargs)
    # The model's local copy (a tiny model's build, a GGUF's conversion) is made by rank 0 while the others wait:
    # in a process group, transformers' save_pretrained writes the weights on rank 0 only.
    if w.rank == 0:
        from harness.model.load import local_dir

        try:
            local_dir(cfg.model)
        except Exception:  # noqa: BLE001 - fit's own load raises it again, where the run records it
            pass
    barrier()
    return w


def stop_rank() -> None:
    """Leave the process group (torch warns at exit otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------- hooks used by fit()
def trainer_args(device: str) -> dict:
    """TrainingArguments for a rank of a torchrun launch ({} for one process): the backend (else accelerate
    would pick MPI where torch has it), and no search for unused parameters (every trainable parameter of our
    methods gets a gradient each step; the search costs a graph traversal per step)."""
    if not under_torchrun():
        return {}
    return {"ddp_backend": backend(device), "ddp_find_unused_parameters": False}


def manifest_fields(device: str) -> dict:
    """manifest.json `distributed` for a run over several processes ({} for one)."""
    w = world()
    if not under_torchrun():
        return {}
    info = {"world_size": w.size, "local_world_size": w.local_size, "backend": backend(device),
            "launcher": "torchrun", "strategy": "ddp"}
    if device == "cpu":
        import torch

        info["threads_per_process"] = torch.get_num_threads()
    return {"distributed": info}


def summary_fields(t: TrainConfig) -> dict:
    """summary.json world_size and global_batch_size: rows per optimizer step over all processes
    (train.batch_size is per process, per micro-batch)."""
    size = world().size
    return {"world_size": size, "global_batch_size": t.batch_size * t.grad_accum * size}


def write_manifest(run_dir: str | Path, manifest: Mapping) -> Path | None:
    """harness.run.record.write_manifest on rank 0; nothing on the other ranks (one record per trial)."""
    return record.write_manifest(run_dir, manifest) if is_main() else None


def barrier() -> None:
    """Wait for every rank (no-op for one process): e.g. before rank 0 deletes the checkpoints the others
    may still be writing their RNG state into."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _all_sum(values: list[float], device) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def score_rows_all_ranks(model, rows: list[dict], batch_size: int, pad_id: int) -> dict:
    """harness.model.scoring.score_rows over the whole validation set, each rank scoring every size-th row and
    the sums reduced over ranks: the same number as one process (token-weighted over all rows; only the float
    summation order differs), on every rank, in 1/size of the time. One process: score_rows itself."""
    import math

    import torch.distributed as dist

    from harness.model.load import model_device
    from harness.model.scoring import score_rows

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return score_rows(model, rows, batch_size=batch_size, pad_id=pad_id)
    rank, size = dist.get_rank(), dist.get_world_size()
    if not rows:
        raise ValueError("score_rows: no validation rows (data.val_size=0?)")
    total, tokens = 0.0, 0
    shard = list(rows)[rank::size]
    if shard and any(any(x != -100 for x in r["labels"][1:]) for r in shard):
        part = score_rows(model, shard, batch_size=batch_size, pad_id=pad_id)
        total, tokens = part["loss"] * part["tokens"], part["tokens"]
    total, tokens = _all_sum([total, float(tokens)], model_device(model))
    if tokens == 0:
        raise ValueError("score_rows: no target tokens in the validation rows (all labels are -100)")
    loss = total / tokens
    return {"loss": loss, "perplexity": math.inf if loss > 700 else math.exp(loss), "tokens": int(tokens)}


class SharedReporter:
    """The pruner's answer, asked on rank 0 and broadcast: every rank stops at the same step, and only rank 0
    reports to the study (the other ranks' reporter is never asked)."""

    def __init__(self, reporter):
        self.reporter = reporter

    def report(self, step: int, value: float) -> bool:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.reporter.report(step, value)
        answer = [bool(self.reporter.report(step, value)) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(answer, src=0)
        return bool(answer[0])


def shared_reporter(reporter):
    """`reporter` as is for one process; a SharedReporter under torchrun."""
    return SharedReporter(reporter) if under_torchrun() else reporter


def say(msg: str) -> None:
    """A line from a rank other than 0 (rank 0 speaks for the run): to stderr, prefixed with the rank."""
    print(f"[harness rank {world().rank}] {msg}", file=sys.stderr, flush=True)
