"""Frozen Linear weights cast once per run under autocast (harness/train/frozen_cast.py): the same numbers as
autocast's own per-forward cast, the copy kept and remade only when the weight changes, nothing kept outside
autocast or for trainable weights, and a bf16 LoRA run that trains to the same losses with it as without.

    python -m pytest -q tests/test_frozen_cast.py
"""

from __future__ import annotations

import json

import pytest
import torch

from harness import config
from harness.pipeline import train_run
from harness.run.record import read_metrics, read_summary
from harness.train import bf16cpu, frozen_cast


def _net(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8, bias=False))
    net[0].weight.requires_grad_(False)
    net[0].bias.requires_grad_(False)
    return net


def _step(net, x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    y.float().pow(2).sum().backward()
    return y


def test_kept_casts_give_autocasts_numbers_and_gradients():
    stock, kept = _net(), _net()
    assert frozen_cast.keep_casts(kept) == 1  # the frozen layer only; net[2] trains
    x1, x2 = torch.randn(4, 16, requires_grad=True), torch.randn(4, 16, requires_grad=True)
    x2.data.copy_(x1.data)
    y1, y2 = _step(stock, x1), _step(kept, x2)
    assert y1.dtype == y2.dtype == torch.bfloat16 and torch.equal(y1, y2)
    assert torch.equal(stock[2].weight.grad, kept[2].weight.grad) and torch.equal(x1.grad, x2.grad)
    with torch.no_grad():  # outside autocast: the layer's own fp32 forward, no copy used
        assert torch.equal(stock(x1), kept(x2))


def test_the_copy_is_made_once_and_again_when_the_weight_changes():
    net = _net()
    frozen_cast.keep_casts(net)
    x = torch.randn(4, 16)
    _step(net, x)
    first = net[0]._harness_kept_cast[4]
    assert first.dtype == torch.bfloat16 and torch.equal(first, net[0].weight.to(torch.bfloat16))
    _step(net, x)
    assert net[0]._harness_kept_cast[4] is first
    with torch.no_grad():
        net[0].weight.mul_(2)  # in place: the version counter moves
    _step(net, x)
    assert torch.equal(net[0]._harness_kept_cast[4], net[0].weight.to(torch.bfloat16))
    assert frozen_cast.kept_weight(net[2], torch.bfloat16) is net[2].weight  # trainable: autocast's own cache


def test_drop_casts_frees_the_copies_and_restores_the_forward():
    net = _net()
    frozen_cast.keep_casts(net)
    _step(net, torch.randn(2, 16))
    assert frozen_cast.drop_casts(net) == 1
    assert not hasattr(net[0], "_harness_kept_cast") and not hasattr(net[0], "_harness_uncast_forward")
    assert "forward" not in vars(net[0])


def test_under_the_tn_layout_patch_both_apply_and_the_drop_leaves_it_working():
    stock, both = _net(), _net()
    frozen_cast.keep_casts(both)
    bf16cpu.patch_linear_layers(both)
    bf16cpu.patch_linear_layers(stock)
    x = torch.randn(4, 16)
    assert torch.equal(_step(stock, x), _step(both, x))
    assert both[0]._harness_kept_cast[4].dtype == torch.bfloat16  # the tn path used the kept copy
    assert frozen_cast.drop_casts(both) == 0  # wrapped by the tn patch: its forward stays, the copy goes
    assert not hasattr(both[0], "_harness_kept_cast")
    assert torch.equal(_step(stock, x), _step(both, x))


def _losses(run_dir) -> list[tuple]:
    return [(r["train_loss"], r["grad_norm"]) for r in read_metrics(run_dir) if "train_loss" in r]


@pytest.mark.parametrize("layout", ["stock", "tn"])
def test_a_bf16_lora_run_trains_to_the_same_losses_with_kept_casts(tiny_overrides, monkeypatch, layout):
    monkeypatch.setenv(bf16cpu.OVERRIDE_ENV, layout)
    ov = tiny_overrides + ["method=lora", "train.precision=bf16", "train.max_steps=3"]
    status, kept_dir = train_run(config.compose(ov + [f"run_id=kept{layout}"]), ov)
    assert status == "completed", read_summary(kept_dir)
    manifest = json.loads((kept_dir / "manifest.json").read_text())
    assert manifest["frozen_casts_kept"] > 0
    monkeypatch.setattr(frozen_cast, "keep_casts", lambda model: 0)
    status, plain_dir = train_run(config.compose(ov + [f"run_id=uncast{layout}"]), ov)
    assert status == "completed", read_summary(plain_dir)
    assert len(_losses(kept_dir)) == 3 and _losses(kept_dir) == _losses(plain_dir)


def test_full_fine_tuning_keeps_no_casts(tiny_overrides):
    ov = tiny_overrides + ["method=full", "train.precision=bf16", "train.max_steps=1", "run_id=fullbf16"]
    status, run_dir = train_run(config.compose(ov), ov)
    assert status == "completed", read_summary(run_dir)
    assert json.loads((run_dir / "manifest.json").read_text())["frozen_casts_kept"] == 0
