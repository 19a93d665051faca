"""Evaluation orchestration (harness/evaluate.py): config hashes, `run_suites` on a model in memory
(peft-wrapped, as the trainer calls it), and `harness eval` end to end on tiny run directories.

    python -m pytest tests/test_evaluate.py -x -q
"""

from __future__ import annotations

import pytest
import yaml

from harness import atomic, cli, config, paths
from harness.eval.registry import config_hash, versions
from harness.eval.suites import run_suites, with_metric_meta
from harness.model.load import load_model_and_tokenizer
from harness.run.record import find_run_dirs, flat_metrics, read_eval, read_samples, read_summary

FAST_PPL = "eval.perplexity=[{name:wikitext2,path:wikitext-2-raw/wiki.test.raw,max_length:64,stride:64,batch_size:8,max_tokens:300}]"


def _cfg(*extra):
    return config.compose(["model=tiny-llama", "data=alpaca-tiny", "tracker=none", "train.max_length=128", *extra])


def test_config_hash_tracks_config_and_files(tmp_path):
    f = tmp_path / "task.yaml"
    f.write_text("a: 1\n")
    h = config_hash({"task": "x", "limit": 5}, [f])
    assert len(h) == 16 and int(h, 16) >= 0
    assert h == config_hash({"limit": 5, "task": "x"}, [f])  # key order does not matter
    assert h == config_hash({"task": "x", "limit": 5, "batch_size": 64}, [f])  # nor batch size
    assert h != config_hash({"task": "x", "limit": 6}, [f])
    f.write_text("a: 2\n")
    assert h != config_hash({"task": "x", "limit": 5}, [f])


def test_versions_name_the_scoring_libraries():
    v = versions()
    for name in ("harness", "lm_eval", "sacrebleu", "rouge_score", "transformers"):
        assert name in v
    assert v["lm_eval"] == "0.4.13"


def test_every_suite_entry_gets_the_metadata_of_its_metrics():
    entry = with_metric_meta({"kind": "lm_eval", "metrics": {"acc": 0.5, "acc_stderr": 0.1, "mcc": 0.2}})
    assert entry["metric_meta"] == {
        "acc": {"higher_is_better": True, "scale": "binary", "per_item": "acc"},
        "acc_stderr": {"higher_is_better": None, "scale": "fraction", "per_item": None},
        "mcc": {"higher_is_better": None, "scale": "raw", "per_item": None},  # declared by nobody: said so
    }


@pytest.mark.slow
def test_every_shipped_eval_config_composes():
    for name in config.group_options("eval"):
        cfg = _cfg(f"eval={name}")
        text = (paths.conf_dir() / "eval" / f"{name}.yaml").read_text()
        header = [line for line in text.splitlines() if line.startswith("#")]
        assert text.startswith("# ") and any(line.startswith("#   harness ") for line in header), name
        assert cfg.eval.name == name
    quick = _cfg("eval=quick").eval
    assert quick.lm_eval.tasks == ["hellaswag", "arc_easy"] and quick.lm_eval.limit == 20
    assert quick.perplexity[0].max_tokens == 4000 and quick.val_loss


@pytest.mark.slow
def test_run_suites_on_a_peft_model_in_memory(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    cfg = _cfg("eval=quick", "eval.lm_eval.tasks=[arc_easy]", "eval.lm_eval.limit=3", FAST_PPL)
    base, tok = load_model_and_tokenizer(cfg.model)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.train()
    suites = run_suites(model, tok, cfg, tmp_path, progress=False)
    assert set(suites) == {"val", "wikitext2", "arc_easy"}
    assert model.training  # the trainer's mode is given back
    ev = read_eval(tmp_path)
    assert set(ev["suites"]) == set(suites) and ev["versions"]["lm_eval"] == "0.4.13"
    for name, entry in ev["suites"].items():
        assert len(entry["config_hash"]) == 16, name
        assert set(entry["metric_meta"]) == set(entry["metrics"]), name  # recorded for every metric
    assert ev["suites"]["arc_easy"]["metric_meta"]["acc"] == {"higher_is_better": True, "scale": "binary", "per_item": "acc"}
    assert "acc" in read_samples(tmp_path, "arc_easy")[0]  # the per-item key is in the samples rows
    assert ev["suites"]["wikitext2"]["metric_meta"]["word_perplexity"]["higher_is_better"] is False
    assert ev["suites"]["val"]["metric_meta"]["loss"] == {"higher_is_better": False, "scale": "raw", "per_item": None}
    w = ev["suites"]["wikitext2"]
    rows = read_samples(tmp_path, "wikitext2")
    assert w["n"] == len(rows) >= 1 and w["tokens"] == sum(r["tokens"] for r in rows) >= 300
    assert torch.isfinite(torch.tensor(w["metrics"]["word_perplexity"]))
    assert ev["suites"]["val"]["metrics"]["perplexity"] > 1
    flat = flat_metrics(tmp_path)
    assert "arc_easy.acc" in flat and "wikitext2.bits_per_byte" in flat and "val.loss" in flat
    # a trained run (the default): each suite's items against alpaca-tiny's training split, as many as it scored
    contam = {name: entry["contamination"] for name, entry in ev["suites"].items()}
    assert contam["arc_easy"]["items"] == 3 and contam["wikitext2"]["items"] == w["n"]
    assert contam["val"]["items"] == 10 and all(c["train_data"] == "alpaca-tiny" for c in contam.values())


def _baseline_run_dir(root, *overrides):
    cfg = _cfg(*overrides)
    run_dir = root / "tiny-llama-base" / "r1"
    run_dir.mkdir(parents=True)
    atomic.write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(cfg)))
    atomic.write_text(run_dir / "overrides.yaml", yaml.safe_dump(["model=tiny-llama", "data=alpaca-tiny"]))
    atomic.write_json(run_dir / "summary.json", {"schema": 1, "status": "baseline", "method": "base"})
    return run_dir


