"""Comparisons you can trust: a model or data set given by path is named after it (and a model sized from its
own config.json), the user's own config folders add options, and what would fail only after the model has
loaded fails in `harness validate` and a sweep's dry run (harness/config/identity.py, search.py,
harness/model/preflight.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import config, paths
from harness.config.identity import safe_name
from harness.model import preflight as pf

REPO = Path(__file__).resolve().parent.parent
ALPACA_TINY = paths.data_root() / "alpaca" / "alpaca_tiny.json"


def harness(args, cwd=REPO, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


# ----------------------------------------------------------------------------- 1. model by path
def byo(model_dir, *extra):
    return ["model.source=hub", f"model.path={model_dir}", "train.max_length=128", *extra]


def test_a_model_given_by_path_is_named_and_sized_after_itself(byo_model_dir):
    cfg = config.compose(byo(byo_model_dir))
    m = cfg.model
    assert m.name == "My-Model-v2"  # not smollm2-135m, the default option it was composed into
    assert m.context_length == 256  # its config.json, not smollm2's 8192
    assert config.target_modules(cfg) == ["all-linear"] and m.linear_modules == []  # not smollm2's list
    assert m.licence == "" and m.tested_here is False
    assert config.default_run_name(cfg) == "My-Model-v2-lora-alpaca-demo"


def test_what_the_user_sets_for_a_model_given_by_path_wins(byo_model_dir):
    cfg = config.compose(byo(byo_model_dir, "model.name=mine", "model.context_length=200",
                             "model.lora_target_modules=[q_proj,v_proj]"))
    assert (cfg.model.name, cfg.model.context_length, config.target_modules(cfg)) == ("mine", 200, ["q_proj", "v_proj"])


def test_max_length_beyond_a_model_given_by_path_fails_at_compose(byo_model_dir):
    with pytest.raises(config.ConfigError) as e:
        config.compose(["model.source=hub", f"model.path={byo_model_dir}"])  # train.max_length=512 > 256
    assert "train.max_length=512 is beyond model=My-Model-v2's context length (256)" in str(e.value)


def test_a_hub_model_without_network_says_what_to_set():
    with pytest.raises(config.ConfigError) as e:
        config.compose(["model.source=hub", "model.path=some-org/not-cached-model-xyz"])
    assert "model.context_length=N" in str(e.value) and "huggingface-cli download" in str(e.value)
    cfg = config.compose(["model.source=hub", "model.path=some-org/not-cached-model-xyz", "model.context_length=4096"])
    assert cfg.model.name == "not-cached-model-xyz"


def test_model_path_without_source_hub_and_a_missing_dir_are_errors(tmp_path):
    with pytest.raises(config.ConfigError) as e:
        config.compose([f"model.path={tmp_path}"])  # the default option is a gguf-package: path ignored
    assert "add model.source=hub" in str(e.value)
    with pytest.raises(config.ConfigError) as e:
        config.compose(["model.source=hub", f"model.path={tmp_path / 'nope'}"])
    assert "is not a directory" in str(e.value)


def test_safe_name():
    assert safe_name("My Model v2", "x") == "My-Model-v2"
    assert safe_name("..weird//name..", "x") == "weird-name"
    assert safe_name("???", "fallback") == "fallback"
    for raw in ("a b", "é/ü", "-.x..y.-", "x" * 300):
        paths.check_name(safe_name(raw, "x"))


# ------------------------------------------------------------------------------ 2. data by path
def test_a_data_set_given_by_path_is_named_after_its_file(tmp_path):
    f = tmp_path / "my recipes.jsonl"
    f.write_text("")
    assert config.compose([f"data.path={f}", "data.format=prompt_completion"]).data.name == "my-recipes"
    assert config.compose(["data.path=alpaca/alpaca_tiny.json"]).data.name == "alpaca_tiny"
    assert config.compose(["data.path=some-org/some_set"]).data.name == "some_set"  # a Hub data set id
    assert config.compose([f"data.path={f}", "data.name=kept"]).data.name == "kept"
    assert config.compose(["data=alpaca-tiny"]).data.name == "alpaca-tiny"  # an option keeps its name


# ------------------------------------------------------------------------ 3. user config folders
@pytest.fixture()
def user_conf(tmp_path, monkeypatch):
    d = tmp_path / "my-conf"
    (d / "data").mkdir(parents=True)
    (d / "model").mkdir()
    (d / "data" / "my-set.yaml").write_text(textwrap.dedent(f"""\
        # my data
        defaults: [alpaca-tiny, _self_]
        name: my-set
        path: {ALPACA_TINY}
        """))
    gpt2 = (REPO / "conf" / "model" / "tiny-gpt2.yaml").read_text().replace("name: tiny-gpt2", "name: tiny-llama")
    (d / "model" / "tiny-llama.yaml").write_text("# my tiny-llama: a GPT-2, in place of the shipped one\n" + gpt2)
    monkeypatch.setenv("HARNESS_CONFIG_PATH", str(d))
    return d


def test_user_folder_adds_options_and_they_are_listed(user_conf):
    assert "my-set" in config.group_options("data") and "alpaca-demo" in config.group_options("data")
    cfg = config.compose(["data=my-set", "model=tiny-llama"])
    assert cfg.data.name == "my-set" and cfg.data.path == str(ALPACA_TINY)
    with pytest.raises(config.ConfigError) as e:
        config.compose(["data=my-sett"])
    assert "Did you mean 'my-set'" in str(e.value) and "my-set" in str(e.value).split("Options:")[1]


def test_a_user_option_named_like_a_shipped_one_wins(user_conf):
    from harness.config.search import shadowed

    cfg = config.compose(["model=tiny-llama"])
    assert cfg.model.tiny.arch == "gpt2"  # the user's file, not conf/model/tiny-llama.yaml
    assert any("model=tiny-llama comes from" in n and str(user_conf) in n for n in shadowed())


def test_user_folder_mistakes_are_reported_with_the_fix(user_conf):
    (user_conf / "config.yaml").write_text("# mine\n")
    (user_conf / "datas").mkdir()
    (user_conf / "data" / "copied.yaml").write_text("# copied\ndefaults: [alpaca-tiny, _self_]\n")
    with pytest.raises(config.ConfigError) as e:
        config.compose(["data=copied"])
    text = str(e.value)
    assert "cannot replace conf/config.yaml" in text and "Did you mean 'data'" in text
    (user_conf / "config.yaml").unlink()
    (user_conf / "datas").rmdir()
    with pytest.raises(config.ConfigError) as e:
        config.compose(["data=copied"])
    assert "says name: alpaca-tiny" in str(e.value) and "Set name: copied" in str(e.value)


@pytest.mark.slow
def test_config_dir_option_on_validate_and_sweep(user_conf, tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_CONFIG_PATH")
    r = harness(["validate", "--config-dir", str(user_conf), "data=my-set", "model=tiny-llama"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "config OK: tiny-llama-lora-my-set" in r.stdout and "replaces the shipped" in r.stdout
    assert harness(["validate", "data=my-set"]).returncode == 2  # without it, no such option
    spec = tmp_path / "s.yaml"
    spec.write_text("study: s\nbase: [model=tiny-llama, tracker=none]\ngrid: {data: [my-set]}\n"
                    "objectives: [{metric: summary.best_val_loss, direction: minimize}]\n")
    r = harness(["sweep", str(spec), "--dry-run", "--config-dir", str(user_conf), "--storage",
                 f"sqlite:///{tmp_path / 's.db'}"])
    assert r.returncode == 0 and "data=my-set" in r.stdout, r.stdout + r.stderr


# --------------------------------------------------------------------------- 5. fail before loading
def test_validate_catches_a_missing_data_file_but_not_a_hub_id(tmp_path):
    errs = pf.preflight(config.compose(["model=tiny-llama", "data.path=alpaca/no_such.json",
                                        f"data.eval_path={tmp_path / 'gone.jsonl'}"]))
    assert len(errs) == 2 and "data root" in errs[0] and "gone.jsonl" in errs[1], errs
    assert pf.preflight(config.compose(["model=tiny-llama", "data.path=some-org/some_set"])) == []
    r = harness(["validate", "--quiet", "model=tiny-llama", "data.path=alpaca/no_such.json"])
    assert r.returncode == 2 and "no such file or directory" in r.stderr, r.stdout + r.stderr


def test_cuda_without_cuda_is_caught_without_importing_torch(monkeypatch):
    cfg = config.compose(["model=tiny-llama", "train.device=cuda"])
    monkeypatch.setattr(pf, "_torch_build", lambda: {"__version__": "2.13.0+cpu", "cuda": None, "hip": None})
    (err,) = pf.preflight(cfg)
    assert "CPU-only build" in err and "train.device=cpu" in err
    monkeypatch.setattr(pf, "_torch_build", lambda: {"__version__": "2.13.0", "cuda": "12.6", "hip": None})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "hides every GPU" in pf.preflight(cfg)[0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(pf, "_nvidia_driver_loaded", lambda: False)
    assert "no NVIDIA driver" in pf.preflight(cfg)[0]
    monkeypatch.setattr(pf, "_nvidia_driver_loaded", lambda: True)
    assert pf.preflight(cfg) == []  # a CUDA build and a driver: the trainer's torch check decides
    assert pf.preflight(config.compose(["model=tiny-llama", "train.device=cpu"])) == []


def test_lora_targets_and_context_of_a_model_given_by_path(byo_model_dir):
    errs = pf.preflight(config.compose(byo(byo_model_dir, "method.target_modules=[q_proj,c_attn]",
                                            "model.context_length=4096", "train.max_length=1024")))
    text = "\n".join(errs)
    assert len(errs) == 3, errs
    assert "'c_attn' is not a Linear layer" in text and "q_proj" in text.split("Choose from:")[1]
    assert "train.max_length=1024 is beyond the context of the model" in text and "(256" in text
    assert pf.preflight(config.compose(byo(byo_model_dir, "method.target_modules=[q_proj,self_attn.v_proj]"))) == []


def test_validate_stays_torch_free_for_a_model_given_by_path_with_all_linear(byo_model_dir):
    code = ("import sys; from harness.cli import main; "
            f"rc = main(['validate', '--quiet', 'model.source=hub', 'model.path={byo_model_dir}', 'train.max_length=128']); "
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip().endswith("0 False"), out.stdout + out.stderr


def test_sweep_dry_run_catches_a_missing_data_file(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("study: s\nbase: [model=tiny-llama, tracker=none]\n"
                    "grid: {data.path: [alpaca/alpaca_tiny.json, alpaca/not_there.json]}\n"
                    "objectives: [{metric: summary.best_val_loss, direction: minimize}]\n")
    r = harness(["sweep", str(spec), "--dry-run", "--storage", f"sqlite:///{tmp_path / 's.db'}"])
    assert r.returncode == 2 and "not_there.json: no such file or directory" in r.stderr, r.stdout + r.stderr
    assert "alpaca_tiny.json: no such" not in r.stderr


def test_byo_model_config_json_is_read_as_json_only(byo_model_dir, tmp_path):
    # a copy whose config.json names only n_positions (GPT-2 style) is sized from it
    d = tmp_path / "gpt2ish"
    shutil.copytree(byo_model_dir, d)
    conf = json.loads((d / "config.json").read_text())
    conf.pop("max_position_embeddings")
    conf["n_positions"] = 192
    (d / "config.json").write_text(json.dumps(conf))
    assert config.compose(["model.source=hub", f"model.path={d}", "train.max_length=128"]).model.context_length == 192
