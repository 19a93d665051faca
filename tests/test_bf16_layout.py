"""When bf16 training on CPU routes Linear layers through the tn matmul layout (harness/train/bf16cpu.py): only
where a one-time measurement says it is faster. The decision (pure), the override, the per-machine cache, and
the record a run keeps of it (manifest.json `bf16_layout`).

    python -m pytest -q tests/test_bf16_layout.py
"""

from __future__ import annotations

import json

import pytest

from harness import config
from harness.pipeline import train_run
from harness.run import environment
from harness.run.record import read_summary
from harness.train import bf16cpu


# ------------------------------------------------------------------------------------- pure
def test_decide_applies_only_when_measurably_faster():
    assert bf16cpu.decide(0.50, 0.10)[0] is True  # 5x faster (an emulating AVX2 CPU)
    assert bf16cpu.decide(0.10, 0.12)[0] is False  # slower (native bf16: the stock kernels win)
    assert bf16cpu.decide(0.100, 0.098)[0] is False  # 2% is noise, below MIN_SPEEDUP
    assert bf16cpu.decide(0.106, 0.100, min_speedup=1.05)[0] is True
    apply, reason = bf16cpu.decide(0.3, 0.1)
    assert "3.00x" in reason and "applied" in reason
    with pytest.raises(ValueError, match="positive"):
        bf16cpu.decide(0.0, 0.1)


