"""Progress a person can follow (harness/run/progress.py, run/display.py, train/progress.py, sweep/progress.py,
harness/quiet.py): plain lines with numbers as numbers and no Trainer dicts, the live display renders, the ETA
covers evaluation and learns as it goes, sweep counts and running trials, `harness status` shows a running trial,
and a default tiny train prints none of the library warnings we silenced.

    python -m pytest tests/test_progress.py -q
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from harness import quiet
from harness.run import progress
from harness.run.display import open_display, render_run
from harness.run.progress import PlainSink, Progress, describe, fmt_duration, fmt_number, read_progress
from harness.sweep.progress import SweepProgress
from tests.sweep_fakes import fake_env, harness, write_spec  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parent.parent
SILENCED = ("`is_gradient_checkpointing` is deprecated", "`gradient_checkpointing` is deprecated",
            "Failed to load CPU gemm_4bit_forward", "pip install kernels")
DICT_PRINT = re.compile(r"\{'[a-z_]+': ")  # transformers' PrinterCallback: {'train_runtime': '2.626', ...}


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


# ------------------------------------------------------------------------------------------ pure
def test_numbers_and_durations_print_as_numbers():
    assert [fmt_number(v) for v in (1.23456, 2010.4, 447.8, 3, 0.0002, 5.0)] == ["1.235", "2010", "447.8", "3", "0.0002", "5"]
    assert [fmt_duration(s) for s in (None, 0, 45.4, 192, 3900)] == ["?", "0s", "45s", "3m12s", "1h05m"]


def test_eta_covers_evaluation_and_is_refined_by_what_ran():
    clock = Clock()
    p = Progress(clock=clock)
    p.plan([("load", "", None, None), ("train", "step", 10, None), ("eval val", "", None, 3000.0),
            ("eval wikitext2", "", None, 6000.0)])
    p.begin("load")
    assert p.eta() == (None, False)  # nothing to go on yet
    clock.t += 5
    p.begin("train", total=10, unit="step")
    p.update(done=1, tokens_per_s=1000.0)
    clock.t += 4
    p.update(done=5, tokens_per_s=1000.0)  # 1 s a step: 5 s of training left
    # evaluation from its cost at 3x the training tokens/s: (3000 + 6000) / 3000 = 3 s
    seconds, complete = p.eta()
    assert complete and seconds == pytest.approx(5 + 3)
    clock.t += 5
    p.update(done=10)
    p.end()
    p.begin("eval val")
    clock.t += 6  # the first suite took 6 s for 3000 cost tokens, 4x the guess: the next one is re-estimated
    p.end("eval val")
    assert p.remaining(p.stages[-1]) == pytest.approx(12.0)
    p.begin("eval wikitext2")
    p.sub("wikitext2", total=1000, unit="tok")
    p.update(done=100)
    clock.t += 1
    p.update(done=400)  # its own rate now: 300 tokens a second, 600 left
    assert p.eta()[0] == pytest.approx(2.0)


def test_plain_lines_are_rate_limited_but_every_stage_change_prints():
    clock, out = Clock(0.0), io.StringIO()
    p = Progress(PlainSink(out, interval=10, clock=clock), clock=clock)
    p.begin("train", total=100, unit="step")
    for step in range(1, 31):
        clock.t += 1
        p.update(done=step, loss=2.0 - step / 100, tokens_per_s=2010.0, log=step % 5 == 0)
    p.end()
    p.begin("eval val")
    p.end()
    lines = out.getvalue().splitlines()
    steps = [ln for ln in lines if " step " in ln and " done " not in ln]
    assert [ln.split()[3] for ln in steps] == ["10/100", "20/100", "30/100"]  # log points, at most one per 10 s
    assert lines[0].startswith("[harness] train start 100 steps eta")
    assert any(ln.startswith("[harness] train done step 30/100") for ln in lines)
    assert lines[-2].startswith("[harness] eval val start") and lines[-1].startswith("[harness] eval val done")
    m = re.match(r"\[harness\] train step (\d+)/(\d+) loss (\S+) tokens/s (\S+) eta (\S+)$", steps[0])
    assert m and int(m[1]) == 10 and float(m[3]) == pytest.approx(1.9) and float(m[4]) == 2010


def test_live_display_renders_to_a_terminal():
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system=None)
    with open_display("train", mode="rich", console=console, title="tiny-llama-lora/run1") as p:
        assert progress.active() and progress.current() is p
        p.plan([("load", "", None, None), ("train", "step", 10, None), ("eval val", "", None, 5000.0)])
        p.begin("load")
        shown = progress.bar(range(3), desc="Loading weights")  # a library's bar: a sub-step of the stage
        assert list(shown) == [0, 1, 2]
        p.begin("train", total=10, unit="step")
        for step in range(1, 6):
            p.update(done=step, loss=1.5, tokens_per_s=2000.0)
        p.note("a line above the display")
        console.print(render_run(p, 120))
        for width in (60, 80):  # narrow terminals render too
            Console(file=io.StringIO(), force_terminal=True, width=width).print(render_run(p, width))
    assert not progress.active()
    text = buf.getvalue()
    for needle in ("harness train", "eta", "load", "step 5/10", "loss 1.5", "tokens/s 2000", "eval val",
                   "[harness] a line above the display"):
        assert needle in text, needle


def test_a_bar_inside_a_stage_gives_the_stage_back_its_total_when_it_closes():
    """A validation pass's bar inside `train` once left the stage at "step 12/1" for the rest of training."""
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100, color_system=None)
    with open_display("train", mode="rich", console=console) as p:
        p.begin("train", total=20, unit="step")
        p.update(done=12, loss=1.5)
        assert list(progress.bar(range(1), desc="val")) == [0]  # exhausted: closes itself, as tqdm
        st = p.current
        assert (st.total, st.done, st.unit, st.detail) == (20, 12, "step", "")
        with progress.bar(total=4, desc="eval", unit="tok") as b:
            b.update(2)
            assert (p.current.total, p.current.done) == (4, 2)
        assert (p.current.total, p.current.done, p.current.unit) == (20, 12, "step")
        p.update(done=13)
        console.print(render_run(p, 100))
    assert "step 13/20" in buf.getvalue()


