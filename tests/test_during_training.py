"""Benchmarks during training (eval.during_training; harness/train/benchmarks.py, harness/eval/during.py): the
rows land at the scheduled steps, training losses are the same with and without them, a resume records no step
twice, the report draws them beside the loss, and bad settings fail at compose time with the fix."""

from __future__ import annotations

import pytest

from harness import config
from harness.config import ConfigError
from harness.pipeline import train_run
from harness.run.record import read_metrics, read_summary
from harness.train.benchmarks import PREFIX, bench_row, due

DURING = ["eval.during_training.tasks=[arc_easy]", "eval.during_training.limit=3", "eval.during_training.batch_size=4"]


def _train(overrides):
    cfg = config.compose(overrides)
    return train_run(cfg, overrides)


def _bench_steps(run_dir) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir) if f"{PREFIX}arc_easy.acc" in r]


def _losses(run_dir) -> list[tuple]:
    return [(r["step"], r["train_loss"], r["grad_norm"]) for r in read_metrics(run_dir) if "train_loss" in r]


# ------------------------------------------------------------------------------------ pure parts
def test_schedule_by_steps_and_checkpoints():
    assert [s for s in range(1, 11) if due(s, 4, False, False)] == [4, 8]
    assert [s for s in range(1, 11) if due(s, 0, True, s % 3 == 0)] == [3, 6, 9]
    assert [s for s in range(1, 11) if due(s, 4, True, s % 3 == 0)] == [3, 4, 6, 8, 9]
    assert not any(due(s, 0, False, True) for s in range(1, 11))
    assert not due(0, 1, True, True)


def test_bench_row_is_flat_and_keeps_numbers_only():
    row = bench_row(6, 0.123456, {"piqa": {"acc": 0.5, "acc_stderr": 0.1, "n": 20, "note": "x"}}, 2.5)
    assert row == {"step": 6, "epoch": 0.1235, "bench/piqa.acc": 0.5, "bench/piqa.acc_stderr": 0.1, "bench/piqa.n": 20,
                   "bench_time_s": 2.5}


@pytest.mark.parametrize("overrides, needle", [
    (["eval.during_training.every_steps=-1", "eval.during_training.tasks=[arc_easy]"], "every_steps=-1: must be >= 0"),
    (["eval.during_training.every_steps=5", "eval.during_training.tasks=[arc_esy]"], "Did you mean 'arc_easy'?"),
    (["eval.during_training.every_steps=5", "eval.during_training.tasks=[mmlu]"], "not an offline task"),
    (["eval.during_training.tasks=[arc_easy]"], "no schedule: set eval.during_training.every_steps=N"),
    (["eval.during_training.at_checkpoints=true"], "but no tasks; name some"),
    (["eval.during_training.every_steps=5", "eval.during_training.tasks=[piqa]", "eval.during_training.limit=-2"],
     "limit=-2: must be >= 0"),
])
def test_bad_settings_fail_at_compose_time_with_the_fix(overrides, needle):
    with pytest.raises(ConfigError) as err:
        config.compose(["model=tiny-llama", *overrides])
    assert needle in str(err.value)


def test_off_by_default_and_a_good_setting_composes():
    assert config.compose(["model=tiny-llama"]).eval.during_training.tasks == []
    dt = config.compose(["model=tiny-llama", "eval.during_training.every_steps=5", *DURING]).eval.during_training
    assert (dt.tasks, dt.every_steps, dt.limit) == (["arc_easy"], 5, 3)


