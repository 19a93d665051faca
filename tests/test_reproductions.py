"""Reproduction recipes cannot rot: each composes, and the data-type recipe works end to end on the
tiny model (quantized base evaluation, the recipe's table and its ordering check)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness import atomic, config
from harness.recipes import qlora_dtypes


def test_experiment_recipes_compose_with_references():
    gpu = config.compose(["experiment=reproduce-lora-e2e-gpu", "method=lora"])
    assert gpu.model.name == "gpt2-medium" and gpu.method.r == 4 and gpu.method.alpha == 32
    assert gpu.train.label_smoothing == 0.1 and gpu.eval.generation[0].num_beams == 10
    assert {r["metric"] for r in gpu.references} >= {"e2e.bleu", "e2e.rougeL"}
    zs = config.compose(["experiment=reproduce-smollm2-zeroshot"])
    assert zs.eval.lm_eval.tasks == ["hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "openbookqa"]
    assert zs.eval.lm_eval.limit == 0 and zs.eval.mode == "exact"  # the full sets, lm-eval's numbers
    assert zs.eval.perplexity == [] and not zs.eval.val_loss
    assert all("source" in r for r in zs.references)
    # the same-model references are judged in standard errors, each with the published item count
    judged = [r for r in zs.references if r.get("tolerance") is not None]
    assert judged and all(r["tolerance"] == "stderr" and r["n"] >= 1000 for r in judged)
    # no published number is made up for the two tasks without a source
    assert not any(r["metric"].startswith(("winogrande.", "openbookqa.")) for r in zs.references)


def _fake_run(root, model, method, ppl):
    d = root / f"{model}-{method}"
    atomic.write_json(d / "summary.json", {"status": "baseline", "model": model, "method": method, "model_bytes": 1000})
    atomic.write_json(d / "eval.json", {"suites": {"wikitext2": {"metrics": {"word_perplexity": ppl}}}})
    return d


def test_dtype_table_and_ordering_check(tmp_path):
    dirs = [_fake_run(tmp_path, "m", "base", 20.0), _fake_run(tmp_path, "m", "base-nf4-dq", 21.0),
            _fake_run(tmp_path, "m", "base-fp4-dq", 22.5), _fake_run(tmp_path, "m", "base-nf4", 23.0),
            _fake_run(tmp_path, "m", "base-fp4", 22.0)]
    res = qlora_dtypes.compare(qlora_dtypes.collect(dirs))["m"]
    rows = {r["dtype"]: r for r in res["rows"]}
    assert rows["base-nf4-dq"]["increase"] == 1.0 and abs(rows["base-fp4-dq"]["increase_pct"] - 12.5) < 1e-9
    assert res["checks"] == {"NF4 < FP4": False, "NF4 + DQ < FP4 + DQ": True}
    assert "does NOT hold" in qlora_dtypes.to_markdown({"m": res})
    near = qlora_dtypes.compare(qlora_dtypes.collect(dirs + [_fake_run(tmp_path, "m", "base-int8", 20.2)]))["m"]
    assert near["checks"]["Int8 closer to unquantized than every 4-bit type"] is True
    far = qlora_dtypes.compare(qlora_dtypes.collect(dirs + [_fake_run(tmp_path, "m", "base-int8", 21.5)]))["m"]
    assert far["checks"]["Int8 closer to unquantized than every 4-bit type"] is False


@pytest.mark.slow
def test_quantized_base_evaluation_on_tiny_model(tmp_path):
    for method in ("lora", "qlora"):  # lora = the unquantized base (method.quant=none)
        r = subprocess.run([sys.executable, "-m", "harness", "eval", "model=tiny-llama", f"method={method}",
                            "eval=perplexity", "eval.perplexity.0.max_tokens=300", "tracker=none",
                            f"output_dir={tmp_path / 'runs'}", "name=dtypes", f"run_id={method}"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = qlora_dtypes.compare(qlora_dtypes.collect(sorted((tmp_path / "runs" / "dtypes").iterdir())))
    rows = {r["dtype"]: r for r in res["tiny-llama"]["rows"]}
    assert set(rows) == {"base", "base-nf4-dq"}
    assert rows["base-nf4-dq"]["model_bytes"] < rows["base"]["model_bytes"]
    assert rows["base-nf4-dq"]["perplexity"] != rows["base"]["perplexity"]  # 4-bit weights change the outputs


def _run(args, tmp_path, timeout=900):
    r = subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow
def test_lora_e2e_recipe_runs_and_reports_beside_the_paper(tmp_path):
    """The README's E2E command pair on the tiny model: two training steps, beam 2 on three MRs."""
    runs, storage, out = tmp_path / "runs", f"sqlite:///{tmp_path / 'e2e.db'}", tmp_path / "reports"
    # train.max_length=256: the tiny tokenizer splits E2E prompts into up to ~150 tokens (SmolLM2: under 128)
    _run(["sweep", "sweeps/reproduce-lora-e2e.yaml", "model=tiny-llama", "train.max_steps=2", "train.warmup_steps=0",
          "train.max_length=256",
          "train.eval_every=1", "eval.generation.0.limit=3", "eval.generation.0.num_beams=2",
          "eval.generation.0.max_new_tokens=8", "eval.generation.0.metrics=[bleu,nist,cider,rouge]",  # METEOR: its own slow test
          "--runs-root", str(runs), "--storage", storage], tmp_path)
    stdout = _run(["report", "reproduce-lora-e2e", "--runs-root", str(runs), "--storage", storage, "--out", str(out)],
                  tmp_path)
    md = (out / "reproduce-lora-e2e" / "report.md").read_text()
    assert str(out / "reproduce-lora-e2e") in stdout
    assert "Hu et al. 2021" in md and "70.4" in md  # the paper's numbers beside ours
    assert "e2e.bleu" in md and "lora" in md and "full" in md


