"""Where one run trains: in this process, or in train.devices processes that torchrun starts (docs/multi-device.md).

    harness train model=tiny-llama data=alpaca-tiny train.devices=2     # this process becomes the launcher:
      python -m torch.distributed.run --standalone --nproc-per-node 2 -m harness train <the same overrides>

The launcher checks the run directory as `harness train` would (a run_id recorded with another config is
refused before anything starts), picks the run_id every rank files under, gives each CPU process its share
of the cores (OMP_NUM_THREADS = cores / train.devices, or train.num_threads), starts torchrun and waits.
Rank 0 runs harness/pipeline.py train_run: the one run record, evaluation after training. The other ranks
train (follow) and write nothing. When torchrun ends with the record still "running" (a rank crashed or was
killed), the launcher records it failed, or interrupted after Ctrl-C, with the reason: a failed trial is a
recorded result. A sweep's trial child (`python -m harness train ...`) is such a launcher when its config
says train.devices > 1, so the sweep needs nothing of its own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from harness.config import RunConfig
from harness.pipeline import prepare_run_dir, train_run
from harness.run.record import SCHEMA, now_iso, read_summary, write_summary
from harness.train import distributed
from harness.train.callbacks import Outcome


def is_follower() -> bool:
    """A rank other than 0 of a run that torchrun started: it trains and records nothing."""
    return distributed.under_torchrun() and not distributed.is_main()


def launched() -> bool:
    """Rank 0 of a torchrun that this harness launched: the launcher prints the run's result line, not this rank."""
    return distributed.under_torchrun() and bool(os.environ.get(distributed.RUN_ID_ENV))


def train(cfg: RunConfig, overrides: list[str], force: bool = False) -> tuple[str, Path]:
    """One run, end to end, wherever its config says; returns (status, run_dir) as pipeline.train_run."""
    if distributed.under_torchrun():  # rank 0 of a torchrun launch: joins the group, then the usual run
        distributed.start_rank(cfg)
        try:
            return train_run(cfg, overrides, force=force)
        finally:
            distributed.stop_rank()
    if cfg.train.devices > 1:
        return launch(cfg, overrides, force)
    return train_run(cfg, overrides, force=force)


def follow(cfg: RunConfig) -> int:
    """Ranks 1..: train beside rank 0 and exit; 0 when training ended as planned (rank 0 records how), else 1.
    Failures are printed to stderr (the launcher quotes the last one in the record), never written."""
    from harness.config import default_run_name
    from harness.run.record import run_dir_for
    from harness.run.tracking import Tracker
    from harness.sweep.pruning import NullReporter
    from harness.train.fit import fit

    distributed.start_rank(cfg)
    try:
        run_dir = run_dir_for(cfg.output_dir, default_run_name(cfg), cfg.run_id)
        if (read_summary(run_dir) or {}).get("status") == "completed":
            return 0  # rank 0 says so and trains nothing either
        outcome = Outcome()
        status = fit(cfg, run_dir, {}, outcome, Tracker({}), NullReporter())  # no tracker backends: rank 0 logs
        return 0 if status in ("completed", "diverged", "pruned") else 1
    except KeyboardInterrupt:
        return 130
    except Exception:  # rank 0 (or the launcher) records the run; this rank only says why it stopped
        distributed.say(f"failed:\n{traceback.format_exc()}")
        return 1
    finally:
        distributed.stop_rank()


