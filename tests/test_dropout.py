"""LoRA dropout on CPUs from 15-bit random integers (harness/train/dropout.py): the dropout probability asked for
(to 1.5e-5), an unbiased output, reproducible from the seed, gradients through the same mask, and a LoRA run that
records the swap and saves peft's own modules.

    python -m pytest -q tests/test_dropout.py
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness import config
from harness.pipeline import train_run
from harness.run.record import read_summary
from harness.train import dropout


def test_threshold_and_effective_p_are_pure():
    assert dropout.threshold(0.0) == 0 and dropout.threshold(0.05) == 1638 and dropout.threshold(0.5) == 16384
    assert abs(dropout.effective_p(0.05) - 0.05) < 1.5e-5 and abs(dropout.effective_p(0.1) - 0.1) < 1.5e-5
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            dropout.threshold(bad)


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_it_drops_with_the_probability_asked_for_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    drop = dropout.fast_dropout(p).train()
    x = torch.ones(1000, 1001)  # odd size: the last 32-bit draw is cut in half
    y = drop(x)
    n = x.numel()
    dropped = float((y == 0).float().mean())
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(dropped - dropout.effective_p(p)) < 5 * sd  # a binomial share, not a biased one
    values = torch.unique(y).tolist()
    assert values[0] == 0.0 and values[1:] == [pytest.approx(1 / (1 - dropout.effective_p(p)))]
    assert abs(float(y.mean()) - 1.0) < 5 * sd / (1 - p)
    # neighbouring elements (the two halves of one draw) are independent: both dropped as often as p^2
    pairs = (y.flatten()[: n - 1 : 2] == 0) & (y.flatten()[1::2] == 0)
    assert abs(float(pairs.float().mean()) - p * p) < 5 * math.sqrt(p * p / (n // 2))


def test_seeded_eval_mode_and_gradients():
    drop = dropout.fast_dropout(0.2).train()
    x = torch.randn(64, 48, dtype=torch.bfloat16, requires_grad=True)
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    b = drop(x)
    assert torch.equal(a, b) and a.dtype == torch.bfloat16  # the run's seed decides the masks
    a.float().sum().backward()
    kept = a != 0
    assert torch.equal(x.grad != 0, kept)  # the gradient flows through the same mask, scaled like the output
    scale = 1 / (1 - dropout.effective_p(0.2))
    assert torch.allclose(x.grad[kept].float(), torch.full_like(x.grad[kept].float(), scale), rtol=1e-2)
    assert drop.eval()(x) is x and dropout.fast_dropout(0.0).train()(x) is x


def test_replace_and_restore_on_a_peft_model():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]))
    rec = dropout.replace_lora_dropout(model)
    assert rec["layers"] == 4 and rec["p"] == [0.05] and rec["effective_p"] == [dropout.effective_p(0.05)]
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert dropout.restore_lora_dropout(model) == 4
    assert sum(type(m) is torch.nn.Dropout for m in model.modules()) == 4
    none = get_peft_model(LlamaForCausalLM(base.config), LoraConfig(r=4, lora_dropout=0.0, target_modules=["q_proj"]))
    assert dropout.replace_lora_dropout(none)["layers"] == 0


def test_a_lora_run_records_the_swap_and_saves_peft_modules(tiny_overrides):
    ov = tiny_overrides + ["method=lora", "train.precision=fp32", "train.max_steps=2", "run_id=fastdrop"]
    status, run_dir = train_run(config.compose(ov), ov)
    assert status == "completed", read_summary(run_dir)
    rec = json.loads((run_dir / "manifest.json").read_text())["lora_dropout"]
    assert rec["layers"] > 0 and rec["p"] == [0.05]
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["lora_dropout"] == 0.05  # the saved adapter is peft's, with the dropout asked for