@pytest.mark.slow
def test_smollm2_zeroshot_recipe_runs_and_reports_beside_the_references(tmp_path):
    """The zero-shot recipe on the tiny model with three items per task; the report shows the references."""
    runs, out = tmp_path / "runs", tmp_path / "reports"
    _run(["eval", "experiment=reproduce-smollm2-zeroshot", "model=tiny-llama", "data=alpaca-tiny",
          "eval.lm_eval.limit=3", "tracker=none", f"output_dir={runs}"], tmp_path)
    stdout = _run(["report", "reproduce-smollm2-zeroshot", "--runs-root", str(runs), "--out", str(out)], tmp_path)
    md = (out / "reproduce-smollm2-zeroshot" / "report.md").read_text()
    assert str(out / "reproduce-smollm2-zeroshot") in stdout
    assert "hellaswag.acc_norm" in md and "independent lm-eval 0-shot run" in md
    # the base-model run is the configuration the references describe: measured, not "not measured"
    rows = [line for line in md.splitlines() if line.startswith("| hellaswag.acc_norm |")]
    assert rows and all("not measured" not in r and "| nan |" not in r for r in rows), rows
    # the tolerance shown is the one used: 2 standard errors, with the parts it is made of
    judged = [r for r in rows if "independent lm-eval" in r]
    assert judged and "2 x sqrt(SE ours^2 + SE published^2)" in judged[0] and "published SE from n=10042" in judged[0]
    assert "tolerance |" in md and ("within tolerance" in judged[0] or "outside tolerance" in judged[0])


def test_stderr_tolerance_from_both_standard_errors():
    """|ours - published| <= z sqrt(se_ours^2 + se_pub^2); se_pub given, or from n and the value; none: no claim."""
    import math

    from harness.report.aggregate import Config
    from harness.report.build import reference_rows, stderr_tolerance

    tol, basis = stderr_tolerance({"tolerance": "stderr", "n": 2500}, 0.5, 0.01)
    assert tol == 2 * math.sqrt(0.01 ** 2 + 0.25 / 2500) and "n=2500" in basis
    assert stderr_tolerance({"tolerance_stderr": 3, "stderr": 0.02}, 0.5, 0.0)[0] == 3 * 0.02
    assert stderr_tolerance({"tolerance": "stderr"}, 0.5, 0.01)[0] is None  # no published SE: no status claimed

    class R:  # a run's flat metrics: the value and its standard error
        metrics = {"t.acc": 0.45, "t.acc_stderr": 0.01}

    cfg = Config("k", {"model": "m"}, [R()], True, label="m", cells={"t.acc": {"mean": 0.45, "n": 1}})
    near = {"metric": "t.acc", "value": 0.47, "tolerance": "stderr", "n": 2500}  # 0.02 <= 2 sqrt(2e-4) = 0.028
    far = {**near, "value": 0.50}
    fixed = {"metric": "t.acc", "value": 0.50, "tolerance": 0.03}
    rows = reference_rows([near, far, fixed, {"metric": "t.acc", "value": 0.5, "tolerance": "stderr"}], [cfg], cfg)
    assert [r["status"] for r in rows][:3] == ["within tolerance", "outside tolerance", "outside tolerance"]
    assert rows[0]["tolerance"] == 2 * math.sqrt(0.01 ** 2 + 0.47 * 0.53 / 2500)
    assert rows[2]["tolerance"] == 0.03 and rows[2]["tolerance_basis"] == "fixed"
    assert rows[3]["tolerance"] is None and rows[3]["status"].startswith("no tolerance: no published standard error")


def test_zeroshot_wall_time_estimate_is_items_over_rate():
    from harness.recipes.zeroshot_rate import estimate

    rates = {"a": {"items_per_cpu_s": 2.0, "items_per_wall_s": 0.5}, "b": {"items_per_cpu_s": 1.0, "items_per_wall_s": 1.0}}
    assert estimate(rates, {"a": 100, "b": 30}) == {"full_sets_cpu_s": 80.0, "full_sets_wall_s": 230.0}
