"""Experiment trackers at the edge: Weights & Biases (offline by default), MLflow (a local SQLite store by
default), TensorBoard (event files in the run directory), several at once, or none.

    harness train tracker=[wandb,mlflow,tensorboard]           # conf/tracker/*.yaml; tracker=none: nothing
    tracker = tracking.start(cfg, run_dir)                     # harness/pipeline.py
    tracker.log({"train_loss": 1.2, "lr": 2e-4}, step=10)      # every step it logs (harness/train/callbacks.py)
    tracker.finish(summary)                                    # final numbers, artifacts, close

Every backend gets the config (W&B config; MLflow params and TensorBoard hparams, flattened to `train.lr`), the
per-step rows of metrics.jsonl (train_loss, lr, grad_norm, val_loss, ...) under the same names, and at the end
the run's numbers as its record holds them (`summary.<field>` and eval.json's `<suite>.<metric>`: the names sweep
objectives use). With tracker.artifacts, a finished run's eval.json and weights (adapter/ or model/) become a
W&B artifact and MLflow artifacts (TensorBoard has none: they lie in the run directory beside its event files).
The run directory stays the source of truth: a backend that fails, to start or at any call, is reported once
and dropped, and the run goes on. Only this module imports wandb, mlflow and tensorboardX.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from harness import atomic
from harness.config import RunConfig, default_run_name, to_dict
from harness.run.record import flat_metrics


def _warn(message: str) -> None:
    print(f"[harness] warning: {message}", flush=True)


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as `train.lr: 0.0002` pairs; lists, mappings and None as JSON text (MLflow params, hparams)."""
    out: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict) and v:
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str)

    walk(to_dict(cfg), "")
    return out


