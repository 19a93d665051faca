"""No lost work: every run stays resumable. A checkpoint cut short by a full disk is skipped, a full disk
fails the run with its reason (no second traceback from the failure handler), and a run killed during its
evaluation evaluates its saved weights on the rerun instead of training again.

    python -m pytest -q tests/test_resume.py        # the full-disk test needs root (a 2 MB tmpfs); skipped otherwise
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from harness import config, pipeline
from harness.pipeline import train_run
from harness.run.record import read_eval, read_metrics, read_summary, run_dir_for
from harness.train import fit as fit_module
from harness.train.fit import checkpoint_problem, last_checkpoint

ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def _run(overrides, outcome=None):
    return train_run(config.compose(overrides), overrides, outcome=outcome)


def _train_steps(run_dir) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir) if "train_loss" in r]


# ------------------------------------------------------------------------- 1. incomplete checkpoints
def _checkpoint(root, step, state="{}", weights=b"\0" * 8, name="adapter_model.safetensors"):
    d = root / "checkpoints" / f"checkpoint-{step}"
    d.mkdir(parents=True)
    if weights is not None:
        (d / name).write_bytes(weights)
    if state is not None:
        (d / "trainer_state.json").write_text(state)
    return d


def test_only_complete_checkpoints_count(tmp_path):
    _checkpoint(tmp_path, 5, name="model.safetensors")
    _checkpoint(tmp_path, 10, state="")  # a full disk: trainer_state.json created, nothing written into it
    _checkpoint(tmp_path, 15, state='{"global_step": 1')  # cut short
    _checkpoint(tmp_path, 20, weights=b"")  # empty weights
    _checkpoint(tmp_path, 25, weights=None)  # no weights at all
    _checkpoint(tmp_path, 30, state=None)  # killed before the Trainer wrote its state (it writes it last)
    problems: dict[str, str] = {}
    assert last_checkpoint(tmp_path, problems).name == "checkpoint-5"
    assert sorted(problems) == [f"checkpoint-{s}" for s in (10, 15, 20, 25, 30)]
    assert "trainer_state.json unreadable" in problems["checkpoint-10"] and "empty adapter_model" in problems["checkpoint-20"]
    sharded = _checkpoint(tmp_path, 35, weights=b'{"weight_map": {"a": "model-00001-of-00002.safetensors", '
                                                 b'"b": "model-00002-of-00002.safetensors"}}',
                          name="model.safetensors.index.json")
    (sharded / "model-00001-of-00002.safetensors").write_bytes(b"\0")
    assert "model-00002-of-00002" in checkpoint_problem(sharded)
    (sharded / "model-00002-of-00002.safetensors").write_bytes(b"\0")
    assert checkpoint_problem(sharded) == "" and last_checkpoint(tmp_path).name == "checkpoint-35"


def _interrupt_at(monkeypatch, step: int):
    """Training raises KeyboardInterrupt (Ctrl-C) when it reaches `step`."""
    real = fit_module.make_callback

    def interrupting(*a, **kw):
        cb = real(*a, **kw)

        def on_step_end(args, state, control, **k):
            if state.global_step == step:
                raise KeyboardInterrupt

        cb.on_step_end = on_step_end
        return cb

    monkeypatch.setattr(fit_module, "make_callback", interrupting)


@pytest.mark.slow
def test_a_corrupted_newest_checkpoint_resumes_from_the_previous_one(tiny_overrides, monkeypatch, capsys):
    ov = [o for o in tiny_overrides if not o.startswith("train.max_steps")] + [
        "method=lora", "train.max_steps=8", "train.save_every=3", "train.eval_every=0", "run_id=corrupt"]
    _interrupt_at(monkeypatch, 5)
    status, run_dir = _run(ov)
    assert status == "interrupted" and last_checkpoint(run_dir).name == "checkpoint-3"
    # what a full disk leaves while the Trainer saves step 6: the weights, then an empty trainer_state.json
    bad = run_dir / "checkpoints" / "checkpoint-6"
    shutil.copytree(run_dir / "checkpoints" / "checkpoint-3", bad)
    (bad / "trainer_state.json").write_bytes(b"")
    monkeypatch.undo()
    capsys.readouterr()
    status, _ = _run(ov)
    out, err = capsys.readouterr()
    s = read_summary(run_dir)
    assert status == "completed" and s["steps"] == 8 and s["resumed"] is True, s
    assert "resuming corrupt from checkpoint-3" in out
    assert "skipping checkpoint-6" in err and "trainer_state.json unreadable" in err
    assert _train_steps(run_dir) == list(range(1, 9))  # the steps after 3 trained once more, recorded once


# -------------------------------------------------------------------------------------- 2. full disk
@pytest.fixture()
def small_disk(tmp_path):
    """A 2 MB tmpfs: full after the tiny model's first full-weights checkpoint (weights + AdamW state, ~1.5 MB)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_fails_the_run_with_its_reason_and_the_rerun_resumes(tiny_overrides, small_disk):
    ov = [o for o in tiny_overrides if not o.startswith(("train.max_steps", "output_dir"))] + [
        "method=full", "train.max_steps=4", "train.save_every=1", "train.eval_every=0", "run_id=full",
        f"output_dir={small_disk}"]
    cmd = [sys.executable, "-m", "harness", "train", *ov]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "During handling" not in r.stderr, r.stderr  # handlers never raise
    assert "No space left on device" in r.stderr and "could not write" in r.stderr, r.stderr
    run_dir = run_dir_for(str(small_disk), "tiny-llama-full-alpaca-tiny", "full")
    assert list((run_dir / "checkpoints").glob("checkpoint-*")), "it failed while saving a checkpoint"
    # space freed: the same command resumes from the last complete checkpoint and finishes
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    s = read_summary(run_dir)
    assert s["status"] == "completed" and s["steps"] == 4 and s["resumed"] is True
    assert _train_steps(run_dir) == [1, 2, 3, 4]


