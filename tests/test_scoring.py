"""The one definition of validation loss (harness/model/scoring.py): token-weighted mean cross-entropy over
target tokens, fp32 logits, no autocast, no label smoothing; the same number for any batch size.

    python -m pytest tests/test_scoring.py -q
"""

from __future__ import annotations

import math

import pytest
import torch

from harness.model.scoring import eval_rows, plain_forward, score_rows


def _tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)  # large initial weights: per-token losses far from uniform, so weighting shows
    return LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5)).eval()


def _rows():
    """Rows of different lengths and very different numbers of targets (prompt-masked labels)."""
    g = torch.Generator().manual_seed(3)
    rows = []
    for length, prompt in ((5, 2), (23, 3), (9, 8), (30, 25), (14, 1), (7, 4), (18, 12)):
        ids = torch.randint(0, 97, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def _reference(model, rows):
    """Each row on its own through the model's own loss (a mean over its targets), weighted by its targets."""
    total = count = 0.0
    with torch.no_grad():
        for r in rows:
            n = sum(1 for x in r["labels"][1:] if x != -100)
            loss = model(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]])).loss
            total, count = total + float(loss) * n, count + n
    return total / count, int(count)


def test_score_rows_is_the_token_weighted_mean_for_any_batch_size():
    model, rows = _tiny_lm(), _rows()
    ref, n = _reference(model, rows)
    for batch_size in (1, 2, 3, 7, 64):
        res = score_rows(model, rows, batch_size=batch_size)
        assert res["loss"] == pytest.approx(ref, rel=1e-6), batch_size
        assert res["tokens"] == n and res["perplexity"] == pytest.approx(math.exp(ref), rel=1e-6)
    # what the stock Trainer.evaluate computed: a mean of per-batch means (by rows); it moves with the batch size
    # on these rows, so the test above would catch it
    per_batch = [score_rows(model, rows[i:i + 3], batch_size=3)["loss"] for i in range(0, len(rows), 3)]
    row_weighted = sum(loss * len(rows[i * 3:i * 3 + 3]) for i, loss in enumerate(per_batch)) / len(rows)
    assert abs(row_weighted - ref) > 1e-3


def test_score_rows_uses_the_full_logits_path_for_models_without_logits_to_keep(monkeypatch):
    from harness.model import scoring

    model, rows = _tiny_lm(), _rows()
    monkeypatch.setattr(scoring, "supports_logits_to_keep", lambda m: False)
    assert score_rows(model, rows, batch_size=4)["loss"] == pytest.approx(_reference(model, rows)[0], rel=1e-6)


