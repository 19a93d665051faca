"""QLoRA models in exact mode evaluate in fp32 on every CPU kind (harness/eval/precision.py exact_4bit): on CPUs with
AVX512-BF16 bitsandbytes' fused inference kernel casts activations to bf16, so without the hold the same QLoRA run
scored different "fp32" numbers on AMX and on AVX2 machines; and a model built for bf16 training (its layers'
compute dtype bf16) multiplied in bf16, so a trial's own evaluation differed from a fresh load of the same run.

    python -m pytest -q tests/test_qlora_exact.py
"""

from __future__ import annotations

import pytest
import torch

from harness.eval import precision
from harness.eval.suites import run_suites
from harness.model.methods import held_4bit_layers, hold_4bit_training_layout
from harness.run.record import read_eval
from tests.test_evaluate import FAST_PPL, _cfg


def _qlora_model(cfg, compute_dtype=torch.float32):
    """compute_dtype: bnb_4bit_compute_dtype, bf16 as a bf16 training run builds it (harness/train/fit.py)."""
    from harness.model.load import load_model_and_tokenizer
    from harness.model.methods import build_quant_config

    return load_model_and_tokenizer(cfg.model, quantization_config=build_quant_config(cfg.method, compute_dtype))


def _dequantized_reference(model, ids):
    """The 4-bit model's definition: its weights dequantized, multiplied in fp32 (the training layout's path, which
    never repacks); computed in train mode on a copy before anything evaluated it."""
    import copy

    ref = copy.deepcopy(model).train()
    with torch.no_grad():
        return ref(input_ids=ids).logits


def test_exact_mode_scores_the_dequantized_fp32_model_and_gives_bitsandbytes_its_choice_back():
    import bitsandbytes as bnb

    cfg = _cfg("method=qlora")
    model, _ = _qlora_model(cfg)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    reference = _dequantized_reference(model, ids)
    model.eval()
    held = precision.exact_4bit(model, "exact")
    assert held is not None and held[1]["layers"] == len(held[0]) > 0 and "fp32" in held[1]["kernel"]
    with torch.no_grad():
        scored = model(input_ids=ids).logits
    assert torch.equal(scored, reference)  # not bitsandbytes' bf16 kernel (max |d| ~1.8 on SmolLM2 on AMX)
    precision.release_4bit(model, held)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert all(m.support_avx512bf16_for_cpu == bnb.functional.has_avx512bf16() for m in layers)
    assert precision.exact_4bit(model, "fast") is None  # fast mode: bitsandbytes' own kernel


def test_layers_held_by_training_stay_held():
    cfg = _cfg("method=qlora")
    model, _ = _qlora_model(cfg)
    n = hold_4bit_training_layout(model)  # what training does (a benchmark during training evaluates)
    held = precision.exact_4bit(model, "exact")
    assert held is not None and held[0] == [] and held[1]["layers"] == n
    precision.release_4bit(model, held)
    assert len(held_4bit_layers(model)) == n


def test_a_full_precision_model_is_left_alone():
    cfg = _cfg()
    from harness.model.load import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(cfg.model)
    assert precision.exact_4bit(model, "exact") is None


@pytest.mark.slow
def test_run_suites_records_the_kernel_of_a_qlora_model(tmp_path):
    cfg = _cfg("method=qlora", "eval=perplexity", FAST_PPL)
    model, tok = _qlora_model(cfg)
    suites = run_suites(model, tok, cfg, tmp_path, progress=False)
    entry = read_eval(tmp_path)["suites"]["wikitext2"]
    assert "wikitext2" in suites and entry["bnb_4bit"]["layers"] > 0 and "fp32" in entry["bnb_4bit"]["kernel"]
    assert held_4bit_layers(model) == []  # given back after the suites


def _compute_dtypes(model) -> set:
    import bitsandbytes as bnb

    return {m.compute_dtype for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)}