@pytest.mark.slow
def test_harness_eval_run_dir_end_to_end(tmp_path, capsys):
    run_dir = _baseline_run_dir(tmp_path, "eval=quick", "eval.lm_eval.limit=3", FAST_PPL)
    assert cli.main(["eval", str(run_dir), "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"[harness] results: {run_dir / 'eval.json'}"
    ev = read_eval(run_dir)
    assert set(ev["suites"]) == {"val", "wikitext2", "hellaswag", "arc_easy"}
    for task in ("hellaswag", "arc_easy"):
        e = ev["suites"][task]
        assert e["n"] == 3 and e["limit"] == 3 and (run_dir / e["samples"]).exists()
        assert (run_dir / e["lm_eval_results"]).exists()
    assert (read_summary(run_dir) or {})["eval_time_s"] > 0
    assert not any("contamination" in e for e in ev["suites"].values())  # a base model saw no training data

    # extra eval overrides are composed with the run's overrides.yaml; other suites are kept
    assert cli.main(["eval", str(run_dir), "eval=perplexity", FAST_PPL.replace("max_tokens:300", "max_tokens:100"),
                     "--quiet"]) == 0
    ev2 = read_eval(run_dir)
    assert ev2["suites"]["wikitext2"]["tokens"] <= ev["suites"]["wikitext2"]["tokens"]
    assert ev2["suites"]["wikitext2"]["config_hash"] != ev["suites"]["wikitext2"]["config_hash"]
    assert "hellaswag" in ev2["suites"]


@pytest.mark.slow
def test_harness_eval_with_an_adapter_changes_the_numbers(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    run_dir = _baseline_run_dir(tmp_path, "eval=perplexity", FAST_PPL)
    cfg = config.load_run_config(run_dir)
    base, tok = load_model_and_tokenizer(cfg.model)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)  # a non-zero adapter, so it must change the result
    peft_model.save_pretrained(str(run_dir / "adapter"))
    assert cli.main(["eval", str(run_dir), "--quiet"]) == 0
    with_adapter = read_eval(run_dir)["suites"]["wikitext2"]["metrics"]["word_perplexity"]
    del base, peft_model
    base_suites = run_suites(load_model_and_tokenizer(cfg.model)[0], tok, cfg, tmp_path / "b",
                                      progress=False)
    assert with_adapter != pytest.approx(base_suites["wikitext2"]["metrics"]["word_perplexity"], rel=1e-4)


@pytest.mark.slow
def test_harness_eval_loads_full_weights_from_model_dir(tmp_path):
    run_dir = _baseline_run_dir(tmp_path, "eval=perplexity", FAST_PPL)
    cfg = config.load_run_config(run_dir)
    model, tok = load_model_and_tokenizer(cfg.model)
    model.save_pretrained(str(run_dir / "model"))
    tok.save_pretrained(str(run_dir / "model"))
    atomic.write_json(run_dir / "summary.json", {"schema": 1, "status": "completed", "method": "full"})
    assert cli.main(["eval", str(run_dir), "--quiet"]) == 0
    got = read_eval(run_dir)["suites"]["wikitext2"]
    ref = run_suites(model, tok, cfg, tmp_path / "ref", progress=False)["wikitext2"]
    assert got["metrics"]["word_perplexity"] == pytest.approx(ref["metrics"]["word_perplexity"], rel=1e-6)
    assert got["config_hash"] == ref["config_hash"]


@pytest.mark.slow
def test_harness_eval_base_model_creates_a_baseline_run(tmp_path, capsys):
    rc = cli.main(["eval", "model=tiny-llama", "data=alpaca-tiny", "tracker=none", "eval=perplexity", FAST_PPL,
                   f"output_dir={tmp_path}", "--quiet"])
    assert rc == 0
    (run_dir,) = find_run_dirs(tmp_path)
    assert run_dir.parent.name == "tiny-llama-base"
    summary = read_summary(run_dir)
    assert summary["status"] == "baseline" and summary["method"] == "base" and summary["model"] == "tiny-llama"
    manifest = atomic.read_json(run_dir / "manifest.json")
    assert manifest["model"]["name"] == "tiny-llama" and manifest["packages"]["lm_eval"] == "0.4.13"
    assert config.load_run_config(run_dir).eval.name == "perplexity"
    assert "wikitext2" in read_eval(run_dir)["suites"]
    assert "contamination" not in read_eval(run_dir)["suites"]["wikitext2"]
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"[harness] results: {run_dir / 'eval.json'}"


def test_harness_eval_errors_name_the_fix(tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path / "nope")]) == 2
    assert "neither an existing run directory nor an override" in capsys.readouterr().err
    run_dir = _baseline_run_dir(tmp_path, "eval=quick")
    assert cli.main(["eval", str(run_dir), "model=smollm2-135m"]) == 2
    assert "only eval settings can change" in capsys.readouterr().err
    assert cli.main(["eval", "eval=quick"]) == 2
    assert "model=NAME" in capsys.readouterr().err
    (run_dir / "summary.json").unlink()
    assert cli.main(["eval", str(run_dir), "--quiet"]) == 2
    assert "neither adapter/adapter_config.json nor model/config.json" in capsys.readouterr().err


