"""Experiment trackers (harness/run/tracking.py, conf/tracker/): tracker=wandb|mlflow|tensorboard|none, several at
once. Each logs the config, every logged step, the run's final numbers (summary.json and eval.json) and a finished
run's weights, read back here from each library's own files, offline: MLflow's SQLite store through its client,
TensorBoard's event files and W&B's offline transaction log through their protobufs. A tracker that fails is
reported and the run goes on.

    python -m pytest tests/test_tracking.py -q
"""

from __future__ import annotations

import glob
import json
import struct
import textwrap
from pathlib import Path

import pytest
import yaml

from harness import config
from harness.config import schema
from harness.pipeline import train_run
from harness.run import tracking
from harness.run.record import SCHEMA, read_eval, read_metrics, read_summary, update_eval, write_summary

TRACKERS = ("wandb", "mlflow", "tensorboard")
FAST_PPL = "eval.perplexity=[{name:wikitext2,path:wikitext-2-raw/wiki.test.raw,max_length:64,stride:64,batch_size:8,max_tokens:300}]"


# ------------------------------------------------------------------ reading each tracker's files
def mlflow_run(runs_dir: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{runs_dir / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    return client, run


def tensorboard_events(logdir: Path) -> list:
    """Every Event in the TFRecord files of logdir (length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    out = []
    for f in sorted(logdir.glob("events.out.tfevents.*")):
        data, pos = f.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack_from("<Q", data, pos)
            ev = event_pb2.Event()
            ev.ParseFromString(data[pos + 12:pos + 12 + n])
            out.append(ev)
            pos += 12 + n + 4
    return out


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list] = {}
    for ev in tensorboard_events(logdir):
        for v in ev.summary.value:
            if not v.metadata.plugin_data.plugin_name:
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def wandb_records(run_dir: Path) -> list:
    """The records of the run's offline .wandb file (W&B's LevelDB-style log: 32 KiB blocks of
    checksum, length, type, data; a record may span blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "*.wandb"))
    data, block = Path(path).read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, parts, out = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0:
            break
        parts += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(parts)
            out.append(rec)
            parts = b""
    return out