def test_failure_handler_survives_an_unwritable_error_log(tiny_overrides, monkeypatch, capsys):
    """The same without root: writing error.log and summary.json fails (ENOSPC) after a training error."""
    import errno

    from harness import atomic

    def boom(*_a, **_k):
        raise RuntimeError("training broke")

    real_write = atomic.write_bytes

    def full_after_start(path, data):
        if path.name in ("error.log", "summary.json") and broken["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)

    broken = {"on": False}

    def fit_then_full(*a, **k):
        broken["on"] = True
        boom()

    monkeypatch.setattr(atomic, "write_bytes", full_after_start)
    monkeypatch.setattr(pipeline, "fit", fit_then_full)
    status, run_dir = _run(tiny_overrides + ["run_id=nospace"])
    err = capsys.readouterr().err
    assert status == "failed"
    assert "could not write" in err and "error.log" in err and "No space left on device" in err
    assert "failed: RuntimeError: training broke" in err  # the reason, where summary.json could not take it


# ------------------------------------------------------------------------- 3. killed during evaluation
EVAL = ["eval=quick", "eval.perplexity=[]", "eval.lm_eval.tasks=[]"]  # the `val` suite only: seconds


@pytest.mark.parametrize("kill,save_model", [(KeyboardInterrupt, "true"), (SystemExit, "false")])
def test_killed_during_evaluation_the_rerun_evaluates_without_training_again(tiny_overrides, monkeypatch, kill, save_model):
    """KeyboardInterrupt: recorded as interrupted; SystemExit: nothing recorded, like a kill -9."""
    ov = tiny_overrides + ["method=lora", "run_id=evalkill", f"train.save_model={save_model}", *EVAL]
    ov = [o for o in ov if o != "eval=none"]

    def killed(*_a, **_k):
        raise kill()

    monkeypatch.setattr(pipeline, "run_suites", killed)
    try:
        status, run_dir = _run(ov)
        assert status == "interrupted"
    except SystemExit:
        run_dir = run_dir_for(str(config.compose(ov).output_dir), "tiny-llama-lora-alpaca-tiny", "evalkill")
    before = read_summary(run_dir)
    assert before["trained_at"] and before["steps"] == 3 and (run_dir / "adapter").is_dir()
    assert before["status"] == ("interrupted" if kill is KeyboardInterrupt else "running")
    monkeypatch.undo()

    def no_training(*_a, **_k):
        raise AssertionError("trained again")

    monkeypatch.setattr(pipeline, "fit", no_training)
    status, _ = _run(ov)
    s = read_summary(run_dir)
    assert status == "completed", s
    assert _train_steps(run_dir) == [1, 2, 3]  # each step once
    assert read_eval(run_dir)["suites"]["val"]["metrics"]["loss"] == pytest.approx(s["final_val_loss"], rel=1e-5)
    for key in ("steps", "train_time_s", "train_tokens", "best_val_loss", "trained_at"):
        assert s[key] == before[key], key  # the training's record, kept
    assert s["resumed"] is True and s["eval_time_s"] > 0
    assert (run_dir / "adapter").is_dir() == (save_model == "true")  # save_model=false: dropped once complete
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_a_rerun_without_a_checkpoint_records_each_step_once(tiny_overrides):
    """Killed before its first checkpoint: the rerun trains from step 0 and the killed attempt's rows go."""
    ov = tiny_overrides + ["method=lora", "run_id=nockpt"]
    status, run_dir = _run(ov)
    s = read_summary(run_dir)
    s.update(status="running", trained_at=None)  # as if killed after logging, before any checkpoint
    (run_dir / "summary.json").write_text(json.dumps(s))
    status, _ = _run(ov)
    assert status == "completed" and _train_steps(run_dir) == [1, 2, 3]
