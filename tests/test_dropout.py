"""LoRA dropout on CPUs from 15-bit random integers (harness/train/dropout.py): the dropout probability asked for
(to 1.5e-5), an unbiased output, reproducible from the seed, gradients through the same mask, a bf16 input dropped
to the very numbers of the fp32 path, LoRA layers that keep bf16 inputs under autocast with bit-identical gradients,
and a LoRA run that records the swap and saves peft's own modules.

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


def test_a_bf16_input_is_dropped_to_the_numbers_of_the_fp32_path():
    """fp32 dropout and then autocast's cast to bf16 (peft's order) == FastDropout on the bf16 input, forward and
    backward, for every element (the scale is applied in fp32 and rounded once, not rounded to bf16 first)."""
    drop = dropout.fast_dropout(0.05).train()
    x = torch.randn(256, 1536).to(torch.bfloat16)
    g = torch.randn(256, 1536).to(torch.bfloat16)
    a = x.float().requires_grad_()
    torch.manual_seed(7)
    ya = drop(a).to(torch.bfloat16)
    ya.backward(g)
    b = x.clone().requires_grad_()
    torch.manual_seed(7)
    yb = drop(b)
    yb.backward(g)
    assert yb.dtype == torch.bfloat16 and torch.equal(ya, yb)
    assert torch.equal(a.grad.to(torch.bfloat16), b.grad)
    assert float((yb == 0).float().mean()) > 0.03  # something was dropped, and
    assert not torch.equal(yb, (x * (yb != 0)).mul(torch.tensor(drop.scale, dtype=torch.bfloat16)))  # bf16 scale differs


def _lora_model(seed: int = 0, **lora):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                     **lora)
    model = get_peft_model(base, cfg)
    for name, p in model.named_parameters():  # B starts at zero: make the adapters do something
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model.train()


def _grads(model, ids) -> tuple[float, list]:
    torch.manual_seed(11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_lora_layers_keep_bf16_inputs_under_autocast_with_the_same_gradients():
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(0))
    kept, own = _lora_model(), _lora_model()
    rec = dropout.replace_lora_dropout(kept)
    assert rec["inputs_kept_in_autocast_dtype"] == 8 and rec["layers"] == 8
    dropout.replace_lora_dropout(own)
    seen = []
    for m in dropout.restore_input_casts(own):  # the control: peft's own input casts, and what arrives in bf16
        m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
    loss_kept, g_kept = _grads(kept, ids)
    loss_own, g_own = _grads(own, ids)
    assert torch.bfloat16 in seen and torch.float32 in seen  # o_proj / down_proj inputs arrive in bf16
    assert loss_kept == loss_own and all(torch.equal(a, b) for a, b in zip(g_kept, g_own))
    # outside autocast the layer casts as peft does: a bf16 input meets the fp32 adapter in fp32
    layer = next(m for m in kept.modules() if hasattr(m, dropout._OWN_CAST))
    assert layer._cast_input_dtype(torch.ones(2, dtype=torch.bfloat16), torch.float32).dtype == torch.float32
    assert dropout.restore_lora_dropout(kept) == 8
    assert not any(hasattr(m, dropout._OWN_CAST) or "_cast_input_dtype" in vars(m) for m in kept.modules())


def test_layers_with_a_variant_or_another_dropout_keep_peft_casts():
    dora = _lora_model(use_dora=True)
    assert dropout.replace_lora_dropout(dora)["inputs_kept_in_autocast_dtype"] == 0
    plain = _lora_model()
    for m in plain.modules():
        drops = getattr(m, "lora_dropout", None)
        if isinstance(drops, torch.nn.ModuleDict):
            drops["default"] = torch.nn.AlphaDropout(0.1)  # not ours: its numbers in bf16 would differ
    assert dropout.replace_lora_dropout(plain)["inputs_kept_in_autocast_dtype"] == 0


def test_a_lora_run_records_the_swap_and_saves_peft_modules(tiny_overrides):
    ov = tiny_overrides + ["method=lora", "train.precision=fp32", "train.max_steps=2", "run_id=fastdrop"]
    status, run_dir = train_run(config.compose(ov), ov)
    assert status == "completed", read_summary(run_dir)
    rec = json.loads((run_dir / "manifest.json").read_text())["lora_dropout"]
    assert rec["layers"] > 0 and rec["p"] == [0.05]
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["lora_dropout"] == 0.05  # the saved adapter is peft's, with the dropout asked for