def test_cpu_kind_from_flags():
    assert environment.cpu_kind(["avx", "avx2", "fma"]) == "AVX2 only (bf16 emulated)"
    assert environment.cpu_kind(["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]) == "AMX (native bf16)"
    assert environment.cpu_kind(["avx2", "avx512f", "avx512_bf16"]) == "AVX512-BF16 (native bf16)"
    assert environment.cpu_kind(["avx2", "avx512f"]) == "AVX512 without BF16 (bf16 emulated)"
    ident = environment.cpu_identity()
    assert ident["native_bf16"] == any(f in ident["flags"] for f in ("avx512_bf16", "amx_bf16"))
    assert ident["model_id"] == environment.cpu_model_id()


X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu avx2 avx512_bf16

processor\t: 1
cpu family\t: 26
model\t\t: 2
stepping\t: 0
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd0c
"""


def test_cpu_model_id_tells_machines_with_the_same_name_and_flags_apart():
    assert environment.cpu_model_id(X86_CPUINFO) == "family 25 model 17 stepping 1"  # the first processor's
    assert environment.cpu_model_id(ARM_CPUINFO) == "implementer 0x41 part 0xd0c variant 0x1"
    assert environment.cpu_model_id("processor\t: 0\nmodel name\t: something\n") is None
    assert environment.cpu_model_id("") is None
    assert environment.cpu_label("AMD EPYC", "family 25 model 17 stepping 1") == "AMD EPYC (family 25 model 17 stepping 1)"
    assert environment.cpu_label("AMD EPYC", None) == "AMD EPYC" and environment.cpu_label(None, "family 25") is None


def test_machine_key_changes_with_what_changes_the_timing():
    cpu = {"cpu": "AMD EPYC", "flags": ["avx2", "fma"]}
    base = bf16cpu.machine_key(cpu, "2.13.0", 1, (64, 576, 1536), False)
    assert base == bf16cpu.machine_key({"cpu": "AMD EPYC", "flags": ["fma", "avx2"]}, "2.13.0", 1, (64, 576, 1536), False)
    others = [bf16cpu.machine_key({**cpu, "flags": ["avx2", "fma", "amx_bf16"]}, "2.13.0", 1, (64, 576, 1536), False),
              bf16cpu.machine_key({**cpu, "cpu": "Intel Xeon"}, "2.13.0", 1, (64, 576, 1536), False),
              bf16cpu.machine_key({**cpu, "model_id": "family 26 model 2 stepping 0"}, "2.13.0", 1, (64, 576, 1536), False),
              bf16cpu.machine_key(cpu, "2.14.0", 1, (64, 576, 1536), False),
              bf16cpu.machine_key(cpu, "2.13.0", 2, (64, 576, 1536), False),
              bf16cpu.machine_key(cpu, "2.13.0", 1, (64, 576, 1024), False),
              bf16cpu.machine_key(cpu, "2.13.0", 1, (64, 576, 1536), True)]
    assert base not in others and len(set(others)) == len(others)


def test_override_is_checked(monkeypatch):
    monkeypatch.setenv(bf16cpu.OVERRIDE_ENV, "TN")
    assert bf16cpu.override() == "tn"
    monkeypatch.setenv(bf16cpu.OVERRIDE_ENV, "fast")
    with pytest.raises(ValueError, match="auto, tn, stock"):
        bf16cpu.override()


# ------------------------------------------------------------------------------ measurement and cache
def test_choose_measures_once_then_reads_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.delenv(bf16cpu.OVERRIDE_ENV, raising=False)
    first = bf16cpu.choose(tokens=32, in_features=16, out_features=48, weight_grad=False)
    assert first.source == "measured" and first.stock_s > 0 and first.patched_s > 0
    assert first.apply == bf16cpu.decide(first.stock_s, first.patched_s)[0]
    stored = json.loads((tmp_path / "bf16cpu" / f"{first.machine_key}.json").read_text())
    assert stored["stock_s"] == first.stock_s and stored["shape"] == [32, 16, 48]

    # a second run reads the stored timings instead of measuring: make them say the opposite to see it
    stored.update(stock_s=0.01, patched_s=0.5)
    (tmp_path / "bf16cpu" / f"{first.machine_key}.json").write_text(json.dumps(stored))
    second = bf16cpu.choose(tokens=32, in_features=16, out_features=48, weight_grad=False)
    assert second.source == "cache" and second.apply is False and second.stock_s == 0.01
    stored.update(stock_s=0.5, patched_s=0.01)
    (tmp_path / "bf16cpu" / f"{first.machine_key}.json").write_text(json.dumps(stored))
    assert bf16cpu.choose(tokens=32, in_features=16, out_features=48, weight_grad=False).apply is True

    # the run's batch x max_length is capped for the measurement, so any larger batch shares the entry
    assert bf16cpu.choose(tokens=4096, in_features=16, out_features=48, weight_grad=False).shape[0] == bf16cpu.MAX_TOKENS
    # a broken cache file is measured again, not trusted
    (tmp_path / "bf16cpu" / f"{first.machine_key}.json").write_text("{not json")
    assert bf16cpu.choose(tokens=32, in_features=16, out_features=48, weight_grad=False).source == "measured"


def test_override_skips_the_measurement(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    for value, applied in (("tn", True), ("stock", False)):
        monkeypatch.setenv(bf16cpu.OVERRIDE_ENV, value)
        d = bf16cpu.choose(tokens=32, in_features=16, out_features=48, weight_grad=True)
        assert d.source == "forced" and d.apply is applied and d.stock_s is None
    assert not (tmp_path / "bf16cpu").exists()


def test_the_measurement_leaves_torchs_rng_where_it_was():
    """A run that measures the layout must train as one that reads the cache: the measurement's nn.Linear init
    once drew from torch's global RNG, so a LoRA run's adapters started elsewhere the first time on a machine."""
    import torch

    torch.manual_seed(123)
    before = torch.get_rng_state()
    bf16cpu.measure(8, 16, 32, weight_grad=False, reps=1)
    assert torch.equal(torch.get_rng_state(), before)


# ---------------------------------------------------------------------------------- the run record
@pytest.mark.parametrize("forced,layers", [("tn", True), ("stock", False)])
def test_trainer_records_the_decision(tiny_overrides, monkeypatch, forced, layers):
    monkeypatch.setenv(bf16cpu.OVERRIDE_ENV, forced)
    ov = tiny_overrides + ["method=lora", "train.precision=bf16", "train.max_steps=2", f"run_id=bf16{forced}"]
    status, run_dir = train_run(config.compose(ov), ov)
    assert status == "completed", read_summary(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rec = manifest["bf16_layout"]
    assert manifest["precision"] == "bf16" and rec["source"] == "forced" and rec["apply"] is layers
    assert rec["weight_grad"] is False  # LoRA: the base weight is frozen, as measured
    assert (manifest["bf16_fast_backward_layers"] > 0) is layers


@pytest.mark.slow
def test_trainer_records_a_measured_decision(tiny_overrides, monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(bf16cpu.OVERRIDE_ENV, raising=False)
    ov = tiny_overrides + ["method=full", "train.precision=bf16", "train.max_steps=1", "run_id=bf16auto"]
    status, run_dir = train_run(config.compose(ov), ov)
    assert status == "completed", read_summary(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rec = manifest["bf16_layout"]
    assert rec["source"] == "measured" and rec["stock_s"] > 0 and rec["patched_s"] > 0 and rec["weight_grad"] is True
    assert rec["speedup"] == pytest.approx(rec["stock_s"] / rec["patched_s"])
    assert rec["apply"] == bf16cpu.decide(rec["stock_s"], rec["patched_s"])[0]
    assert (manifest["bf16_fast_backward_layers"] > 0) == rec["apply"]
    assert rec["native_bf16"] == environment.cpu_identity()["native_bf16"]


@pytest.mark.slow
def test_fp32_runs_carry_no_layout_record(tiny_overrides):
    ov = tiny_overrides + ["method=lora", "train.precision=fp32", "train.max_steps=1", "run_id=fp32"]
    status, run_dir = train_run(config.compose(ov), ov)
    assert status == "completed"
    assert "bf16_layout" not in json.loads((run_dir / "manifest.json").read_text())
