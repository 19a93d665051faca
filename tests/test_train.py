"""The common trainer on tiny models: every method trains, adapters move and bases don't, QLoRA is
really 4-bit, runs are deterministic, records are complete, failures are recorded, crashes resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from harness import config, paths
from harness.pipeline import train_run
from harness.run.record import RunError, read_eval, read_metrics, read_summary, run_dir_for
from harness.train import fit as fit_module
from harness.train.callbacks import Outcome
from harness.train.fit import last_checkpoint
from harness.train.loss import pad_batch, target_only_loss


def _run(overrides, outcome=None):
    cfg = config.compose(overrides)
    return train_run(cfg, overrides, outcome=outcome)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora", "qlora", "lora-8bit", "qlora-fp4", "dora"])
def test_every_method_trains_and_records(tiny_overrides, method):
    status, run_dir = _run(tiny_overrides + [f"method={method}"])
    assert status == "completed", read_summary(run_dir)
    s = read_summary(run_dir)
    for key in ("trainable_params", "total_params", "peak_memory_mb", "wall_time_s", "train_time_s",
                "train_tokens", "tokens_per_s", "best_val_loss", "steps", "adapter_bytes"):
        assert s.get(key) is not None, key
    assert s["steps"] == 3 and s["train_tokens"] > 0 and math.isfinite(s["best_val_loss"])
    weights = run_dir / ("model" if method == "full" else "adapter")
    assert list(weights.glob("*.safetensors")), "weights saved as safetensors"
    assert not list(run_dir.rglob("*.bin")), "no pickle weights"
    if method == "full":
        assert s["trainable_params"] == s["total_params"]
    else:
        assert 0 < s["trainable_params"] < s["total_params"]
    m = json.loads((run_dir / "manifest.json").read_text())
    for key in ("harness_version", "git", "packages", "python", "torch", "seeds", "data", "model", "malloc"):
        assert key in m, key
    # full: every weight is trainable and was mapped from the checkpoint file; adapters leave the base mapped
    assert (m["trainable_copied_from_file_mb"] > 0) == (method == "full"), m["trainable_copied_from_file_mb"]
    assert m["data"]["files"] and m["data"]["files"][0]["sha256"]
    assert m["model"]["sha256"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["method"]["name"] == method
    assert f"method={method}" in yaml.safe_load((run_dir / "overrides.yaml").read_text())
    lines = read_metrics(run_dir)
    assert [r["step"] for r in lines if "train_loss" in r] == [1, 2, 3]
    assert any("val_loss" in r for r in lines)


def _base_and_adapter(model):
    base, adapter = {}, {}
    for name, p in model.named_parameters():
        (adapter if "lora_" in name else base)[name] = p.detach().clone()
    return base, adapter


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_lora_moves_adapter_only_and_base_stays_bit_identical(tiny_overrides, method):
    """The adapter trains and the base does not: every floating-point base tensor and every 4-bit code is
    bit-identical after training, and the base model's outputs with the adapter disabled equal the untrained
    model's. The untrained model's tensors are read before its first forward: on CPUs with AVX512-BF16,
    bitsandbytes repacks a 4-bit layer for its inference kernel at its first forward in eval mode, and its
    state_dict() unpacks it by re-quantizing the double-quantized absmax (some bytes move by one). Training
    holds that repacking off (methods.hold_4bit_training_layout), so both models meet it first here."""
    from harness.model.device import resolve_precision
    from harness.model.load import load_model_and_tokenizer
    from harness.model.methods import build_quant_config

    cfg = config.compose(tiny_overrides + [f"method={method}", "train.lr=1e-2"])
    # the compute dtype the run will use (precision=auto: bf16 on native-bf16 CPUs, else fp32)
    compute = torch.bfloat16 if resolve_precision(cfg, "cpu") == "bf16" else torch.float32
    ref, _ = load_model_and_tokenizer(cfg.model, quantization_config=build_quant_config(cfg.method, compute))
    ids = torch.randint(0, ref.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    ref_state = {k: v.detach().clone() for k, v in ref.state_dict().items() if v.is_floating_point()}
    quantized = {k: v.detach().clone() for k, v in ref.state_dict().items()
                 if v.dtype == torch.uint8 and k.endswith(".weight")}
    with torch.no_grad():
        ref_logits = ref.eval()(input_ids=ids).logits.float()
    outcome = Outcome()
    status, _ = train_run(cfg, tiny_overrides, outcome=outcome)
    assert status == "completed"
    trained = outcome.model
    moved = 0
    for name, p in trained.named_parameters():
        if "lora_B" in name:
            moved += int(p.detach().abs().sum() > 0)  # B starts at zero: any non-zero means it trained
    assert moved > 0
    base_after = trained.get_base_model().state_dict()
    compared = 0
    for k, v in ref_state.items():
        k2 = k.replace(".weight", ".base_layer.weight") if k.replace(".weight", ".base_layer.weight") in base_after else k
        if k2 in base_after and v.dtype == base_after[k2].dtype:
            assert torch.equal(v, base_after[k2]), f"base weight {k} changed"
            compared += 1
    assert compared >= 3
    trained.eval()
    with torch.no_grad(), trained.disable_adapter():
        base_logits = trained(input_ids=ids).logits.float()
    # the 4-bit codes too (the state above: before either model's first forward in eval mode)
    for k, v in quantized.items():
        k2 = k.replace(".weight", ".base_layer.weight") if k.replace(".weight", ".base_layer.weight") in base_after else k
        assert torch.equal(v, base_after[k2]), f"4-bit base weight {k} changed"
    assert len(quantized) == (14 if method == "qlora" else 0)
    atol = 1e-5
    torch.testing.assert_close(base_logits, ref_logits, rtol=0, atol=atol)
    with torch.no_grad():  # and the adapter does change the outputs: the check above can fail
        assert not torch.allclose(trained(input_ids=ids).logits.float(), ref_logits, atol=atol)


@pytest.mark.slow
def test_qlora_base_layers_are_4bit_nf4(tiny_overrides):
    import bitsandbytes as bnb

    outcome = Outcome()
    status, run_dir = _run(tiny_overrides + ["method=qlora"], outcome)
    assert status == "completed"
    layers = [m for m in outcome.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers, "no Linear4bit layers"
    for layer in layers:
        assert layer.weight.quant_state.quant_type == "nf4"
        assert layer.weight.dtype == torch.uint8  # packed: two 4-bit values per byte
        assert layer.weight.quant_state.nested, "double quantization on"
    # the 4-bit weights take half a byte per parameter, whatever the storage dtype
    for layer in layers:
        w = layer.weight
        assert w.numel() * w.element_size() * 2 == layer.in_features * layer.out_features


@pytest.mark.slow
def test_qlora_adapters_train_in_the_run_precision(tiny_overrides):
    outcome = Outcome()
    status, _ = _run(tiny_overrides + ["method=qlora", "train.precision=fp32"], outcome)
    assert status == "completed"
    dtypes = {p.dtype for p in outcome.model.parameters() if p.requires_grad}
    assert dtypes == {torch.float32}  # bf16 adapters would be emulated (slow) on CPUs without native bf16


def _linear4bit(seed: int = 0):
    import bitsandbytes as bnb

    torch.manual_seed(seed)
    dense = torch.nn.Linear(64, 32, bias=False)
    layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4")
    return layer.to("cpu")  # quantizes


def _eval_forward(layer):
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(3, 64))  # on an AVX512-BF16 CPU, bitsandbytes repacks the weight here
    layer.train()


def _input_grad(layer):
    x = torch.randn(3, 64, requires_grad=True)
    layer(x).float().sum().backward()
    return x.grad


def test_a_held_4bit_layer_keeps_its_input_gradient_after_an_eval_forward():
    from bitsandbytes.functional import has_avx512bf16

    from harness.model.methods import hold_4bit_training_layout, release_4bit_training_layout

    layer = _linear4bit()
    before = _input_grad(layer)
    _eval_forward(layer)  # packed already where the CPU has AVX512-BF16: the hold unpacks it
    assert hold_4bit_training_layout(layer) == 1
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    _eval_forward(layer)
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    after = _input_grad(layer)
    assert after is not None and torch.isfinite(after).all() and after.abs().sum() > 0
    assert before.shape == after.shape
    assert release_4bit_training_layout(layer) == 1
    assert layer.support_avx512bf16_for_cpu == has_avx512bf16()  # evaluation gets the inference kernel again


@pytest.mark.slow
def test_qlora_validation_during_training_leaves_training_unchanged(tiny_overrides):
    """Validating every step gives the losses and gradient norms of never validating. On AVX512-BF16 CPUs it did
    not: bitsandbytes repacked the 4-bit layers at the first validation pass into a layout whose kernel has no
    backward, and every later step trained on a cut gradient (methods.hold_4bit_training_layout)."""
    import bitsandbytes as bnb

    ov = tiny_overrides + ["method=qlora", "train.max_steps=4", "train.save_every=100"]
    runs, held, outcome = {}, {}, None
    for every in (0, 1):
        outcome = Outcome()
        status, run_dir = _run(ov + [f"train.eval_every={every}", f"run_id=val-every-{every}"], outcome)
        assert status == "completed", read_summary(run_dir)
        runs[every] = [(r["train_loss"], r["grad_norm"]) for r in read_metrics(run_dir) if "train_loss" in r]
        held[every] = json.loads((run_dir / "manifest.json").read_text()).get("bnb_4bit_layers_held")
    assert len(runs[0]) == 4 and runs[1] == runs[0]
    assert held[0] == held[1] and held[0] > 0  # recorded: every 4-bit layer
    layers = [m for m in outcome.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.support_avx512bf16_for_cpu == bnb.functional.has_avx512bf16() for m in layers)


def _tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))


def _masked_batch():
    ids = torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :6] = -100  # prompt
    labels[1, :2] = -100
    labels[2, :3] = -100
    labels[2, 8:] = -100  # padding
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_target_only_loss_equals_the_models_own_loss(smoothing):
    from transformers.trainer_pt_utils import LabelSmoother

    model, batch = _tiny_lm(), _masked_batch()
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    if smoothing:
        expected = LabelSmoother(smoothing)(full, batch["labels"], shift_labels=True)
    else:
        expected = model(**batch).loss
    ours, out = target_only_loss(model, batch, label_smoothing=smoothing)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)
    n_targets = int((batch["labels"][:, 1:] != -100).sum())
    assert out.logits.shape == (n_targets, 97)  # logits only where a target follows
    # normalised by the accumulation-wide count when the Trainer passes one
    halved, _ = target_only_loss(model, batch, num_items_in_batch=torch.tensor(2 * n_targets),
                                       label_smoothing=smoothing)
    assert halved.item() == pytest.approx(expected.item() / 2, rel=1e-5)
    ours.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_pad_batch_pads_ids_masks_and_labels():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    b = pad_batch(rows, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.slow
def test_same_seed_same_losses(tiny_overrides):
    a = _run(tiny_overrides + ["method=lora", "run_id=a"])[1]
    b = _run(tiny_overrides + ["method=lora", "run_id=b"])[1]
    la = [r["train_loss"] for r in read_metrics(a) if "train_loss" in r]
    lb = [r["train_loss"] for r in read_metrics(b) if "train_loss" in r]
    assert la == lb and len(la) == 3
    c = _run(tiny_overrides + ["method=lora", "run_id=c", "train.seed=1"])[1]
    lc = [r["train_loss"] for r in read_metrics(c) if "train_loss" in r]
    assert lc != la


@pytest.mark.slow
def test_loss_goes_down_on_a_memorisable_batch(tiny_overrides):
    ov = tiny_overrides + ["method=full", "train.lr=3e-3", "train.max_steps=25", "data.max_rows=4",
                           "data.val_size=0", "train.batch_size=4", "train.warmup_ratio=0", "train.scheduler=constant"]
    status, run_dir = _run(ov)
    assert status == "completed"
    losses = [r["train_loss"] for r in read_metrics(run_dir) if "train_loss" in r]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_divergence_is_recorded_not_raised(tiny_overrides):
    status, run_dir = _run(tiny_overrides + ["method=full", "train.lr=1e30", "train.max_steps=6", "train.max_grad_norm=0"])
    s = read_summary(run_dir)
    assert status == "diverged" and s["status"] == "diverged", s
    assert "loss" in s["reason"]


@pytest.mark.slow
def test_collapse_at_a_huge_learning_rate_is_recorded_as_diverged(tiny_overrides):
    """LoRA at lr=1e9 kills the tiny model without a NaN (gradient norm 0, loss = log(vocab size)): diverged,
    with what was seen, and training stops there."""
    ov = [o for o in tiny_overrides if not o.startswith("train.max_steps")] + [
        "method=lora", "train.lr=1e9", "train.max_steps=20", "train.eval_every=0", "run_id=collapse"]
    status, run_dir = _run(ov)
    s = read_summary(run_dir)
    assert status == "diverged" and s["status"] == "diverged", s
    assert s["reason"].startswith("collapse: grad_norm 0.0 for 3 logged steps from step "), s["reason"]
    first = int(s["reason"].rsplit(" ", 1)[1])
    assert s["steps"] == first + 2 < 20  # stopped at the third dead step
    rows = [r for r in read_metrics(run_dir) if "train_loss" in r]
    assert [r["grad_norm"] for r in rows[-3:]] == [0.0] * 3
    assert not (run_dir / "adapter").exists()


def test_collapse_watch_rules():
    from harness.train.callbacks import CollapseWatch

    def feed(watch, logs):
        return [watch.see(step, loss, grad) for step, (loss, grad) in enumerate(logs, 1)]

    log_v = math.log(384)
    # a dead gradient: three logged steps in a row, the first logged step not counted
    assert feed(CollapseWatch(), [(5.9, 0.0), (5.9, 0.0), (5.9, 0.0)]) == ["", "", ""]
    got = feed(CollapseWatch(), [(5.9, 0.3), (5.9, 0.0), (5.9, 0.0), (5.8, 0.5), (5.9, 0.0), (5.9, float("nan")), (5.9, 0.0)])
    assert got[:-1] == [""] * 6 and got[-1] == "collapse: grad_norm 0.0 for 3 logged steps from step 5"
    # fp16: inf / nan norms are the loss scaler's skipped steps, not a collapse; a norm not logged tells nothing
    assert not any(feed(CollapseWatch(nonfinite_grads=False), [(5.9, 1.0)] + [(5.9, float("inf"))] * 5))
    assert not any(feed(CollapseWatch(), [(5.9, None)] * 6))
    # the loss back at log(V) after it had been clearly below, for three logs
    got = feed(CollapseWatch(vocab_size=384), [(log_v, 1.0), (4.0, 1.0), (2.5, 1.0), (log_v + 0.003, 2.0), (log_v, 2.0),
                                               (log_v - 0.004, 2.0)])
    assert got[-1].startswith("collapse: train loss 5.9466 = log(vocab size 384) = 5.9506") and "from step 4" in got[-1]
    assert "after it had reached 2.5000" in got[-1] and not any(got[:-1])
    # a model that starts at log(V) (random init) and stays there at a tiny lr has not collapsed: never below it
    assert not any(feed(CollapseWatch(vocab_size=384), [(log_v + d, 0.2) for d in (0.001, -0.002, 0.0, 0.001, 0.0)]))
    assert not any(feed(CollapseWatch(vocab_size=None), [(4.0, 1.0)] + [(log_v, 1.0)] * 5))  # DPO / ORPO: no loss rule


def test_runtime_failure_is_recorded(tiny_overrides):
    # a LoRA target that exists in no layer of the model: caught after load, recorded as failed
    ov = [o for o in tiny_overrides if not o.startswith("model=")] + ["model=tiny-llama", "model.linear_modules=[]",
                                                                      "method.target_modules=[nonexistent_proj]"]
    status, run_dir = _run(ov)
    s = read_summary(run_dir)
    assert status == "failed" and "nonexistent_proj" in s["reason"]


@pytest.mark.slow
def test_completed_run_id_is_not_retrained(tiny_overrides):
    status, run_dir = _run(tiny_overrides + ["run_id=done"])
    before = (run_dir / "summary.json").read_text()
    status2, run_dir2 = _run(tiny_overrides + ["run_id=done"])
    assert status2 == "completed" and run_dir2 == run_dir
    assert (run_dir / "summary.json").read_text() == before


def _mark(run_dir, status):
    s = read_summary(run_dir)
    s["status"] = status
    (run_dir / "summary.json").write_text(json.dumps(s))


@pytest.mark.slow
def test_resuming_with_a_changed_config_is_refused_and_force_records_the_change(tiny_overrides):
    ov = tiny_overrides + ["run_id=again"]
    status, run_dir = _run(ov)
    assert status == "completed"
    recorded = (run_dir / "config.yaml").read_text(), (run_dir / "overrides.yaml").read_text()
    for st in ("completed", "interrupted"):  # finished or not: another config is never filed under this run_id
        _mark(run_dir, st)
        with pytest.raises(RunError) as e:
            _run(ov + ["train.lr=0.001", "method.r=4"])
        msg = str(e.value)
        assert "train.lr: 0.0002 -> 0.001" in msg and "method.r: 16 -> 4" in msg and "2 key(s) differ" in msg
        assert ("--force" in msg) == (st == "interrupted")
        assert ((run_dir / "config.yaml").read_text(), (run_dir / "overrides.yaml").read_text()) == recorded
    r = subprocess.run([sys.executable, "-m", "harness", "train", *ov, "train.lr=0.001"], capture_output=True, text=True)
    assert r.returncode == 2 and "train.lr: 0.0002 -> 0.001" in r.stderr, r.stdout + r.stderr
    cfg = config.compose(ov + ["train.lr=0.001"])
    status, _ = train_run(cfg, ov + ["train.lr=0.001"], force=True)
    s = read_summary(run_dir)
    assert status == "completed" and s["config_changes_on_resume"] == ["train.lr: 0.0002 -> 0.001"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["lr"] == 0.001


@pytest.mark.slow
def test_a_sweep_retry_with_the_same_overrides_resumes(tiny_overrides, runs_dir):
    """The sweep re-queues an interrupted trial with the same run_id and overrides under a new trial number
    (and study tags): bookkeeping keys, not a changed config."""
    def trial(n, tags):
        return tiny_overrides + ["name=st", "study=st", f"trial={n}", "run_id=cell0", f"output_dir={runs_dir}",
                                 f"++tracker.tags=[{tags}]"]
    status, run_dir = _run(trial(0, "st"))
    _mark(run_dir, "interrupted")
    status, run_dir2 = _run(trial(3, "st,more"))
    assert status == "completed" and run_dir2 == run_dir and read_summary(run_dir)["trial"] == 3
    assert "config_changes_on_resume" not in read_summary(run_dir)


@pytest.mark.slow
def test_model_and_data_given_by_path_name_the_run_and_its_record(byo_model_dir, tiny_overrides, tmp_path):
    data = tmp_path / "my_recipes.json"
    data.write_text((paths.data_root() / "alpaca" / "alpaca_tiny.json").read_text())
    ov = [o for o in tiny_overrides if not o.startswith(("model=", "data="))] + [
        "model.source=hub", f"model.path={byo_model_dir}", f"data.path={data}", "data.format=alpaca"]
    status, run_dir = _run(ov)
    assert status == "completed", read_summary(run_dir)
    assert run_dir.parent.name == "My-Model-v2-lora-my_recipes"
    s = read_summary(run_dir)
    assert (s["model"], s["data"]) == ("My-Model-v2", "my_recipes")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["model"]["name"] == "My-Model-v2" and manifest["model"]["path"] == str(byo_model_dir)


@pytest.mark.slow
def test_killed_run_resumes_from_checkpoint(tiny_overrides, runs_dir):
    ov = [o for o in tiny_overrides if not o.startswith("train.max_steps")] + [
        "train.max_steps=100", "train.save_every=5", "run_id=crash", "method=lora", "train.eval_every=0"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "harness", "train", *ov], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = run_dir_for(str(runs_dir), "tiny-llama-lora-alpaca-tiny", "crash")
    deadline = time.time() + 120
    while time.time() < deadline and not list((run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((run_dir / "checkpoints").glob("checkpoint-*")), "a checkpoint was written before the kill"
    assert read_summary(run_dir)["status"] == "running"  # killed: nothing could record more
    ckpt = last_checkpoint(run_dir)
    step = int(ckpt.name.split("-")[-1])
    status, _ = _run(ov)
    s = read_summary(run_dir)
    assert status == "completed" and s["steps"] == 100 and s["resumed"] is True
    steps = [r["step"] for r in read_metrics(run_dir) if "train_loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 100, "no duplicated steps after resume"
    assert step < 100


def test_checkpoint_killed_while_saving_is_skipped(tmp_path):
    for step, complete in ((5, True), (10, False)):
        d = tmp_path / "checkpoints" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "adapter_model.safetensors").write_bytes(b"\0" * 8)  # empty weights would not count (tests/test_resume.py)
        if complete:
            (d / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path).name == "checkpoint-5"


def test_the_trainers_checkpoint_at_the_last_step_is_cancelled_and_only_that_one():
    from transformers import TrainerControl, TrainerState

    from harness.train.callbacks import skip_final_checkpoint

    skip = skip_final_checkpoint()
    for step, max_steps, kept in ((4, 8, True), (8, 8, False), (9, 8, False), (4, 0, True)):
        control = TrainerControl(should_save=True)
        skip.on_step_end(None, TrainerState(global_step=step, max_steps=max_steps), control)
        assert control.should_save is kept, (step, max_steps)


@pytest.mark.slow
def test_a_full_fine_tune_writes_no_checkpoint_at_its_last_step(tiny_overrides, monkeypatch):
    """The weights fit() saves after training are the last step's; the Trainer's own checkpoint of that step
    (weights and optimizer state, deleted a moment later) is not written. The ones before it are."""
    from transformers import Trainer

    saved, real = [], Trainer._save_checkpoint

    def recording(self, *a, **kw):
        saved.append(self.state.global_step)
        return real(self, *a, **kw)

    monkeypatch.setattr(Trainer, "_save_checkpoint", recording)
    ov = [o for o in tiny_overrides if not o.startswith("train.max_steps")] + [
        "method=full", "train.max_steps=4", "train.save_every=2", "run_id=last"]
    status, run_dir = _run(ov)
    assert status == "completed" and saved == [2]
    assert (run_dir / "model" / "model.safetensors").exists() and not (run_dir / "checkpoints").exists()
    assert read_summary(run_dir)["steps"] == 4


@pytest.mark.slow
def test_wandb_offline_files_under_run_dir(tiny_overrides):
    ov = [o for o in tiny_overrides if o != "tracker=none"] + ["tracker=wandb"]
    status, run_dir = _run(ov)
    assert status == "completed"
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B offline run files"


@pytest.mark.slow
def test_real_smollm2_lora_trains(runs_dir):
    ov = ["model=smollm2-135m", "method=qlora", "data=alpaca-demo", "tracker=none", "eval=none",
          "train.max_steps=4", "train.batch_size=2", "train.max_length=128", "train.log_every=1",
          "data.max_rows=40", f"output_dir={runs_dir}"]
    status, run_dir = _run(ov)
    s = read_summary(run_dir)
    assert status == "completed", s
    losses = [r["train_loss"] for r in read_metrics(run_dir) if "train_loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) and 0 < x < 10 for x in losses)
    assert 0 < s["trainable_share"] < 0.05


def test_bf16_cpu_fast_backward_matches_autograd():
    """harness/bf16cpu.py: loss and gradients equal autograd's up to bf16 rounding; the stock forward comes back."""
    import copy

    from harness.train.bf16cpu import patch_linear_layers, unpatch_linear_layers

    plain = _tiny_lm()
    fast = copy.deepcopy(plain)
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(2))

    def grads(model):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    l1, g1 = grads(plain)
    assert patch_linear_layers(fast) == 2 * 7 + 1  # 7 projections per layer, lm_head
    l2, g2 = grads(fast)
    assert l2 == pytest.approx(l1, rel=1e-2)  # bf16 products, other summation order
    for name in g1:
        assert (g1[name] - g2[name]).norm() <= 0.02 * g1[name].norm() + 1e-6, name
    with torch.no_grad():  # outside training the stock forward runs: bit-identical logits
        assert torch.equal(fast(input_ids=ids).logits, plain(input_ids=ids).logits)
    assert unpatch_linear_layers(fast) == 15
    assert grads(fast)[0] == l1


