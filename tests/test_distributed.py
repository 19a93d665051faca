"""One run over several processes (train.devices=N: harness/launch.py starts torchrun, harness/train/distributed.py
is what a rank does differently): the same training as one process, one run record written by rank 0, and what
cannot work refused before anything starts.

    python -m pytest -q tests/test_distributed.py

The equivalence test runs the real `harness train train.devices=2` (torchrun, 2 CPU processes on gloo) against
one process with the same global batch; it is the slow part (two Python processes importing torch and
transformers at once on a 2-core machine: about a minute, more under load).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import config
from harness.cli import main
from harness.config import ConfigError
from harness.launch import launch
from harness.pipeline import train_run
from harness.run.record import RecordError, read_eval, read_metrics, read_summary, write_manifest, write_summary

REPO = Path(__file__).resolve().parent.parent

# Few steps at a learning rate high enough that a wrong gradient (a missing or doubled all-reduce, another data
# order) moves the losses far more than the tolerance; no warm-up (its first step would not train); LoRA dropout
# off and fp32 (train.precision=auto is bf16 on some CPUs), so the two runs compute the same function.
SAME = ["method=lora", "method.dropout=0", "train.precision=fp32", "train.lr=1e-2", "train.warmup_ratio=0",
        "train.max_steps=4", "train.eval_every=2", "eval.name=val-only", "eval.after_train=true"]


def _ddp_env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                TOKENIZERS_PARALLELISM="false")


def _rows(run_dir: Path, key: str) -> list[dict]:
    return [r for r in read_metrics(run_dir) if key in r]


@pytest.mark.slow  # torchrun + 2 ranks importing torch/transformers on 2 cores: 60-110 s (load 1-6), one process 15 s
def test_two_gloo_processes_train_as_one_process_with_the_same_global_batch(tiny_overrides, runs_dir):
    """1 process x batch 4 vs 2 processes x batch 2: the Trainer's distributed sampler gives rank r the rows
    [4k + 2r, 4k + 2r + 2) of the same shuffled order, so every optimizer step sees the same 4 rows; our loss
    (summed over target tokens, divided by the targets of all ranks, x ranks against DDP's mean) gives the same
    gradient. What differs is float summation order (the gradient all-reduce, padding to 2 rows instead of 4):
    measured on an AVX2 CPU: equal losses, grad norms and validation losses within 8e-8 relative. The tolerance is
    1e-5 relative (room for other CPUs' kernels); a wrong reduction would be off by a factor (x0.5 in the logged
    loss), another data order by ~1e-3 from step 2."""
    base = [o for o in tiny_overrides if not o.startswith(("train.batch_size", "train.max_steps", "eval="))] + SAME
    one_cfg = config.compose([*base, "train.batch_size=4", "run_id=one"])
    status, one = train_run(one_cfg, [*base, "train.batch_size=4", "run_id=one"])
    assert status == "completed", read_summary(one)

    cmd = [sys.executable, "-m", "harness", "train", *base, "train.batch_size=2", "train.devices=2", "run_id=two"]
    r = subprocess.run(cmd, env=_ddp_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    two = one.parent / "two"
    s1, s2 = read_summary(one), read_summary(two)
    assert s2["status"] == "completed", s2
    assert r.stdout.count("completed: ") == 1, "one result line: the launcher's, not also rank 0's"

    # the same training, step by step
    l1, l2 = _rows(one, "train_loss"), _rows(two, "train_loss")
    assert [x["step"] for x in l2] == [1, 2, 3, 4], "rank 0 alone appends metrics.jsonl: no duplicate rows"
    assert [x["step"] for x in l1] == [1, 2, 3, 4]
    for a, b in zip(l1, l2):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5), (a, b)
        assert b["tokens_seen"] == a["tokens_seen"], "tokens are counted over all ranks"
    assert l1[-1]["train_loss"] < l1[0]["train_loss"] - 0.01, "the steps really train (the comparison means something)"
    v1, v2 = _rows(one, "val_loss"), _rows(two, "val_loss")
    assert [x["step"] for x in v2] == [2, 4]
    for a, b in zip(v1, v2):  # each rank scores half the rows, the sums are reduced: the one-process number
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
    assert s2["best_val_loss"] == pytest.approx(s1["best_val_loss"], rel=1e-5)
    assert s2["train_tokens"] == s1["train_tokens"] and s2["steps"] == s1["steps"] == 4

    # one run record, rank 0's, saying how it was trained
    assert (s1["world_size"], s1["global_batch_size"]) == (1, 4)
    assert (s2["world_size"], s2["global_batch_size"]) == (2, 4)
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["distributed"]["world_size"] == 2 and manifest["distributed"]["backend"] == "gloo"
    assert "distributed" not in json.loads((one / "manifest.json").read_text())
    assert yaml.safe_load((two / "config.yaml").read_text())["run_id"] == "two"
    assert list((two / "adapter").glob("*.safetensors"))
    assert not (two / "checkpoints").exists() and not (two / "error.log").exists()
    # evaluation after training ran once, on rank 0, over the whole validation split: the trainer's number
    ev = read_eval(two)["suites"]["val"]
    assert ev["metrics"]["loss"] == pytest.approx(s2["final_val_loss"], rel=1e-5)
    assert ev["n"] == read_eval(one)["suites"]["val"]["n"]


def test_only_rank_0_may_write_the_run_record(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(RecordError, match="rank 1 of a 2-process run"):
        write_summary(tmp_path, {"schema": 1, "status": "running"})
    with pytest.raises(RecordError, match="only rank 0 writes it"):
        write_manifest(tmp_path, {"schema": 1})
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv("RANK", "0")
    write_summary(tmp_path, {"schema": 1, "status": "running"})


def test_a_rank_that_dies_leaves_a_failed_record_with_its_error(tiny_overrides, monkeypatch):
    """torchrun stands in for a launch whose rank 1 crashed: the record rank 0 left "running" becomes "failed",
    with the rank's exception as the reason (torchrun prefixes a rank's lines with [rank1]:)."""
    cfg = config.compose([*tiny_overrides, "train.device=cpu", "train.devices=2", "run_id=crash"])
    run_dir = Path(cfg.output_dir) / config.default_run_name(cfg) / "crash"
    run_dir.mkdir(parents=True)
    write_summary(run_dir, {"schema": 1, "status": "running", "name": run_dir.parent.name, "run_id": "crash"})
    crash = ("import sys; print('[rank1]: Traceback (most recent call last):', file=sys.stderr); "
             "print('[rank1]: RuntimeError: boom in rank 1', file=sys.stderr); "
             "print('torch.distributed.elastic.multiprocessing.errors.ChildFailedError:', file=sys.stderr); "
             "sys.exit(1)")
    monkeypatch.setattr("harness.launch.torchrun_command", lambda *a: [sys.executable, "-c", crash])
    status, got = launch(cfg, [*tiny_overrides, "train.devices=2", "run_id=crash"])
    s = read_summary(run_dir)
    assert (status, got) == ("failed", run_dir) and s["status"] == "failed"
    assert "RuntimeError: boom in rank 1" in s["reason"] and "torchrun exit code 1" in s["reason"]
    assert s["finished_at"] and s["wall_time_s"] > 0


def test_the_launcher_gives_each_cpu_process_its_share_of_the_cores(tiny_overrides, monkeypatch):
    from harness import launch as launch_module

    cfg = config.compose([*tiny_overrides, "train.devices=2", "run_id=x"])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert launch_module._launch_env(cfg, "cpu")["OMP_NUM_THREADS"] == "4"
    cfg.train.num_threads = 3
    assert launch_module._launch_env(cfg, "cpu")["OMP_NUM_THREADS"] == "3"
    assert launch_module._launch_env(cfg, "cpu")[launch_module.distributed.RUN_ID_ENV] == "x"
    cmd = launch_module.torchrun_command(2, ["a=1"], True)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "harness", "train",
                       "a=1", "--force"]


def test_what_cannot_run_over_several_devices_is_refused_at_config_time(capsys):
    rc = main(["validate", "model=tiny-llama", "data=alpaca-tiny", "train.devices=0"])
    assert rc == 2 and "train.devices=0: must be >= 1" in capsys.readouterr().err
    with pytest.raises(ConfigError) as err:
        config.compose(["model=tiny-llama", "data=alpaca-tiny", "train.devices=2", "train.strategy=fsdp"])
    (msg,) = [e for e in err.value.errors if e.startswith("train.strategy=fsdp")]
    assert "on CPUs accelerate's FSDP does not run at all" in msg and "on GPUs it is not implemented" in msg
    assert "Use train.strategy=ddp" in msg


def test_preflight_counts_gpus_and_cores(monkeypatch):
    from harness.model import preflight

    cfg = config.compose(["model=tiny-llama", "data=alpaca-tiny", "train.device=cuda", "train.devices=4"])
    monkeypatch.setattr(preflight, "cuda_absent", lambda: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    errors = preflight.preflight(cfg)
    assert any("train.devices=4: one process per GPU, but this machine has 2 GPU(s)" in e for e in errors)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert not any("train.devices" in e for e in preflight.preflight(cfg))
    cpu = config.compose(["model=tiny-llama", "data=alpaca-tiny", "train.device=cpu", "train.devices=64"])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    errors = preflight.preflight(cpu)
    assert any("train.devices=64 CPU processes, but this process may use 2 core(s)" in e for e in errors)


def test_under_torchrun_the_process_count_must_be_train_devices(tiny_overrides, monkeypatch):
    from harness.train import distributed

    for k, v in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=r"train.devices=1, but torchrun started 2 processes .* Set train.devices=2"):
        distributed.start_rank(config.compose(tiny_overrides))


@pytest.mark.slow  # a sweep driver, its trial child (the launcher), torchrun and 2 ranks: 2-3 minutes on 2 cores
def test_a_sweep_trial_over_two_devices(tmp_path, monkeypatch):
    """The sweep's per-trial child (`python -m harness train ...`) becomes the launcher: the trial completes with
    rank 0's record, and its objective is read from it as for any trial."""
    from harness.sweep.worker import TRAIN_CMD_ENV
    from tests.sweep_fakes import BASE, harness, trials_of, write_spec

    monkeypatch.chdir(tmp_path)
    env = _ddp_env()
    env.pop(TRAIN_CMD_ENV, None)
    spec = write_spec(tmp_path / "s.yaml", grid={"train.devices": [2]},
                      base=[*BASE, "eval=none", "train.batch_size=2", "train.max_length=128", "train.device=cpu",
                            "train.log_every=1"])
    r = harness(["sweep", str(spec)], env, tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (t,) = trials_of(tmp_path)
    assert t.state.name == "COMPLETE", t.user_attrs.get("reason")
    run_dir = Path(t.user_attrs["run_dir"])
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["trial"] == t.number
    assert t.values == [pytest.approx(summary["best_val_loss"])]
    assert [x["step"] for x in _rows(run_dir, "train_loss")] == [1, 2]


def test_building_a_model_cache_entry_leaves_the_runs_rng_alone():
    """A cache miss (a tiny model's build, a GGUF conversion) ran with the run's seeded RNG and moved it, so the first
    run after a conversion drew another LoRA init than every later run with the same seed (found comparing one process
    with two: step 1 losses equal, grad norms 2.5e-3 apart)."""
    import time

    import torch

    from harness.config import ModelConfig, TinySpec
    from harness.model.load import local_dir

    cfg = ModelConfig(name="rng-probe", source="tiny", context_length=64,
                      tiny=TinySpec(hidden_size=16, intermediate_size=32, seed=time.time_ns() % 10**9))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    local_dir(cfg)  # a miss: builds, saves, publishes
    assert torch.equal(torch.rand(3), expected)


def test_an_incomplete_model_build_is_not_published(tmp_path):
    """In a process group, save_pretrained writes weights on rank 0 only: a build on another rank must not become the
    cache entry every later run would find."""
    from harness.model.load import ModelError, _publish

    def tokenizer_only(tmp):
        (tmp / "tokenizer.json").write_text("{}")

    with pytest.raises(ModelError, match="left no config.json"):
        _publish(tokenizer_only, tmp_path / "m")
    assert not (tmp_path / "m").exists() and [p.name for p in tmp_path.iterdir()] == [".m.lock"]  # temp dir removed


def test_the_benchmark_compares_step_by_step():
    from benchmarks.distributed import compare, overrides

    one = [{"step": 1, "train_loss": 2.0, "grad_norm": 1.0}, {"step": 2, "train_loss": 1.0, "grad_norm": 0.5}]
    two = [{"step": 1, "train_loss": 2.0, "grad_norm": 1.0}, {"step": 2, "train_loss": 1.001, "grad_norm": 0.5}]
    got = compare(one, two)
    assert got["train_loss_max_rel_diff"] == pytest.approx(1e-3) and got["grad_norm_max_rel_diff"] == 0.0
    assert got["train_loss_steps_compared"] == 2
    ov = overrides("tiny-llama", "alpaca-demo", 5, 128, 2, 2, Path("/tmp/x"), "r")
    assert "train.devices=2" in ov and "train.batch_size=2" in ov and "method.dropout=0" in ov
    config.compose([o for o in ov if not o.startswith("output_dir")])  # every override is a valid key