def test_rescore_adds_metrics_from_saved_samples_without_decoding(tmp_path, capsys):
    gen = ["eval=e2e", "eval.generation.0.limit=3", "eval.generation.0.max_new_tokens=4", "eval.generation.0.batch_size=3"]
    run_dir = _baseline_run_dir(tmp_path, *gen, "eval.generation.0.metrics=[bleu]")
    assert cli.main(["eval", str(run_dir), "--quiet"]) == 0
    before = read_eval(run_dir)["suites"]["e2e"]
    samples = (run_dir / before["samples"]).read_text()
    assert set(before["metrics"]) == {"bleu"}

    assert cli.main(["eval", str(run_dir), "--rescore", *gen, "eval.generation.0.metrics=[bleu,nist,cider]", "--quiet"]) == 0
    after = read_eval(run_dir)["suites"]["e2e"]
    assert set(after["metrics"]) == {"bleu", "nist", "cider"} and after["rescored_from_samples"]
    assert after["metrics"]["bleu"] == before["metrics"]["bleu"]  # same predictions, same score
    assert (run_dir / before["samples"]).read_text() == samples  # nothing was generated again
    assert after["config_hash"] != before["config_hash"] and after["n"] == before["n"] == 3
    assert set(before["metric_meta"]) == {"bleu"} and set(after["metric_meta"]) == {"bleu", "nist", "cider"}
    assert after["metric_meta"]["nist"] == {"higher_is_better": True, "scale": "raw", "per_item": None}
    assert "bleu" in atomic.read_jsonl(run_dir / before["samples"])[0]  # bleu's per-item key

    # other decoding settings would make the saved predictions the wrong ones: refused
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir), "--rescore", "eval=e2e", "eval.generation.0.limit=3",
                     "eval.generation.0.max_new_tokens=9", "--quiet"]) == 2
    assert "max_new_tokens" in capsys.readouterr().err


def test_an_experiment_that_sets_the_model_needs_no_model_override(monkeypatch, tmp_path):
    """`harness eval experiment=reproduce-smollm2-zeroshot` (the README's command) reaches the base-model
    evaluation; with neither model= nor experiment= the CLI says what to give."""
    seen = []
    from harness.commands import eval as eval_command

    monkeypatch.setattr(eval_command, "evaluate_base", lambda overrides, progress=True: seen.append(overrides) or tmp_path)
    assert cli.main(["eval", "experiment=reproduce-smollm2-zeroshot", "eval.lm_eval.limit=5"]) == 0
    assert seen == [["experiment=reproduce-smollm2-zeroshot", "eval.lm_eval.limit=5"]]
    assert cli.main(["eval", "eval=quick"]) == 2