@pytest.mark.slow
def test_validation_loss_is_plain_cross_entropy_under_label_smoothing(tiny_overrides):
    """Label smoothing changes training, not the validation number: the same model state gives the same
    val_loss with and without it (one step at lr 1e-12 leaves the model as it was)."""
    vals = []
    for smoothing in ("0.0", "0.3"):
        ov = tiny_overrides + ["method=lora", "train.max_steps=1", "train.lr=1e-12", f"train.label_smoothing={smoothing}",
                               f"run_id=ls{smoothing}"]
        status, run_dir = _run(ov)
        assert status == "completed"
        s = read_summary(run_dir)
        vals.append((s["final_val_loss"], s["final_train_loss"]))
    assert vals[0][0] == pytest.approx(vals[1][0], rel=1e-5)  # validation: identical
    assert vals[1][1] > vals[0][1]  # training loss: smoothing adds its term


# ------------------------------------------------------------- one definition of validation loss
def _val_run(overrides, outcome=None):
    """A tiny LoRA run with the `val` suite after training; -> (summary, eval.json val entry, metrics, run_dir)."""
    ov = ["method=lora"] + overrides + ["eval=quick", "eval.perplexity=[]", "eval.lm_eval.tasks=[]"]
    status, run_dir = _run(ov, outcome)
    assert status == "completed", read_summary(run_dir)
    return read_summary(run_dir), read_eval(run_dir)["suites"]["val"], read_metrics(run_dir), run_dir