def test_a_model_built_for_bf16_training_is_scored_in_fp32_and_gets_its_compute_dtype_back():
    cfg = _cfg("method=qlora")
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    reference = _dequantized_reference(_qlora_model(cfg)[0], ids)  # compute dtype fp32: a fresh load of the run
    model, _ = _qlora_model(cfg, torch.bfloat16)
    assert _compute_dtypes(model) == {torch.bfloat16}
    with torch.no_grad():  # train mode: bitsandbytes does not repack (which would round the absmax)
        assert not torch.equal(model.train()(input_ids=ids).logits, reference)  # bf16 products: the case guarded
    model.eval()
    held = precision.exact_4bit(model, "exact")
    assert held.record["compute_dtype"] == "float32" and held.record["compute_dtype_was"]["dtype"] == "bfloat16"
    assert held.record["compute_dtype_was"]["layers"] == held.record["layers"] > 0
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference)
    precision.release_4bit(model, held)
    assert _compute_dtypes(model) == {torch.bfloat16}  # training's own setting back
    assert precision.exact_4bit(model, "fast") is None and _compute_dtypes(model) == {torch.bfloat16}


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_run_suites_of_a_bf16_built_model_match_a_fresh_fp32_load(tmp_path, monkeypatch, mode):
    """With LoRA adapters on top, as a trained QLoRA run has them (peft wraps each layer in a class of the same name).
    fast: on a CPU without native bf16, where fast mode runs fp32 and so must score what exact mode scores."""
    from peft import LoraConfig, get_peft_model

    from harness.model import device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    cfg = _cfg("method=qlora", "eval=perplexity", FAST_PPL)
    scored = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model, tok = _qlora_model(cfg, dtype)
        if name == "bf16":
            cfg = _cfg("method=qlora", "eval=perplexity", FAST_PPL, f"eval.mode={mode}")
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
        run_suites(model, tok, cfg, tmp_path / name, progress=False)
        scored[name] = read_eval(tmp_path / name)["suites"]["wikitext2"]
    assert scored["bf16"]["metrics"] == scored["fp32"]["metrics"]
    assert scored["bf16"]["bnb_4bit"]["compute_dtype_was"]["dtype"] == "bfloat16"


@pytest.mark.slow
def test_a_bf16_trained_qlora_runs_own_numbers_are_a_fresh_loads(tiny_overrides):
    """The whole path: the trial evaluates the model it trained (compute dtype bf16), `harness eval RUN_DIR` loads
    the saved run (compute dtype fp32); exact mode must give the same numbers, bit for bit."""
    from harness import config
    from harness.pipeline import evaluate_run_dir, train_run

    ov = [o for o in tiny_overrides if not o.startswith("eval=")] + [
        "method=qlora", "train.precision=bf16", "train.max_steps=2", "eval=perplexity", FAST_PPL, "run_id=bf16qlora"]
    status, run_dir = train_run(config.compose(ov), ov)
    assert status == "completed"
    own = read_eval(run_dir)["suites"]
    assert own["wikitext2"]["bnb_4bit"]["compute_dtype_was"]["dtype"] == "bfloat16"
    evaluate_run_dir(run_dir, [], progress=False)
    fresh = read_eval(run_dir)["suites"]
    assert {k: v["metrics"] for k, v in fresh.items()} == {k: v["metrics"] for k, v in own.items()}
    assert "compute_dtype_was" not in fresh["wikitext2"]["bnb_4bit"]  # a fresh load computes in fp32 already


def test_fast_mode_calibrates_a_4bit_model_against_its_fp32_products(tmp_path, monkeypatch):
    """model_for hands a 4-bit model back as it is in both modes: the calibrations scored it against itself and
    recorded a deviation of exactly 0. Now the reference is a copy multiplying in fp32, taken before any forward."""
    from harness.eval import perplexity
    from harness.eval.val import val_suite
    from harness.model import device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)  # fast mode is bf16 on either CPU kind
    cfg = _cfg("method=qlora", "eval=perplexity", FAST_PPL, "eval.mode=fast", "eval.lm_eval.tasks=[arc_easy]",
               "eval.lm_eval.limit=4", "eval.val_loss=true", "train.eval_batches=1")
    model, tok = _qlora_model(cfg, torch.bfloat16)
    run_suites(model, tok, cfg, tmp_path, progress=False)
    suites = read_eval(tmp_path)["suites"]
    ppl, mc = suites["wikitext2"], suites["arc_easy"]
    assert ppl["precision"]["dtype"] == "bfloat16" and ppl["calibration"]["rel_diff"] > 0
    assert mc["calibration"]["max_abs_delta"] > 0
    exact, _ = _qlora_model(cfg)  # a fresh fp32 load: its first window is the reference's
    held = precision.exact_4bit(exact.eval(), "exact")
    want = perplexity.calibration(exact, exact, tok, cfg.eval.perplexity[0], cfg.model, ppl["bos_every_window"])
    want_val = val_suite(exact, tok, cfg, progress=False)["metrics"]
    precision.release_4bit(exact, held)
    assert ppl["calibration"]["nll_exact"] == want["nll_exact"] != ppl["calibration"]["nll_fast"]
    assert suites["val"]["metrics"] == want_val and suites["val"]["precision"]["dtype"] == "float32"  # fp32 in any mode
    assert _compute_dtypes(model) == {torch.bfloat16}