# ---------------------------------------------------------------------------------- on a tiny model
@pytest.mark.slow
def test_benchmarks_at_the_scheduled_steps_and_identical_training_losses(tiny_overrides):
    """LoRA dropout draws from torch's RNG every step and lm-eval reseeds every RNG: the losses would differ if
    the benchmark left a trace. Steps 2 and 4 (every_steps=2) and the checkpoints at 3 and 6 (save_every=3; the
    last step counts as a checkpoint: its weights are saved, by fit() rather than by the Trainer)."""
    ov = [o for o in tiny_overrides if not o.startswith("train.max_steps")] + [
        "method=lora", "train.max_steps=6", "train.save_every=3"]
    status_a, plain = _train(ov + ["run_id=plain"])
    status_b, bench = _train(ov + ["run_id=bench", "eval.during_training.every_steps=2",
                                   "eval.during_training.at_checkpoints=true", *DURING])
    assert status_a == status_b == "completed"
    assert _bench_steps(bench) == [2, 3, 4, 6]
    assert _bench_steps(plain) == []
    rows = [r for r in read_metrics(bench) if f"{PREFIX}arc_easy.acc" in r]
    for r in rows:
        assert r[f"{PREFIX}arc_easy.n"] == 3 and 0 <= r[f"{PREFIX}arc_easy.acc"] <= 1 and r["bench_time_s"] > 0
    assert _losses(bench) == _losses(plain) and len(_losses(plain)) == 6  # bit-identical, every logged step
    s = read_summary(bench)
    assert s["benchmark_time_s"] == pytest.approx(sum(r["bench_time_s"] for r in rows), rel=0.2)
    assert "benchmark_time_s" not in read_summary(plain)


@pytest.mark.slow
def test_a_resumed_run_records_no_benchmark_step_twice(tiny_overrides, monkeypatch):
    """Interrupted right after the benchmark row of step 6 was written (the tracker gets the row after
    metrics.jsonl), before checkpoint 6 (the benchmark runs before the Trainer saves): the resume from
    checkpoint 4 drops that row and measures step 6 again, once."""
    import harness.run.tracking as tracking

    real_start = tracking.start

    def interrupting_start(cfg, run_dir):
        tracker = real_start(cfg, run_dir)
        log = tracker.log

        def log_then_stop(row, step=None):
            log(row, step=step)
            if step == 6 and any(k.startswith(PREFIX) for k in row):
                raise KeyboardInterrupt  # the user's Ctrl-C, between the row and the checkpoint

        tracker.log = log_then_stop
        return tracker

    ov = [o for o in tiny_overrides if not o.startswith("train.max_steps")] + [
        "method=lora", "train.max_steps=8", "train.save_every=2", "run_id=again",
        "eval.during_training.every_steps=2", *DURING]
    monkeypatch.setattr(tracking, "start", interrupting_start)
    status, run_dir = _train(ov)
    assert status == "interrupted"
    assert _bench_steps(run_dir) == [2, 4, 6]  # written before the interruption; checkpoint-4 is the last one
    monkeypatch.setattr(tracking, "start", real_start)
    status, run_dir = _train(ov)
    assert status == "completed" and read_summary(run_dir)["resumed"] is True
    assert _bench_steps(run_dir) == [2, 4, 6, 8]
    assert [s for s, _, _ in _losses(run_dir)] == list(range(1, 9))


def test_a_row_written_after_the_last_checkpoint_is_cut_on_resume(tmp_path):
    """resume_point keeps the rows up to the checkpoint's step: a benchmark row of a later step goes."""
    from harness import atomic
    from harness.train.fit import resume_point

    ckpt = tmp_path / "checkpoints" / "checkpoint-4"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    (ckpt / "adapter_model.safetensors").write_bytes(b"\0" * 8)
    rows = [{"step": 2, "train_loss": 1.0}, bench_row(2, 0.1, {"piqa": {"acc": 0.5}}, 1.0),
            {"step": 4, "train_loss": 0.9}, bench_row(4, 0.2, {"piqa": {"acc": 0.6}}, 1.0),
            bench_row(6, 0.3, {"piqa": {"acc": 0.7}}, 1.0)]
    atomic.write_jsonl(tmp_path / "metrics.jsonl", rows)
    assert resume_point(tmp_path) == ckpt
    assert [r["step"] for r in read_metrics(tmp_path) if "bench/piqa.acc" in r] == [2, 4]


# ------------------------------------------------------------------------------------- the report
def test_report_curves_draw_the_benchmark_beside_the_loss():
    from harness.report.figures import benchmark_keys, loss_curves

    def run(offset):
        rows = [{"step": s, "train_loss": 3.0 - 0.1 * s + offset} for s in range(1, 9)]
        rows += [bench_row(s, 0.0, {"arc_easy": {"acc": 0.3 + 0.02 * s + offset, "acc_stderr": 0.05, "n": 50}}, 1.0)
                 for s in (2, 4, 6, 8)]
        return rows

    runs = {"lora": [run(0.0), run(0.01)], "full": [run(0.02)]}
    assert benchmark_keys(runs) == ["bench/arc_easy.acc"]
    fig = loss_curves(runs)
    svg = fig.svg.decode()
    assert "arc_easy.acc (during training)" in svg and "training loss" in svg
    assert "benchmarks during training" in fig.title
    plain = loss_curves({"lora": [[{"step": s, "train_loss": 1.0} for s in (1, 2)]]})
    assert "during training" not in plain.svg.decode() and "during training" not in plain.title