def numbers(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def weights_dir(run_dir: Path) -> Path | None:
    """The saved adapter (LoRA methods) or full weights of a finished run, if it saved any."""
    return next((run_dir / n for n in ("adapter", "model") if (run_dir / n).is_dir()), None)


def kept_weights(cfg: RunConfig, run_dir: Path) -> Path | None:
    """The weights a run's artifacts name: weights_dir, except with train.save_model=false (the run removes them
    once its trackers have finished: an artifact would point at nothing, or keep a copy the user did not want)."""
    return weights_dir(run_dir) if cfg.train.save_model else None


def _run_key(run_dir: Path) -> str:
    return f"{run_dir.parent.name}/{run_dir.name}"  # <name>/<run_id>: both checked names (harness/paths.py)


# ------------------------------------------------------------------------------------ backends
def _short_sleep(seconds: float) -> None:
    time.sleep(min(seconds, 0.01))


def poll_wandb_core_often() -> bool:
    """wandb.init starts its wandb-core process and polls for the file that says where it listens every 0.2 s (its
    timeout unchanged); the core writes it within ~30 ms here, so each run waited ~0.17 s for nothing (W&B 0.31's
    service_port_file._SLEEP, its hook for this loop's sleeps). Polled every 10 ms instead. False, and nothing changed,
    where this wandb has no such hook."""
    try:
        from wandb.sdk.lib.service import service_port_file
    except ImportError:
        return False
    if getattr(service_port_file, "_SLEEP", None) not in (time.sleep, _short_sleep):
        return False
    service_port_file._SLEEP = _short_sleep
    return True


def write_requirements(files_dir: Path) -> Path:
    """The installed packages as "name==version" lines in W&B's files folder (requirements.txt, the file W&B would
    write itself; synced with the run), from the list this process read once (harness/run/environment.py)."""
    from harness.run.environment import installed_requirements

    return atomic.write_text(files_dir / "requirements.txt", "".join(f"{r}\n" for r in installed_requirements()))


class WandbBackend:
    """W&B: offline files under <run_dir>/wandb (sync later), a study's runs grouped and tagged by its name."""

    def __init__(self, cfg: RunConfig, run_dir: Path):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        poll_wandb_core_often()
        self._wandb, self.cfg, self.run_dir = wandb, cfg, run_dir
        self.run = wandb.init(
            project=cfg.tracker.project,
            entity=cfg.tracker.entity or None,
            mode=cfg.tracker.mode,
            dir=str(run_dir),
            name=f"{default_run_name(cfg)}/{run_dir.name}",
            id=f"{run_dir.parent.name}-{run_dir.name}"[-120:].replace("/", "-"),
            group=cfg.study or None,
            tags=list(cfg.tracker.tags) + ([cfg.study] if cfg.study else []),
            config=to_dict(cfg),
            resume="allow",
            # the requirements file comes from the process's cached list (below), not W&B's own scan of every
            # installed package's metadata at each init
            settings=wandb.Settings(console="off", x_disable_stats=True, x_save_requirements=False),
        )
        write_requirements(Path(self.run.dir))

    def log(self, metrics: dict, step: int | None) -> None:
        self.run.log(metrics, step=step)

    def finish(self, summary: dict) -> None:
        for k, v in summary.items():
            if isinstance(v, (int, float, str, bool)):
                self.run.summary[k] = v
        for k, v in flat_metrics(self.run_dir).items():
            if not k.startswith("summary."):  # the summary's own fields are set above, under their names
                self.run.summary[k] = v
        weights, ev = kept_weights(self.cfg, self.run_dir), self.run_dir / "eval.json"
        if self.cfg.tracker.artifacts and (weights or ev.exists()):
            name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{self.run_dir.parent.name}-{self.run_dir.name}")
            art = self._wandb.Artifact(name=name, type="model", metadata={"run_dir": str(self.run_dir)})
            if weights:  # a reference to where they lie (the run directory keeps them), neither hashed nor
                # uploaded at sync: W&B's md5 of a full model's files took 0.9 s of each SmolLM2 full fine-tune
                # trial (517 MB), and a sweep of 7B models would upload 14 GB per trial
                art.add_reference(weights.resolve().as_uri(), name=weights.name, checksum=False)
            if ev.exists():
                art.add_file(str(ev), name="eval.json", policy="immutable")
            self.run.log_artifact(art)
        self.run.finish(exit_code=0 if summary.get("status") in (None, "completed") else 1)


class MlflowBackend:
    """MLflow: experiment = the study (else the run's name), run = <name>/<run_id> (a resumed run continues it)."""

    def __init__(self, cfg: RunConfig, run_dir: Path):
        import logging

        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # a run never calls home
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        for noisy in ("mlflow", "alembic"):  # after the import, which sets mlflow's level
            logging.getLogger(noisy).setLevel(logging.WARNING)

        self._metric, self.cfg, self.run_dir, self.step = Metric, cfg, run_dir, 0
        root = Path(cfg.output_dir).resolve() / "mlflow"
        uri = cfg.tracker.mlflow_uri or f"sqlite:///{root / 'mlflow.db'}"
        db = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        experiment = cfg.tracker.mlflow_experiment or cfg.study or default_run_name(cfg)
        key = _run_key(run_dir)
        # one process at a time creates the database's tables, the experiment and this run (sweep workers share them)
        with atomic.file_lock(f"{db}.lock") if db is not None else contextlib.nullcontext():
            self.client = MlflowClient(tracking_uri=uri)
            exp = self.client.get_experiment_by_name(experiment)
            eid = exp.experiment_id if exp else self.client.create_experiment(
                experiment, artifact_location=None if cfg.tracker.mlflow_uri else (root / "artifacts").as_uri())
            found = self.client.search_runs([eid], filter_string=f"tags.harness_run = '{key}'", max_results=1)
            if found:  # the same run_id again: resumed
                self.run_id, have = found[0].info.run_id, set(found[0].data.params)
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                tags = {"harness_run": key, "run_dir": str(run_dir), "study": cfg.study, "trial": str(cfg.trial),
                        "model": cfg.model.name, "method": cfg.method.name, "data": cfg.data.name,
                        "tags": ",".join(cfg.tracker.tags)}
                self.run_id, have = self.client.create_run(eid, run_name=key, tags=tags).info.run_id, set()
            # params cannot change once logged: a resumed run adds only the ones it lacks
            params = [Param(k, str(v)[:6000]) for k, v in flat_config(cfg).items() if k not in have]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _log(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        rows = [self._metric(re.sub(r"[^A-Za-z0-9_\-. :/]", "_", k), v, ts, step) for k, v in metrics.items() if k != "step"]
        for i in range(0, len(rows), 1000):
            self.client.log_batch(self.run_id, metrics=rows[i:i + 1000])

    def log(self, metrics: dict, step: int | None) -> None:
        self.step = step if step is not None else self.step
        self._log(numbers(metrics), self.step)

    def finish(self, summary: dict) -> None:
        self._log(flat_metrics(self.run_dir), self.step)
        self.client.set_tag(self.run_id, "status", str(summary.get("status", "")))
        weights, ev = kept_weights(self.cfg, self.run_dir), self.run_dir / "eval.json"
        if self.cfg.tracker.artifacts:
            if ev.exists():
                self.client.log_artifact(self.run_id, str(ev))
            if weights:
                self.client.log_artifacts(self.run_id, str(weights), artifact_path=weights.name)
        status = summary.get("status")
        self.client.set_terminated(self.run_id, "FINISHED" if status in (None, "completed", "pruned") else
                                   "KILLED" if status == "interrupted" else "FAILED")


class TensorboardBackend:
    """TensorBoard (tensorboardX): event files in <run_dir>/tensorboard; the config as text and, at the end, as
    hparams beside the final numbers (TensorBoard's HParams tab compares runs)."""

    def __init__(self, cfg: RunConfig, run_dir: Path):
        import yaml
        from tensorboardX import SummaryWriter

        self.cfg, self.run_dir, self.step = cfg, run_dir, 0
        self.writer = SummaryWriter(logdir=str(run_dir / "tensorboard"), flush_secs=30)
        text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)  # markdown code block

    def log(self, metrics: dict, step: int | None) -> None:
        self.step = step if step is not None else self.step
        for k, v in numbers(metrics).items():
            if k != "step":
                self.writer.add_scalar(k, v, self.step)

    def finish(self, summary: dict) -> None:
        from tensorboardX.summary import hparams

        final = {k: v for k, v in flat_metrics(self.run_dir).items() if math.isfinite(v)}
        for part in hparams(flat_config(self.cfg), final):  # experiment, session start, session end
            self.writer.file_writer.add_summary(part)
        self.log(final, self.step)
        self.writer.close()


BACKENDS = {"wandb": WandbBackend, "mlflow": MlflowBackend, "tensorboard": TensorboardBackend}  # harness.config TRACKERS


# ------------------------------------------------------------------------------------- the run's
class Tracker:
    """The backends a run logs to. Each call goes to every backend; one that raises is reported and dropped."""

    def __init__(self, backends: dict[str, Any]):
        self.backends = backends

    def _each(self, what: str, call) -> None:
        for name, backend in list(self.backends.items()):
            try:
                call(backend)
            except Exception as exc:  # the run directory is the record; a tracker is a copy
                del self.backends[name]
                _warn(f"{name} tracker failed to {what} ({type(exc).__name__}: {exc}); the run goes on without it")

    def log(self, metrics: dict, step: int | None = None) -> None:
        self._each("log", lambda b: b.log(metrics, step))

    def finish(self, summary: dict | None = None) -> None:
        self._each("finish", lambda b: b.finish(summary or {}))
        self.backends = {}


def start(cfg: RunConfig, run_dir: Path) -> Tracker:
    """The run's tracker: every backend cfg.tracker.backends turns on that could start (none: logs nowhere)."""
    backends = {}
    for name, on in cfg.tracker.backends.items():
        if not on:
            continue
        try:
            backends[name] = BACKENDS[name](cfg, run_dir)
        except Exception as exc:  # the run directory is the record; tracking is a copy
            _warn(f"{name} tracker could not start ({type(exc).__name__}: {exc}); continuing without it")
    return Tracker(backends)