def wandb_items(records, kind: str) -> dict:
    """key -> value of the history rows / summary updates / config of W&B records (later ones win)."""
    out: dict = {}
    for r in records:
        if r.WhichOneof("record_type") == kind == "history":
            row = {(i.key or ".".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            out.setdefault("rows", []).append(row)
        elif r.WhichOneof("record_type") == kind == "summary":
            out.update({(i.key or ".".join(i.nested_key)): json.loads(i.value_json) for i in r.summary.update})
        elif r.WhichOneof("record_type") == kind == "run":
            out.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
    return out


# ------------------------------------------------------------------------------------------ tests
def test_tracker_options_compose_alone_and_together():
    base = ["model=tiny-llama", "data=alpaca-tiny"]
    assert config.compose(base).tracker.backends == {"wandb": True}  # the default, as before
    assert config.compose(base + ["tracker=none"]).tracker.backends == {}
    for one in TRACKERS:
        tr = config.compose(base + [f"tracker={one}"]).tracker
        assert (tr.name, tr.backends) == (one, {one: True})
    tr = config.compose(base + ["tracker=[wandb,mlflow,tensorboard]", "tracker.project=p"]).tracker
    assert (tr.name, tr.backends, tr.project) == ("wandb+mlflow+tensorboard", {t: True for t in TRACKERS}, "p")
    assert set(tracking.BACKENDS) == set(schema.TRACKERS) == set(TRACKERS)  # the option names, the backends, the schema
    with pytest.raises(config.ConfigError, match=r"tracker\.backends\.mlfow: 'mlfow' is not one of.*Did you mean 'mlflow'"):
        config.compose(base + ["tracker.backends.mlfow=true"])
    with pytest.raises(config.ConfigError, match=r"tracker=\[\]: choose at least one option"):
        config.compose(base + ["tracker=[]"])
    # a config.yaml recorded when a run had one `tracker.backend` still loads
    old = config.to_dict(config.compose(base))
    old["tracker"] = {"name": "wandb", "backend": "wandb", "mode": "offline", "project": "harness", "entity": "", "tags": []}
    assert config.from_dict(old).tracker.backends == {"wandb": True}
    old["tracker"].update(name="none", backend="none")
    assert config.from_dict(old).tracker.backends == {}


@pytest.mark.slow
def test_every_tracker_logs_config_steps_eval_and_weights(tiny_overrides, runs_dir):
    ov = [o for o in tiny_overrides if o not in ("tracker=none", "eval=none")] + [
        "tracker=[wandb,mlflow,tensorboard]", "tracker.tags=[t1]", "eval=perplexity", FAST_PPL, "eval.val_loss=true",
        "eval.contamination=false"]
    status, run_dir = train_run(config.compose(ov), ov)
    assert status == "completed", read_summary(run_dir)
    steps = [r for r in read_metrics(run_dir) if "train_loss" in r]
    evals = {f"{s}.{k}": v for s, res in read_eval(run_dir)["suites"].items() for k, v in res["metrics"].items()
             if isinstance(v, (int, float))}
    summary, adapter = read_summary(run_dir), (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert [r["step"] for r in steps] == [1, 2, 3] and "wikitext2.word_perplexity" in evals and "val.loss" in evals

    # MLflow: experiment = the run's name (no study), run = <name>/<run_id>
    client, run = mlflow_run(runs_dir, run_dir.parent.name)
    assert run.info.run_name == f"{run_dir.parent.name}/{run_dir.name}" and run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.0002" and run.data.params["method.name"] == "lora"
    assert run.data.params["tracker.backends.mlflow"] == "True" and run.data.tags["tags"] == "t1"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["train_loss"])) for r in steps]
    for key in ("lr", "grad_norm", "val_loss"):
        assert client.get_metric_history(run.info.run_id, key), key
    for key, value in evals.items():
        assert run.data.metrics[key] == pytest.approx(value), key
    assert run.data.metrics["summary.best_val_loss"] == pytest.approx(summary["best_val_loss"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"eval.json", "adapter"}
    local = Path(client.download_artifacts(run.info.run_id, "adapter/adapter_model.safetensors", str(run_dir.parent)))
    assert local.read_bytes() == adapter

    # TensorBoard: event files in the run directory
    tb = run_dir / "tensorboard"
    scalars = tensorboard_scalars(tb)
    assert [(s, pytest.approx(v)) for s, v in scalars["train_loss"]] == [(r["step"], r["train_loss"]) for r in steps]
    assert scalars["wikitext2.word_perplexity"][-1][1] == pytest.approx(evals["wikitext2.word_perplexity"], rel=1e-6)
    assert scalars["summary.best_val_loss"][-1][1] == pytest.approx(summary["best_val_loss"], rel=1e-6)
    plugins = {v.tag: v for ev in tensorboard_events(tb) for v in ev.summary.value if v.metadata.plugin_data.plugin_name}
    assert yaml.safe_load(textwrap.dedent(plugins["config/text_summary"].tensor.string_val[0].decode()))["train"]["lr"] == 0.0002
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(plugins)
    assert b"train.lr" in plugins["_hparams_/session_start_info"].metadata.plugin_data.content

    # W&B: the offline run's config, steps, final numbers and the artifact
    records = wandb_records(run_dir)
    assert wandb_items(records, "run")["train"]["lr"] == 0.0002
    rows = [r for r in wandb_items(records, "history")["rows"] if "train_loss" in r]
    assert [(r["_step"], pytest.approx(r["train_loss"])) for r in rows] == [(r["step"], r["train_loss"]) for r in steps]
    final = wandb_items(records, "summary")
    assert final["wikitext2.word_perplexity"] == pytest.approx(evals["wikitext2.word_perplexity"])
    assert final["best_val_loss"] == pytest.approx(summary["best_val_loss"]) and final["status"] == "completed"
    (art,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert art.type == "model" and {m.path for m in art.manifest.contents} >= {"adapter/adapter_model.safetensors", "eval.json"}
    refs = {m.path: m.ref for m in art.manifest.contents}
    assert refs["adapter/adapter_model.safetensors"] == (run_dir / "adapter" / "adapter_model.safetensors").resolve().as_uri()


def _fake_run(tmp_path: Path, *extra: str):
    """A config and a finished run directory (summary, eval.json, adapter/) without training anything."""
    runs = tmp_path / "runs"
    ov = ["model=tiny-llama", "data=alpaca-tiny", f"output_dir={runs}", "run_id=r1", "study=st", *extra]
    cfg = config.compose(ov)
    run_dir = runs / "st" / "r1"
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    summary = {"schema": SCHEMA, "status": "completed", "reason": "", "best_val_loss": 1.5}
    write_summary(run_dir, summary)
    update_eval(run_dir, {"val": {"metrics": {"loss": 1.5}}}, {})
    return cfg, run_dir, summary


def test_wandb_artifact_references_the_weights_where_they_lie_and_not_when_they_will_be_dropped(tmp_path, capsys):
    for keep in (True, False):
        cfg, run_dir, summary = _fake_run(tmp_path / str(keep), "tracker=wandb", f"train.save_model={str(keep).lower()}")
        tracker = tracking.start(cfg, run_dir)
        assert list(tracker.backends) == ["wandb"]
        tracker.finish(summary)
        assert "warning" not in capsys.readouterr().out  # finished, not dropped for an error
        (art,) = [r.artifact for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "artifact"]
        entries = {m.path: m for m in art.manifest.contents}
        assert not entries["eval.json"].ref  # a file of the artifact
        weights = run_dir / "adapter" / "adapter_model.safetensors"
        if keep:  # a reference: by path, not read (a full model's md5 cost seconds per trial) nor uploaded
            assert entries["adapter/adapter_model.safetensors"].ref == weights.resolve().as_uri()
            assert entries["adapter/adapter_model.safetensors"].size == len(b"weights")
        else:  # train.save_model=false: the run removes them after its trackers finish
            assert set(entries) == {"eval.json"}


def test_wandb_gets_its_requirements_file_from_the_cached_package_list_and_polls_its_core_often(tmp_path):
    import torch
    from wandb.sdk.lib.service import service_port_file

    from harness.run.environment import installed_requirements

    cfg, run_dir, summary = _fake_run(tmp_path, "tracker=wandb")
    tracker = tracking.start(cfg, run_dir)
    assert service_port_file._SLEEP is tracking._short_sleep  # this wandb's hook: polled every 10 ms, not 0.2 s
    tracker.finish(summary)
    (files,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "files"))
    lines = Path(files, "requirements.txt").read_text().splitlines()
    assert lines == installed_requirements() and f"torch=={torch.__version__}" in lines
    assert len(lines) == len(set(lines)) > 50 and lines == sorted(lines, key=str.lower)
    assert tracking.poll_wandb_core_often()  # idempotent


@pytest.mark.slow
def test_a_failing_tracker_is_reported_and_dropped_while_the_others_go_on(tmp_path, monkeypatch, capsys):
    cfg, run_dir, summary = _fake_run(tmp_path, "tracker=[mlflow,tensorboard]")
    monkeypatch.setattr(tracking.MlflowBackend, "log", lambda *a: (_ for _ in ()).throw(RuntimeError("store down")))
    tracker = tracking.start(cfg, run_dir)
    for step in (1, 2):
        tracker.log({"train_loss": 2.0 / step}, step=step)
    tracker.finish(summary)
    out = capsys.readouterr().out
    assert out.count("mlflow tracker failed to log (RuntimeError: store down); the run goes on without it") == 1
    assert [s for s, _ in tensorboard_scalars(run_dir / "tensorboard")["train_loss"]] == [1, 2]  # the other one logged on
    # one that cannot start is reported, and the run has the others
    cfg, run_dir, summary = _fake_run(tmp_path / "b", "tracker=[mlflow,tensorboard]", "tracker.mlflow_uri=nosuchscheme://x")
    tracker = tracking.start(cfg, run_dir)
    assert "mlflow tracker could not start" in capsys.readouterr().out and list(tracker.backends) == ["tensorboard"]
    tracker.finish(summary)
    assert tracking.start(config.compose(["model=tiny-llama", "data=alpaca-tiny", "tracker=none"]), run_dir).backends == {}


@pytest.mark.slow
def test_a_resumed_run_continues_its_mlflow_run(tmp_path):
    cfg, run_dir, summary = _fake_run(tmp_path, "tracker=mlflow", "tracker.artifacts=false")
    for attempt, steps in enumerate(([1, 2], [2, 3])):  # killed after step 2, resumed from its step-2 checkpoint
        tracker = tracking.start(cfg, run_dir)
        for step in steps:
            tracker.log({"train_loss": 1.0 / step}, step=step)
        tracker.finish({**summary, "status": "interrupted" if attempt == 0 else "completed"})
        assert tracker.backends == {}
    client, run = mlflow_run(tmp_path / "runs", "st")  # the study is the experiment; one run
    assert run.info.run_name == "st/r1" and run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert sorted({m.step for m in client.get_metric_history(run.info.run_id, "train_loss")}) == [1, 2, 3]
    assert run.data.metrics["val.loss"] == 1.5 and not client.list_artifacts(run.info.run_id)
