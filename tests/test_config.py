"""Every shipped config composes; bad configs fail at compose time with every error and its fix."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness import config, paths


@pytest.mark.parametrize("group", config.GROUPS)
def test_every_shipped_group_option_composes(group):
    options = config.group_options(group)
    assert options, f"conf/{group} is empty"
    for opt in options:
        extra = []
        if group == "method" and opt in ("qlora", "qlora-fp4", "lora-8bit"):
            extra = ["model=tiny-llama"]
        cfg = config.compose([f"{group}={opt}", *extra])
        if group != "train":
            assert getattr(cfg, group).name == opt


def test_every_experiment_composes():
    for opt in config.group_options("experiment"):
        config.compose([f"experiment={opt}"])


def test_every_yaml_opens_with_a_comment():
    for p in sorted(paths.conf_dir().rglob("*.yaml")):
        first = p.read_text().lstrip().splitlines()[0]
        assert first.startswith("#"), f"{p} should open with a comment saying what it is and the command"


def test_typo_in_key_suggests_the_right_one():
    with pytest.raises(config.ConfigError) as e:
        config.compose(["train.lrr=1e-4"])
    assert "Did you mean 'lr'" in str(e.value)


def test_unknown_group_option_suggests():
    with pytest.raises(config.ConfigError) as e:
        config.compose(["method=qlroa"])
    assert "Did you mean 'qlora'" in str(e.value)


def test_wrong_type_is_caught():
    with pytest.raises(config.ConfigError) as e:
        config.from_dict({**config.to_dict(config.compose([])), "train": {**config.to_dict(config.compose([]))["train"], "batch_size": "eight"}})
    assert "train.batch_size" in str(e.value) and "expected int" in str(e.value)


def test_cross_field_errors_are_reported_all_at_once():
    with pytest.raises(config.ConfigError) as e:
        config.compose(["model=tiny-gpt2", "method=qlora", "train.lr=0", "train.max_length=100000",
                        "method.target_modules=[q_prj]"])
    errs = e.value.errors
    assert len(errs) == 4, errs
    text = "\n".join(errs)
    assert "needs a quantizable model" in text and "Use method=lora" in text
    assert "train.lr=0" in text and "context length" in text and "'q_prj'" in text


def test_full_finetuning_with_quantization_is_rejected():
    with pytest.raises(config.ConfigError) as e:
        config.compose(["model=tiny-llama", "method=full", "method.quant=nf4"])
    assert "full fine-tuning cannot train quantized weights" in str(e.value)


def test_run_name_cannot_escape_output_dir():
    for bad in ["../evil", "a/b", "..", "/abs"]:
        with pytest.raises(config.ConfigError):
            config.compose([f"name='{bad}'"])


def test_trust_remote_code_is_off_by_default():
    for opt in config.group_options("model"):
        assert config.compose([f"model={opt}"]).model.trust_remote_code is False


def test_validate_command_exit_codes():
    ok = subprocess.run([sys.executable, "-m", "harness", "validate", "--quiet", "model=tiny-llama"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([sys.executable, "-m", "harness", "validate", "method=qlroa", "train.lrr=1"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "Did you mean 'qlora'" in bad.stderr and "Did you mean 'lr'" in bad.stderr


def test_validate_does_not_import_torch():
    code = "import sys; from harness.cli import main; main(['validate','--quiet']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().endswith("False"), out.stdout + out.stderr