def test_bar_is_tqdm_without_a_display():
    from tqdm import tqdm

    assert not progress.active()
    assert isinstance(progress.bar(total=3, disable=True), tqdm)


def test_progress_file_and_its_description(tmp_path):
    clock = Clock(1000.0)
    p = Progress(command="train", clock=clock)
    p.attach(tmp_path)
    p.begin("train", total=100, unit="step")
    p.update(done=10, loss=2.5)
    clock.t += 10
    p.update(done=20, loss=1.234, tokens_per_s=2010.0)
    p.save()
    snap = read_progress(tmp_path)
    assert (snap["stage"], snap["done"], snap["total"], snap["info"]["loss"]) == ("train", 20, 100, 1.234)
    assert snap["eta_s"] == pytest.approx(80.0)
    assert describe(snap, now=1010.0) == "train step 20/100 loss 1.234 tokens/s 2010 eta 1m20s"
    assert describe(snap, now=1070.0).endswith("eta 20s (updated 1m00s ago)")  # counts down, says it is old
    p.close()
    assert read_progress(tmp_path)["finished"] is True
    assert read_progress(tmp_path / "nowhere") is None


# ------------------------------------------------------------------------------------------ sweep
def test_sweep_counts_and_running_trials(tmp_path):
    run_dir = tmp_path / "runs" / "t" / "r2"
    p = Progress(command="train")
    p.attach(run_dir)
    p.begin("train", total=100, unit="step")
    p.update(done=20, loss=2.25)
    p.save()
    err = io.StringIO()
    sw = SweepProgress("t", total=6, counts={"COMPLETE": 1, "FAIL": 1}, mode="plain", stream=err, interval=0)
    try:
        start = {"event": "start", "params": {"method": "lora"}, "seed": 0}
        for n in (2, 3, 4):
            sw({**start, "trial": n, "run_dir": str(run_dir if n == 2 else tmp_path / f"r{n}")})
        for n, state in ((3, "PRUNED"), (4, "FAIL")):
            sw({"event": "finish", "trial": n, "params": {"method": "lora"}, "seed": 0, "state": state,
                "wall_time_s": 2.0, "values": {}, "reason": "why"})
        assert (sw.complete, sw.pruned, sw.failed, sorted(sw.running)) == (1, 1, 2, [2])
        assert sw.counts_line().startswith("sweep t: 2/6 done (1 complete, 1 pruned), 2 failed, 1 running, eta ")
        assert sw.trial_status(2).startswith("train step 20/100 loss 2.25 eta")
        sw.plain_tick()
    finally:
        sw.close()
    lines = err.getvalue().splitlines()
    assert any("[harness] sweep t trial 2 (method=lora seed=0): train step 20/100 loss 2.25" in ln for ln in lines)
    assert any(ln.startswith("[harness] sweep t: ") and "1 pruned" in ln for ln in lines)

    from rich.console import Console

    buf = io.StringIO()
    live = SweepProgress("t", total=6, counts={}, mode="rich",
                         console=Console(file=buf, force_terminal=True, width=120, color_system=None))
    live({"event": "start", "trial": 2, "params": {"method": "lora"}, "seed": 0, "run_dir": str(run_dir)})
    live.close()
    assert "sweep t" in buf.getvalue() and "trial 2" in buf.getvalue() and "step 20/100" in buf.getvalue()


@pytest.mark.slow
def test_sweep_driver_shows_each_running_trial(tmp_path, fake_env):
    spec = write_spec(tmp_path / "s.yaml", grid={"notes": ["progress:3", "ok"]})
    env = dict(fake_env, HARNESS_PROGRESS_INTERVAL="0")
    r = harness(["sweep", str(spec)], env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" start ") == r.stdout.count(" COMPLETE ") == 2  # the study's lines, as before
    assert re.search(r"\[harness\] sweep t trial 0 \(notes=progress:3 seed=0\): train step 20/100 loss 2\.25", r.stderr), r.stderr
    assert "[harness] sweep t: 2/2 done (2 complete, 0 pruned), 0 failed, 0 running" in r.stderr