def test_score_rows_gives_back_the_mode_and_rejects_empty_input():
    model = _tiny_lm().train()
    score_rows(model, _rows()[:2])
    assert model.training
    with pytest.raises(ValueError, match="no validation rows"):
        score_rows(model, [])
    with pytest.raises(ValueError, match="no target tokens"):
        score_rows(model, [{"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}])


def test_score_rows_bypasses_the_mixed_precision_wrapper_of_a_model_in_training():
    """accelerate wraps the forward of a model it prepares for bf16 in autocast, and the wrapper stays after
    training; the validation loss is computed without it (fp32, like a model loaded from the run directory)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    model, rows = _tiny_lm(), _rows()
    ref = score_rows(model, rows, batch_size=4)["loss"]
    AcceleratorState._reset_state(reset_partial_state=True)  # an earlier test's Trainer left its own state
    try:
        prepared = Accelerator(mixed_precision="bf16", cpu=True).prepare_model(model)
        batch = {"input_ids": torch.tensor([rows[1]["input_ids"]]), "labels": torch.tensor([rows[1]["labels"]])}
        with torch.no_grad():  # the wrapper does change the numbers
            assert prepared(**batch).loss.item() != pytest.approx(model._original_forward(**batch).loss.item(), rel=1e-4)
        assert plain_forward(prepared) is not prepared
        assert score_rows(prepared, rows, batch_size=4)["loss"] == pytest.approx(ref, rel=1e-7)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_eval_rows_is_the_trainers_cap():
    rows = list(range(10))
    assert eval_rows(rows, 0, 4) == rows
    assert eval_rows(rows, 2, 4) == rows[:8]
    assert eval_rows(rows, 5, 4) == rows


def test_a_transformers_release_without_mask_logits_to_keep_gets_the_full_logits_path(monkeypatch):
    """transformers before 5.23 slices `hidden[:, logits_to_keep, :]`, which raises IndexError on a boolean mask
    (seen on a GPU image with 5.17: every harness training run failed). The check tries a mask, so training and
    scoring fall back to full logits there, with the same loss."""
    import transformers.models.llama.modeling_llama as llama

    from harness.model import scoring

    model, rows = _tiny_lm(), _rows()
    assert scoring.supports_logits_to_keep(model)
    model.train()
    monkeypatch.setattr(llama, "slice_logits_to_keep",
                        lambda h, k: h[:, slice(-k, None) if isinstance(k, int) else k, :])
    assert not scoring.supports_logits_to_keep(model)
    assert model.training  # the caller's mode is given back
    assert score_rows(model, rows, batch_size=4)["loss"] == pytest.approx(_reference(model, rows)[0], rel=1e-6)


def test_score_rows_recalls_only_an_unchanged_model_on_the_same_rows():
    """The `val` suite after training takes the trainer's last number (recall=True) only while nothing it depends
    on has changed: an optimizer step, a write through `.data` (which bumps no version counter), other rows or
    another batch size are scored again; the recalled number is the one a forward gives."""
    model, rows = _tiny_lm(), _rows()
    first = score_rows(model, rows, batch_size=4)
    again = score_rows(model, rows, batch_size=4, recall=True)
    assert again.pop("recalled") is True and again == first
    assert "recalled" not in score_rows(model, rows, batch_size=4)  # recall is the caller's choice
    assert "recalled" not in score_rows(model, rows, batch_size=3, recall=True)
    assert "recalled" not in score_rows(model, rows[:-1], batch_size=3, recall=True)

    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    model(input_ids=torch.tensor([rows[1]["input_ids"]]), labels=torch.tensor([rows[1]["labels"]])).loss.backward()
    opt.step()
    stepped = score_rows(model, rows, batch_size=4, recall=True)
    assert "recalled" not in stepped and stepped["loss"] != first["loss"]
    assert stepped["loss"] == pytest.approx(_reference(model, rows)[0], rel=1e-6)

    with torch.no_grad():
        model.lm_head.weight.data[3, 0] += 0.25  # no version bump: caught by the parameter's sum
    moved = score_rows(model, rows, batch_size=4, recall=True)
    assert "recalled" not in moved and moved["loss"] == pytest.approx(_reference(model, rows)[0], rel=1e-6)
    assert moved["loss"] != stepped["loss"]
    assert score_rows(_tiny_lm(), rows, batch_size=4, recall=True).get("recalled") is None  # another object


def test_score_rows_never_recalls_a_model_with_4bit_layers():
    """What a 4-bit layer multiplies with lives outside its parameters (compute dtype, bitsandbytes' packing, exact
    mode's held layout): such a model is always scored again."""
    model, rows = _tiny_lm(), _rows()

    class Linear4bit(torch.nn.Module):  # stands in for bitsandbytes' layer: only its name and attribute count
        compute_dtype = torch.float32

    model.model.layers[0].add_module("q4", Linear4bit())
    score_rows(model, rows, batch_size=4)
    assert "recalled" not in score_rows(model, rows, batch_size=4, recall=True)


def test_score_rows_scores_a_model_whose_parameters_cannot_be_summed():
    """Offloaded (meta) parameters have no values to fingerprint: such a model is scored, never recalled."""
    model, rows = _tiny_lm(), _rows()
    model.model.layers[0].mlp.register_parameter("offloaded", torch.nn.Parameter(torch.empty(3, device="meta")))
    first = score_rows(model, rows, batch_size=4)
    assert "recalled" not in score_rows(model, rows, batch_size=4, recall=True)
    assert first["loss"] == pytest.approx(_reference(model, rows)[0], rel=1e-6)
