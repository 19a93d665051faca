"""Smoke versions of every benchmark (tiny model, one repetition) so the scripts cannot rot, plus the
pure helpers they rely on. The full measurement is `python -m benchmarks.run` (make bench)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import common, evaluation, matmul, packing, report_scale, run, sweep_overhead, training

TINY = dict(model="tiny-llama", data="alpaca-tiny")


# ------------------------------------------------------------------------------- pure helpers
def test_flop_formulas_and_ratios():
    assert training.model_flops_per_token(1000, 1000, full=True) == 6000
    assert training.model_flops_per_token(1000, 10, full=False) == 4 * 1000 + 6 * 10
    assert common.ratio(3.0, 2.0) == 1.5
    assert common.ratio(1.0, 0.0) is None and common.ratio(None, 1.0) is None
    assert common.median([3, 1, 2, None]) == 2
    assert matmul.matmul_flops(10) == 2000


def test_flop_count_head_share_attention_and_embedding():
    # SmolLM2-135M: tied embedding (counted once, as the LM head's matmul), 30 layers, attention width 576
    arch = {"tied": True, "vocab": 49152, "hidden": 576, "layers": 30, "attn_dim": 576}
    assert training.matmul_params(134_515_008, arch) == 134_515_008
    assert training.matmul_params(1_000_000, {**arch, "tied": False, "vocab": 100, "hidden": 10}) == 999_000  # lookup out
    head = 49152 * 576
    full = training.model_flops_per_token(134_515_008, 134_515_008, True, head_params=head, head_share=0.5)
    assert full == pytest.approx(6 * (134_515_008 - head) + 6 * 0.5 * head)
    assert training.model_flops_per_token(134_515_008, 134_515_008, True, head_params=head) == 6 * 134_515_008
    lora = training.model_flops_per_token(1000, 10, False, head_params=200, head_share=0.25, attention=7.0)
    assert lora == 4 * 800 + 4 * 0.25 * 200 + 6 * 10 + 7.0
    with pytest.raises(ValueError, match="head_share"):
        training.model_flops_per_token(1000, 10, False, head_params=200, head_share=1.5)
    # attention: QKᵀ and AV, 2·width per attended position each, x3 for training; causal context (T+1)/2
    assert training.attention_flops_per_token(1, 4, 3, causal=False) == 12 * 4 * 3
    assert training.attention_flops_per_token(30, 576, 128) == pytest.approx(12 * 30 * 576 * 64.5)
    # at T=128 attention is ~2% of SmolLM2's 6N: small, but counted
    assert 0.01 < training.attention_flops_per_token(30, 576, 128) / (6 * 134_515_008) < 0.03


def test_mfu_above_one_is_a_measurement_error():
    assert training.mfu(5e9, 10e9) == (0.5, None)
    assert training.mfu(10e9, 10e9) == (1.0, None)
    value, error = training.mfu(10.9e9, 10.3e9)  # results.md's full bf16 row against the square-only bf16 peak
    assert value is None and "measurement error" in error and "1.058" in error
    assert training.mfu(None, 10e9) == (None, None) and training.mfu(5e9, None) == (None, None)


def test_matmul_shapes_and_peak_cover_every_layout_and_product():
    arch = {"hidden": 576, "attn_dim": 576, "ffn": 1536, "vocab": 49152}
    shapes = matmul.linear_shapes(arch, 256)
    assert shapes == {"attn_q": (256, 576, 576), "mlp_up": (256, 576, 1536), "lm_head": (256, 576, matmul.VOCAB_CAP)}
    assert matmul.training_products(256, 576, 1536) == {"fwd": (256, 576, 1536), "grad_x": (256, 1536, 576),
                                                        "grad_w": (1536, 256, 576)}
    assert matmul.matmul_flops(2, 3, 4) == 48
    assert matmul.best_of({"a": {"best": 1.0}, "b": {"best": 3.0}, "c": {"best": 2.0}}) == ("b", {"best": 3.0})
    # the child: the peak is the best of every (shape, product, layout), squares included
    r = matmul.measure("bf16", 32, 1, 0.002, shapes={"tiny": (16, 8, 24)})
    assert set(r["by_layout"]) == set(matmul.LAYOUTS) and len(r["products"]) == 3 * len(matmul.LAYOUTS)
    everything = [v["best"] for v in r["layouts"].values()] + [v["best"] for v in r["products"].values()]
    assert r["best_flops"] == max(everything) >= r["square_best_flops"]
    assert r["products"]["tiny.grad_w.tn"]["mnk"] == [24, 16, 8]


def test_attention_cell_names_the_kernel_and_its_timing():
    assert training.attention_cell(None) is None
    rec = {"implementation": "harness_blocked", "source": "measured", "sdpa_ms": 7.0, "blocked_ms": 2.8}
    assert training.attention_cell(rec) == "block-causal (measured 2.50x)"
    assert training.attention_cell({"implementation": "sdpa", "source": "not applicable"}) == "sdpa (not applicable)"


def test_layout_cell_names_the_decision():
    assert training.layout_cell(None) is None
    assert training.layout_cell({"apply": True, "source": "measured", "speedup": 4.05}) == "tn (measured 4.05x)"
    assert training.layout_cell({"apply": False, "source": "forced", "speedup": None}) == "stock (forced)"


def test_cpu_kind_is_reported():
    kind = common.cpu_kind()
    assert kind["kind"] and isinstance(kind["native_bf16"], bool)


def test_steps_from_metrics_skips_warmup_and_setup():
    rows = [{"step": s, "time_s": t, "tokens_seen": 100 * s} for s, t in ((1, 5.0), (2, 6.0), (3, 8.0), (4, 9.0))]
    rows.insert(2, {"step": 2, "val_loss": 1.0})  # validation lines are ignored
    times, tokens = training.steps_from_metrics(rows, warmup=2)
    assert times == [2.0, 1.0] and tokens == [100, 100]
    t = common.step_throughput(times, tokens)
    assert t["tokens_per_s"] == pytest.approx(75.0) and t["tokens_per_s_mean"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="log_every"):
        training.steps_from_metrics(rows[:2], warmup=2)


def test_config_order_puts_lora_and_fp32_first():
    order = training.config_order(("full", "lora", "qlora"), ("fp32", "bf16"))
    assert order[:2] == [("lora", "fp32"), ("lora", "bf16")]
    assert sorted(order) == sorted((m, p) for m in ("full", "lora", "qlora") for p in ("fp32", "bf16"))


def test_markdown_escapes_cells_and_reports_goals():
    sec = common.section("x", "X", [{"a": "p|q", "b": 0.5}], columns=["a", "b"],
                         goals=[common.goal("g", 0.5, "≥ 1", False), common.goal("h", None, "≥ 1", None, "missing")])
    md = "\n".join(run.render_section(sec))
    assert "p\\|q" in md and "**NOT MET** g" in md and "**NOT MEASURED** h" in md


def test_cli_rejects_bad_names():
    with pytest.raises(SystemExit, match="no such benchmark"):
        run.selected("training,nope")
    with pytest.raises(SystemExit, match="unknown"):
        run.options_from(run.parse_args(["--quick", "--methods", "lora,dora"]))
    with pytest.raises(SystemExit, match="--mc-items=0"):
        run.options_from(run.parse_args(["--mc-items", "0"]))


def test_cli_sets_the_multiple_choice_tasks_and_items():
    opts = run.options_from(run.parse_args(["--mc-tasks", "hellaswag, arc_easy", "--mc-items", "100"]))
    assert (opts.mc_task, opts.mc_items) == ("hellaswag,arc_easy", 100)
    assert (run.options_from(run.parse_args([])).mc_task, run.options_from(run.parse_args([])).mc_items) == ("arc_easy", 20)


# ------------------------------------------------------------------------ isolated measurements
@pytest.mark.slow
def test_run_child_reports_peak_memory_of_that_process(tmp_path):
    r = common.run_child("matmul", "measure", {"dtype": "fp32", "n": 64, "reps": 1, "min_seconds": 0.01}, tmp_path, "mm")
    assert r["best_flops"] > 0 and r["best_layout"] in matmul.LAYOUTS
    assert r["peak_rss_mb"] > 50  # a Python process with torch imported
    with pytest.raises(common.ChildError, match="exit code"):
        common.run_child("matmul", "measure", {"dtype": "fp8", "n": 8, "reps": 1}, tmp_path, "bad")


@pytest.fixture(scope="module")
def long_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "rows.json"
    info = training.write_long_rows(TINY["model"], TINY["data"], 128, 6, str(out))
    assert info["rows"] >= 6 and info["base_params"] > 0
    assert 0 < info["target_share"] < 1 and info["arch"]["layers"] >= 1  # the rows leave the prompt out of the loss
    return str(out)


@pytest.mark.slow
def test_harness_and_plain_loop_see_the_same_full_batches(long_rows, tmp_path):
    kw = dict(**TINY, method="lora", precision="fp32", data_path=long_rows, max_length=128, batch_size=2,
              warmup=1, steps=2)
    h = training.child_harness(**kw, workdir=str(tmp_path / "h"))
    p = training.child_plain(**kw)
    for r in (h, p):
        assert r["steps"] == 2 and r["tokens_per_s"] > 0 and all(x > 0 for x in r["step_times"])
    # the long-row subset fills every row to max_length: no padding, identical work per step
    assert h["step_tokens"] == p["step_tokens"] == [2 * 128, 2 * 128]
    assert h["trainable_params"] == p["trainable_params"] > 0
    assert math.isfinite(p["final_train_loss"])


@pytest.mark.slow
def test_too_few_long_rows_repeat_so_the_harness_trains_on_full_batches(tmp_path):
    """Fewer long rows than steps x batch: the file repeats them, so the trainer's epoch holds every step in full
    batches (on a GPU at 512 tokens, 20 alpaca-demo rows at batch 8 had given the harness steps of 8, 8, 4 rows)."""
    n = training.write_long_rows(TINY["model"], TINY["data"], 128, 1, str(tmp_path / "all.json"))["rows"]
    batch, steps = n + 1, 2  # a batch larger than the distinct rows: without repeats every step would hold n
    out = tmp_path / "rows.json"
    info = training.write_long_rows(TINY["model"], TINY["data"], 128, (1 + steps) * batch, str(out))
    rows = json.loads(out.read_text())
    assert not info["enough"] and info["rows"] == n and info["written"] == len(rows) == (1 + steps) * batch
    assert rows[n] == rows[0]
    h = training.child_harness(**TINY, method="lora", precision="fp32", data_path=str(out), max_length=128,
                               batch_size=batch, warmup=1, steps=steps, workdir=str(tmp_path / "h"))
    assert h["step_tokens"] == [batch * 128] * steps


@pytest.mark.slow  # TRL's SFTTrainer (its own tokenisation, gradient checkpointing): ~20-30 s on a shared 2-core CPU
def test_trl_baseline_with_its_defaults(long_rows, tmp_path):
    t = training.child_trl(**TINY, method="lora", precision="fp32", data_path=long_rows, max_length=128, batch_size=2,
                           warmup=1, steps=2, workdir=str(tmp_path / "t"))
    assert t["steps"] == 2 and t["tokens_per_s"] > 0
    assert t["tokens_per_step"] == 2 * 128  # its own tokenisation of the same long rows also fills max_length
    assert t["trainable_params"] > 0
    assert t["gradient_checkpointing"] is True  # TRL's default, which the comparison documents


def test_fused_adamw_updates_the_weights_as_the_for_loop_does():
    # train.optimizer defaults to adamw_torch_fused: the same update as the for-loop kernel, up to rounding
    r = training.child_optimizer("tiny-llama", reps=2)
    kinds = r["kinds"]
    assert set(kinds) == set(training.OPTIMIZER_KINDS) and r["params"] > 0
    assert kinds["foreach"]["max_abs_diff"] == 0.0
    assert 0.0 <= kinds["fused (adamw_torch_fused)"]["max_abs_diff"] < 1e-6
    assert all(k["step_s"] > 0 and k["first_step_s"] > 0 for k in kinds.values())


@pytest.mark.slow  # bitsandbytes' import and a 4-bit load: ~6 s
def test_qlora_baseline_is_really_4bit():
    cfg, net, lora = training._load_plain("tiny-llama", "qlora", "fp32", "alpaca-tiny")
    assert getattr(net, "is_loaded_in_4bit", False) and lora is not None


@pytest.mark.slow
def test_packing_fills_blocks(tmp_path):
    kw = dict(**TINY, method="lora", precision="fp32", data_path="", max_length=128, batch_size=2, warmup=1, steps=2)
    off = training.child_harness(**kw, workdir=str(tmp_path / "off"), packing=False)
    on = training.child_harness(**kw, workdir=str(tmp_path / "on"), packing=True)
    assert on["tokens_per_step"] == 2 * 128  # packed blocks are full
    assert off["tokens_per_step"] < on["tokens_per_step"]


@pytest.mark.slow
def test_perplexity_benchmark_agrees_with_lm_eval():
    r = evaluation.child_perplexity("tiny-llama", docs=1, max_length=64, batch_size=4, reps=1)
    assert r["rel_diff"]["word_perplexity"] < 1e-3
    assert r["ours_s"][0] > 0 and r["lm_eval_s"][0] > 0 and r["tokens"] > 0
    if r["fast_precision"]["dtype"] == "float32":  # a CPU without native bf16: fast mode is exact mode, not re-run
        assert r["fast"] is None and r["fast_s"] == []
    else:  # bf16 where native: timed, and its deviation from exact mode measured
        assert len(r["fast_s"]) == 1 and 0 < r["fast_rel_diff_vs_exact"]["word_perplexity"] < 0.05


@pytest.mark.slow
def test_multiple_choice_benchmark_same_accuracy():
    r = evaluation.child_multiple_choice("tiny-llama", "arc_easy", items=3, batch_size=4, reps=1)
    assert r["ours_acc"] is not None and r["ours_acc"] == r["lm_eval_acc"]


@pytest.mark.slow  # every section at smoke size: ~40 s on a shared 2-core CPU
def test_gpu_benchmark_quick_runs_every_section_on_this_device(tmp_path):
    """benchmarks/gpu.py is run by hand on a lent GPU (benchmarks/results/gpu.json); its smoke size runs here on
    the CPU, so the script cannot rot between the rare sessions that have a GPU."""
    from benchmarks import gpu

    out = tmp_path / "gpu.json"
    assert gpu.main(["--quick", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["sections"]) == {"peak", "mc", "host", "drift", "full", "ppl", "gen", "train"}
    assert not [k for k, v in r["sections"].items() if "error" in v], r["sections"]
    assert r["sections"]["mc"]["result"]["vs_lm_eval"]["identical_predictions"] == r["items"]
    assert r["sections"]["full"]["result"]["exact"]["items"] == r["items"]
    drift = r["sections"]["drift"]["result"]
    assert drift["lm_eval_4_vs_lm_eval_7"]["identical_predictions"] == r["items"]
    assert drift["ours_4_vs_lm_eval_4"]["max_abs_diff"] < 1e-4
    assert r["sections"]["gen"]["result"]["identical_outputs"] == r["sections"]["gen"]["result"]["prompts"]
    rows = r["sections"]["train"]["result"]
    assert {(x["method"], x["impl"]) for x in rows if x.get("tokens_per_s")} == {
        (m, i) for m in ("lora", "full", "qlora") for i in ("harness", "plain")}


def test_flop_bound_counts_shared_prefixes_once_and_the_head_only_where_scored():
    from benchmarks.evaluation import flop_bound, minutes_at_peak, padded_tokens

    assert padded_tokens([3, 9, 1, 9, 5], 2) == 9 * 2 + 5 * 2 + 1
    # one context, two endings: lm-eval pays 4 + 5 positions padded to 5 (10) with the output layer everywhere;
    # the engine one row of 5 (context once, then the second ending's extra token), the output layer on 3 targets
    b = flop_bound([([1, 2, 3, 4], [5]), ([1, 2, 3, 4], [6, 7])], n_body=1.0, n_head=1.0, batch_size=8)
    assert (b["lm_eval_positions"], b["engine_positions"], b["scored_positions"]) == (10, 5, 3)
    assert b["flop_ratio"] == pytest.approx(20 / 8)
    # unrelated requests share nothing: only the output layer saves
    c = flop_bound([([1, 2], [3]), ([7, 8], [9])], n_body=1.0, n_head=0.0)
    assert c["flop_ratio"] == pytest.approx(1.0)
    # the engine's own FLOPs: body 2 x 5 positions + head 2 x 3 targets; attention 4 x width-layers x 5^2 (one row)
    d = flop_bound([([1, 2, 3, 4], [5]), ([1, 2, 3, 4], [6, 7])], n_body=1.0, n_head=1.0, attn_width_layers=10)
    assert (d["engine_flop"], d["engine_attention_flop"]) == (16, 4 * 10 * 25)
    assert minutes_at_peak(d, 1e-9 * 1016 / 60) == pytest.approx(1.0)


@pytest.mark.slow  # lm-eval's task index and data: ~10 s
def test_task_flop_bounds_read_the_tasks_requests_and_the_models_parameters():
    from benchmarks.evaluation import task_flop_bounds

    r = task_flop_bounds("tiny-llama", ["arc_easy"], 4)
    b = r["tasks"]["arc_easy"]
    assert r["n_head"] == 64 * 384 and r["n_body"] > 0  # tiny-llama: hidden 64, vocab 384, tied
    assert b["requests"] == 16 and b["lm_eval_positions"] > b["engine_positions"] > b["scored_positions"] > 0
    assert b["flop_ratio"] > 1


def test_generation_benchmark_counts_tokens():
    r = evaluation.child_generation("tiny-llama", "alpaca-tiny", prompts=3, batch_size=2, new_tokens=3, reps=1)
    assert r["prompts"] == 3 and 0 < r["batched_tokens"] <= 9 and 0 < r["single_tokens"] <= 9
    assert 0 <= r["identical_outputs"] <= 3


def test_stage_timings_name_every_stage():
    first = sweep_overhead.child_stages("tiny-llama", "alpaca-tiny", 128)
    for key in (*sweep_overhead.STAGES, "data_prepare_uncached_s"):
        assert first[key] >= 0, key
    assert first["train_rows"] > 0
    # the first call stored the preparation (or found it); a second trial's preparation is a cache hit
    assert first["data_cache"] in ("hit", "miss")
    assert sweep_overhead.child_stages("tiny-llama", "alpaca-tiny", 128)["data_cache"] == "hit"


@pytest.mark.slow  # bitsandbytes' import and three quantizing loads of the tiny model
def test_qlora_base_benchmark_compares_the_kept_copy_with_quantizing():
    r = sweep_overhead.child_qlora_base("tiny-llama", reps=1)
    assert r["same_tensors"] is True and r["quantize_at_load_s"] > 0 and r["kept_load_s"] > 0
    assert ".bnb-" in r["kept_dir"]


@pytest.mark.slow  # two tiny full fine-tunes in process
def test_last_checkpoint_ab_trains_the_same_either_way():
    rows = sweep_overhead.last_checkpoint_ab("tiny-llama", "alpaca-tiny", steps=4, reps=1)
    assert [r["last_checkpoint"] for r in rows] == ["skipped", "written"]
    assert all(r["status"] == "completed" for r in rows)
    assert rows[0]["final_train_loss"] == rows[1]["final_train_loss"]
    from harness.train import fit

    assert fit.skip_final_checkpoint.__name__ == "skip_final_checkpoint"  # restored


@pytest.mark.slow  # a real `harness sweep` with one trial in a child process: ~30-55 s on a shared 2-core CPU
def test_sweep_overhead_one_trial(tmp_path):
    row = sweep_overhead.measure_sweep(tmp_path, n_trials=1, workers=1, timeout_s=600)
    assert row["completed"] == 1, row.get("error")
    assert row["driver_wall_s"] > row["train_s"] > 0
    assert row["overhead_s"] == pytest.approx(row["driver_wall_s"] - row["train_s"], abs=0.05)
    assert row["process_start_s"] > 0


@pytest.mark.slow  # `harness report` and `harness status` as child processes, the page in Chromium: ~40-60 s on 2 shared cores
def test_report_scale_small_study(tmp_path):
    opts = common.Options.quick_defaults(workdir=tmp_path, report_runs=10)
    sec = report_scale.run(opts)
    rows = {r["command"]: r for r in sec["rows"]}
    assert set(rows) == {"harness report", "harness status", f"report.html ({rows['harness report']['runs']} runs)",
                         "report.html (quickstart-sized, 8 runs)"}
    for name in ("harness report", "harness status"):
        r = rows[name]
        assert not r.get("error"), r.get("error")
        assert r["wall_s"] > 0 and r["peak_rss_mb"] > 0 and r["runs"] >= 10
    for name, r in rows.items():
        if name.startswith("report.html"):
            assert r["html_kb"] > 50
            assert r.get("error") or (r["load_ms"] > 0 and r["ready_ms"] > 0)
    assert sec["goals"][0]["met"] in (True, False)
    assert (tmp_path / "report" / "reports" / report_scale.STUDY / "report.html").exists()


@pytest.mark.slow
def test_run_writes_markdown_and_json(tmp_path):
    assert run.main(["--quick", "--only", "matmul", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "quick.json").read_text())
    assert record["machine"]["cpu_count"] >= 1 and record["machine"]["torch"]
    (sec,) = record["sections"]
    assert {r["dtype"] for r in sec["rows"]} == {"fp32", "bf16"}
    assert all(r["peak_gflops"] and math.isfinite(r["peak_gflops"]) for r in sec["rows"])
    for r in sec["rows"]:  # the peak is the best of the squares and of the model's shapes, in every layout
        assert r["peak_gflops"] >= max(r["square_gflops"], *(r[f"{k}_gflops"] for k in matmul.LAYOUTS)) * 0.999
        assert any(k.startswith("mlp_up.grad_x.") for k in r["products"])
    assert {r["dtype"]: r["bf16"] for r in sec["rows"]}["bf16"] in ("native", "emulated")
    md = (tmp_path / "quick.md").read_text()
    assert "| dtype |" in md and "Peak matmul" in md and record["machine"]["cpu_kind"] in md


def test_budget_spent_reports_not_measured(tmp_path):
    opts = common.Options.quick_defaults(workdir=tmp_path, deadline=0.0, methods=("lora",), precisions=("fp32",),
                                         impls=("harness",))
    sec = packing.run(opts)
    assert all("time budget" in r["error"] for r in sec["rows"])
    assert sec["goals"][0]["met"] is None


@pytest.mark.slow  # the tiny model's load and 8 timings of 9 reps at up to 1,024 positions: ~5 s
def test_attention_benchmark_times_both_kernels_at_the_models_head_shape():
    """`python -m benchmarks.evaluation --attention` (it failed with AttributeError after attention's shape helper
    was renamed, unnoticed: no test ran it)."""
    from benchmarks.evaluation import ATTENTION_SHAPES, attention_kernels

    rows = attention_kernels("tiny-llama", reps=1)
    assert [(r["dtype"], r["rows"], r["positions"]) for r in rows] == [
        (d, b, p) for d in ("bfloat16", "float32") for b, p in ATTENTION_SHAPES]
    assert all(r["sdpa_ms"] > 0 and r["blocked_ms"] > 0 and len(r["heads"]) == 3 for r in rows)