@pytest.mark.slow
@pytest.mark.parametrize("eval_every", [0, 3])  # the final evaluation call, and the scheduled one at the last step
def test_final_val_loss_is_the_val_suites_number_on_the_same_rows(tiny_overrides, eval_every, monkeypatch):
    """The trainer's validation loss (metrics.jsonl, summary best/final_val_loss) and the `val` suite after
    training are one number (harness/model/scoring.py) on one set of rows (the train.eval_batches cap), the suite
    scoring them again here instead of taking the trainer's number (val.RECALL_TRAINER_EVAL)."""
    monkeypatch.setattr("harness.eval.val.RECALL_TRAINER_EVAL", False)
    summary, val, metrics, _ = _val_run(tiny_overrides + [f"train.eval_every={eval_every}", "train.eval_batches=2"])
    assert "recalled" not in val
    assert val["n"] == 2 * 4  # eval_batches x batch_size, as the trainer takes them
    assert summary["final_val_loss"] == pytest.approx(val["metrics"]["loss"], rel=1e-9)
    assert [r["val_loss"] for r in metrics if "val_loss" in r][-1] == summary["final_val_loss"]


@pytest.mark.slow
def test_val_loss_does_not_depend_on_the_batch_size(tiny_overrides):
    """Token-weighted: the same model state (one step at lr 1e-12) gives the same val_loss at batch size 2 and 5
    (a mean of per-batch means would not)."""
    losses = []
    for bs in (2, 5):
        ov = tiny_overrides + ["method=lora", "train.max_steps=1", "train.lr=1e-12", f"train.batch_size={bs}",
                               f"run_id=bs{bs}"]
        status, run_dir = _run(ov)
        assert status == "completed"
        losses.append(read_summary(run_dir)["final_val_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


@pytest.mark.slow
def test_val_loss_under_bf16_training_is_the_fp32_number_of_the_saved_run(tiny_overrides):
    """Training in bf16 autocast does not leak into the validation loss: the trainer's number, the `val` suite
    right after training and `harness eval RUN_DIR` on the saved adapter (a fresh fp32 model) agree."""
    from harness.pipeline import evaluate_run_dir

    summary, val, _, run_dir = _val_run(tiny_overrides + ["train.precision=bf16", "method=full", "train.lr=3e-3"])
    evaluate_run_dir(run_dir, [], progress=False)
    reloaded = read_eval(run_dir)["suites"]["val"]["metrics"]["loss"]
    assert val["recalled"]  # the suite took the trainer's last number; a fresh load scores the same
    assert summary["final_val_loss"] == val["metrics"]["loss"]
    assert summary["final_val_loss"] == pytest.approx(reloaded, rel=1e-6)


def test_checkpointing_argument_follows_the_installed_transformers():
    """The pinned transformers names the switch activation_checkpointing; releases before the rename (5.17, as
    preinstalled on a GPU image where `harness train` failed with an unexpected keyword) gradient_checkpointing."""
    import dataclasses

    from transformers import TrainingArguments

    @dataclasses.dataclass
    class BeforeTheRename:
        output_dir: str = ""
        gradient_checkpointing: bool = False

    assert fit_module.checkpointing_argument(TrainingArguments) == "activation_checkpointing"
    assert fit_module.checkpointing_argument(BeforeTheRename) == "gradient_checkpointing"