def test_status_shows_a_running_trials_step_and_eta(tmp_path, monkeypatch, capsys):
    import optuna

    from harness.commands.status import run
    from harness.sweep.storage import default_storage_url, open_storage

    monkeypatch.chdir(tmp_path)
    url = default_storage_url("s", tmp_path / "studies")
    (tmp_path / "studies").mkdir()
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    trial = study.ask()
    run_dir = tmp_path / "runs" / "s" / "r0"
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("params", {"method": "lora"})
    trial.set_user_attr("seed", 0)
    p = Progress(command="train")
    p.attach(run_dir)
    p.begin("train", total=100, unit="step")
    p.update(done=20, loss=1.234, tokens_per_s=2010.0)
    p.save()
    args = argparse.Namespace(study="s", storage=url, verbose=False, json=False, root=None)
    assert run(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"RUNNING .*\n\s+progress: train step 20/100 loss 1\.234 tokens/s 2010 eta \S+", out), out
    assert run(argparse.Namespace(**{**vars(args), "json": True})) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["progress"]["done"] == 20 and row["progress"]["total"] == 100


# ------------------------------------------------------------------------------------------ warnings
def test_the_silenced_warnings_are_exactly_those():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.install()
        model.is_gradient_checkpointing  # noqa: B018 - what peft reads
        warnings.warn("`something_else` is deprecated", FutureWarning)
    assert [str(w.message) for w in caught] == ["`something_else` is deprecated"]

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(quiet.KERNELS_LOGGER)
    logger.addHandler(handler)
    try:
        for quantizes in (False, True):
            quiet.for_method(quantizes)
            logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
                           "already `pip install kernels`", "No module named 'kernels'")
        logger.warning("another bitsandbytes warning")
    finally:
        logger.removeHandler(handler)
        quiet.for_method(False)
    assert [r.getMessage()[:22] for r in records] == ["Failed to load CPU gem", "another bitsandbytes w"]


# ------------------------------------------------------------------------------------------ a real run
@pytest.fixture(scope="module")
def tiny_train(tmp_path_factory):
    """`python -W default -m harness train` on the tiny model, stderr a pipe (plain mode), default tracker (W&B
    offline) and method lora as a user would run it, plus a val suite and a log line every step."""
    out_dir = tmp_path_factory.mktemp("runs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_PROGRESS", "WANDB_SILENT"))}
    env.update(PYTHONPATH=str(REPO), HARNESS_PROGRESS_INTERVAL="0")
    cmd = [sys.executable, "-W", "default", "-m", "harness", "train", "model=tiny-llama", "data=alpaca-tiny",
           "method=lora", "train.max_steps=3", "train.log_every=1", "train.eval_every=2", "train.batch_size=4",
           "train.max_length=128", "eval=quick", "eval.lm_eval.tasks=[]", "eval.perplexity=[]", f"output_dir={out_dir}"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=out_dir)
    return r, out_dir


@pytest.mark.slow
def test_plain_output_of_a_tiny_train(tiny_train):
    r, out_dir = tiny_train
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    both = r.stdout + r.stderr
    assert not DICT_PRINT.search(both), "transformers' log dicts are not printed"
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("[harness] ")]
    steps = [re.match(r"\[harness\] train step (\d+)/(\d+) loss (\S+)(?: val_loss \S+)? tokens/s (\S+) eta (\S+)$", ln)
             for ln in lines if ln.startswith("[harness] train step ")]
    assert [int(m[1]) for m in steps] == [1, 2, 3] and all(int(m[2]) == 3 for m in steps)
    for m in steps:  # numbers as numbers
        assert float(m[3]) > 0 and float(m[4]) > 0
    order = [ln.split()[1] + " " + ln.split()[2] for ln in lines]
    for a, b in (("load start", "train start"), ("train start", "train done"), ("train done", "eval val")):
        assert order.index(a) < next(i for i, x in enumerate(order) if x.startswith(b)), (a, b, order)
    done = next(ln for ln in lines if ln.startswith("[harness] train done "))
    assert re.search(r"step 3/3 loss \d\.\d+ loss_mean \d\.\d+ val_loss \d\.\d+ tokens/s [\d.]+ time \S+$", done), done
    assert re.search(r"\[harness\] train eval step 2 val_loss \d\.\d+$", r.stderr, re.M)
    assert any(ln.startswith("[harness] eval val done ") for ln in lines)
    snap = read_progress(next(out_dir.glob("*/*/summary.json")).parent)
    assert snap["finished"] and [s["state"] for s in snap["stages"]] == ["done"] * 3


@pytest.mark.slow
def test_a_default_tiny_train_prints_none_of_the_silenced_warnings(tiny_train):
    r, _ = tiny_train
    assert r.returncode == 0, r.stderr[-3000:]
    both = r.stdout + r.stderr
    assert [w for w in SILENCED if w in both] == []
    assert "Loading weights:" not in both  # transformers' tqdm bar: it goes through the display
    assert "wandb:" not in both  # W&B's banner (the default tracker, offline)