# ------------------------------------------------------------------------------------ launcher
def torchrun_command(devices: int, overrides: list[str], force: bool) -> list[str]:
    """The command that trains the run over `devices` processes: this same `harness train` under torchrun."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
            "-m", "harness", "train", *overrides, *(["--force"] if force else [])]


def _launch_env(cfg: RunConfig, device: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env[distributed.RUN_ID_ENV] = cfg.run_id
    # torchrun would set OMP_NUM_THREADS=1; each CPU process gets its share of the cores instead
    threads = distributed.cpu_threads(cfg.train.devices, cfg.train.num_threads) if device == "cpu" else (
        cfg.train.num_threads or distributed.cpu_threads(cfg.train.devices))
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def _device(cfg: RunConfig) -> str:
    """cpu or cuda, as each rank will resolve it; ConfigError for more GPU ranks than GPUs."""
    import torch

    from harness.config import ConfigError
    from harness.model.device import resolve_device

    device = resolve_device(cfg)
    if device == "cuda" and torch.cuda.device_count() < cfg.train.devices:
        raise ConfigError([f"train.devices={cfg.train.devices} on train.device={cfg.train.device} (cuda), but this "
                           f"machine has {torch.cuda.device_count()} GPU(s): one process per GPU. Use "
                           f"train.devices<={torch.cuda.device_count()}, or train.device=cpu for CPU processes."])
    return device


_RANK_PREFIX = re.compile(r"^\[(default)?rank\d+\]:\s?")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*")


def _why(tail: list[str]) -> str:
    """The last exception a rank printed (torchrun prefixes a rank's lines with [rankN]:), else the last lines."""
    found = [_RANK_PREFIX.sub("", ln.strip()) for ln in tail]
    found = [ln for ln in found if _EXCEPTION_LINE.match(ln) and not ln.startswith("torch.distributed.elastic")]
    if found:
        return found[-1][:600]
    lines = [ln.strip() for ln in tail if ln.strip()]
    return " | ".join(lines[-3:])[:600] or "no output"


def _relay(stream, sink, tail: list[str], keep: int = 200) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace")
        sink.write(line)
        sink.flush()
        tail.append(line)
        del tail[:-keep]


def _preexec() -> None:
    """torchrun dies with the launcher (PR_SET_PDEATHSIG), and has its own process group so that a terminal's
    Ctrl-C reaches it once, forwarded by the launcher (torchrun passes the signal on to every rank)."""
    from harness.run.parent import set_parent_death_signal

    os.setsid()
    set_parent_death_signal(signal.SIGKILL)


def launch(cfg: RunConfig, overrides: list[str], force: bool = False) -> tuple[str, Path]:
    """Train the run over cfg.train.devices processes under torchrun; returns (status, run_dir) from the record
    rank 0 wrote, or that this launcher completed when a rank died before the record was finished."""
    device = _device(cfg)
    run_dir, _, _ = prepare_run_dir(cfg, overrides, force, write=False)  # RunError before anything starts; run_id
    prior = read_summary(run_dir) or {}
    if prior.get("status") == "completed":
        print(f"[harness] run {run_dir} already completed; nothing to do")
        return "completed", run_dir
    cmd = torchrun_command(cfg.train.devices, overrides, force)
    env = _launch_env(cfg, device)
    threads = f", {env['OMP_NUM_THREADS']} threads each" if device == "cpu" else ""
    print(f"[harness] training {run_dir} over {cfg.train.devices} processes under torchrun "
          f"({distributed.backend(device)}{threads})", flush=True)
    t0, started = time.time(), now_iso()
    tail: list[str] = []
    interrupted = False
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, preexec_fn=_preexec)
    relay = threading.Thread(target=_relay, args=(proc.stderr, sys.stderr, tail), daemon=True)
    relay.start()
    while True:
        try:
            rc = proc.wait()
            break
        except KeyboardInterrupt:  # Ctrl-C, or the sweep stopping its trial: torchrun passes SIGINT to every rank
            interrupted = True
            proc.send_signal(signal.SIGINT)
    relay.join(timeout=10)
    summary = read_summary(run_dir)
    if summary is None or summary.get("status") == "running":
        status = "interrupted" if interrupted or rc in (130, -signal.SIGINT) else "failed"
        reason = ("interrupted (Ctrl-C or the sweep stopped it); re-run with the same run_id to resume"
                  if status == "interrupted" else
                  f"a training process failed (torchrun exit code {rc}): {_why(tail)}")
        summary = summary or {"schema": SCHEMA, "name": run_dir.parent.name, "run_id": run_dir.name,
                              "run_dir": str(run_dir), "study": cfg.study, "trial": cfg.trial, "started_at": started}
        summary.update(status=status, reason=reason, finished_at=now_iso(),
                       wall_time_s=summary.get("wall_time_s") or time.time() - t0)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_summary(run_dir, summary)
    return summary["status"], run_dir