# ------------------------------------------------------------------------------- several devices
@pytest.mark.slow  # torchrun + 2 gloo ranks importing torch/transformers on 2 cores, plus lm-eval: 1-3 minutes
def test_over_two_processes_rank_0_benchmarks_and_the_other_waits(tiny_overrides):
    """train.devices=2: the run completes (the other rank waited at the barrier rather than in a gradient
    all-reduce), one benchmark row per scheduled step (rank 0's), the training steps all there."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    REPO = Path(__file__).resolve().parent.parent

    ov = [o for o in tiny_overrides if not o.startswith(("train.batch_size", "train.max_steps"))] + [
        "method=lora", "train.batch_size=2", "train.max_steps=4", "train.devices=2", "train.device=cpu", "run_id=two",
        "eval.during_training.every_steps=2", *DURING]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "harness", "train", *ov], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    out = Path([o.split("=", 1)[1] for o in ov if o.startswith("output_dir=")][0])
    run_dir = next(out.glob("*/two"))
    assert read_summary(run_dir)["status"] == "completed"
    assert _bench_steps(run_dir) == [2, 4]
    assert [s for s, _, _ in _losses(run_dir)] == [1, 2, 3, 4]


def test_the_display_says_it_is_evaluating_and_the_train_stage_comes_back():
    """While the benchmark runs the train stage's detail says so; lm-eval's bars (routed to the running stage as
    sub-steps) are undone afterwards, and the stage's rate start moves by the time spent (ETA = training only)."""
    from harness.run import progress
    from harness.train.benchmarks import _Showing

    notes: list[str] = []

    class Sink(progress.NullSink):
        def note(self, p, text):
            notes.append(text)

    clock = [100.0]
    p = progress.Progress(sink=Sink(), clock=lambda: clock[0])
    with progress.use(p):
        p.begin("train", total=10, unit="step")
        p.update(done=4)
        st = p.current
        first = st.first
        shown = _Showing(4, ["arc_easy", "piqa"], 50)
        assert st.detail == "evaluating arc_easy, piqa (50 items each) at step 4"
        p.sub("Running loglikelihood requests", 400)  # what lm-eval's tqdm does through the display
        p.update(done=120)
        shown.done(7.5)
        assert (st.total, st.done, st.unit, st.detail) == (10, 4, "step", "")
        assert st.first == (first[0] + 7.5, first[1])
        shown.note({"step": 4, "bench/arc_easy.acc": 0.5, "bench/arc_easy.acc_stderr": 0.1, "bench/arc_easy.n": 50,
                    "bench_time_s": 7.5})
    assert notes == ["train step 4: evaluating arc_easy, piqa (50 items each)", "train step 4: arc_easy.acc 0.5 (7.5 s)"]


@pytest.mark.slow  # the real 135M model, twice, plus two 10-item benchmarks: 2-5 minutes on 2 shared cores
def test_real_smollm2_losses_are_the_same_with_benchmarks_during_training(runs_dir):
    ov = ["model=smollm2-135m", "method=lora", "data=alpaca-demo", "tracker=none", "eval=none", "train.max_steps=4",
          "train.batch_size=2", "train.max_length=128", "train.log_every=1", "data.max_rows=40", f"output_dir={runs_dir}"]
    status_a, plain = _train(ov + ["run_id=plain"])
    status_b, bench = _train(ov + ["run_id=bench", "eval.during_training.every_steps=2",
                                   "eval.during_training.tasks=[arc_easy]", "eval.during_training.limit=10"])
    assert status_a == status_b == "completed"
    assert _bench_steps(bench) == [2, 4]
    assert _losses(bench) == _losses(plain) and len(_losses(plain)) == 4
    acc = [r[f"{PREFIX}arc_easy.acc"] for r in read_metrics(bench) if f"{PREFIX}arc_easy.acc" in r]
    assert all(0 <= a <= 1 for a in acc)
