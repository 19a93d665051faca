"""Shell completion (harness/commands/completion.py): the completer is tested directly on command lines, and
the bash script end to end in bash with `harness` on PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli
from harness.commands.completion import bash_words, complete
from harness.config import group_options

REPO = Path(__file__).resolve().parent.parent


def test_subcommands_and_global_options():
    assert complete("harness ") == ["validate", "train", "eval", "sweep", "status", "report", "human", "judge", "completion"]
    assert complete("harness tr") == ["train"]
    assert complete("harness --v") == ["--version"]
    assert complete("harness human ") == ["export", "import", "elo"]
    assert complete("harness completion ") == ["bash", "zsh"]


def test_config_groups_and_their_options():
    top = complete("harness train ")
    assert {"model=", "method=", "data=", "train=", "eval=", "tracker=", "experiment="} <= set(top)
    assert {"model.", "train.", "run_id=", "output_dir="} <= set(top)
    assert complete("harness train model=") == [f"model={o}" for o in group_options("model")]
    assert "model=smollm2-135m" in complete("harness train model=")
    assert complete("harness validate model=sm") == ["model=smollm2-135m"]
    assert complete("harness train method=ql") == ["method=qlora", "method=qlora-fp4"]
    assert complete("harness train +experiment=reproduce-s") == ["+experiment=reproduce-smollm2-zeroshot"]
    assert complete("harness sweep quickstart meth") == ["method.", "method="]  # after the spec: overrides


def test_config_keys_and_their_values():
    assert "train.lr=" in complete("harness train train.")
    assert complete("harness train train.prec") == ["train.precision="]
    assert complete("harness train train.precision=") == ["train.precision=auto", "train.precision=fp32",
                                                         "train.precision=bf16", "train.precision=fp16"]
    assert complete("harness train train.packing=") == ["train.packing=true", "train.packing=false"]
    assert "eval.lm_eval.limit=" in complete("harness eval model=tiny-llama eval.lm_eval.")
    assert complete("harness train nosuch.") == []


def test_command_options_and_their_choices():
    assert {"--cfg", "--config-dir", "--root", "--force"} <= set(complete("harness train --"))
    assert complete("harness train --cfg ") == ["job"]
    assert complete("harness train --root ") == []  # a folder: the shell completes file names
    assert complete("harness report demo --direction ") == ["max", "min"]
    assert "--worker" not in complete("harness sweep x --")  # hidden options stay hidden


def test_user_config_folders_on_the_line_add_options(tmp_path):
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "my-llama.yaml").write_text("name: my-llama\n")
    before = os.environ.get("HARNESS_CONFIG_PATH")
    assert "model=my-llama" not in complete("harness train model=")
    assert "model=my-llama" in complete(f"harness train --config-dir {tmp_path / 'mine'} model=")
    assert os.environ.get("HARNESS_CONFIG_PATH") == before  # completing changes nothing


def test_sweep_specs_and_studies_under_the_root(tmp_path):
    assert "quickstart" in complete("harness sweep ")
    assert complete("harness sweep quicks") == ["quickstart"]
    assert complete("harness sweep sweeps/") == []  # a path: the shell completes file names
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "lr_search.db").write_bytes(b"")
    assert complete(f"harness status --root {tmp_path} ") == ["lr_search"]
    assert complete(f"harness report --root={tmp_path} lr") == ["lr_search"]


def test_bash_gets_the_part_after_its_word_break():
    assert bash_words(["model=smollm2-135m"], "model=sm", "\"'><=;|&(:") == ["smollm2-135m"]
    assert bash_words(["train"], "tr", "\"'><=;|&(:") == ["train"]


def test_the_completion_command(capsys):
    assert cli.main(["completion", "bash"]) == 0
    assert "complete -o default -F _harness_complete harness" in capsys.readouterr().out
    assert cli.main(["completion", "zsh"]) == 0
    assert "compdef _harness harness" in capsys.readouterr().out
    assert cli.main(["completion", "--complete=harness train model=sm", "--shell", "bash"]) == 0
    assert capsys.readouterr().out.split() == ["smollm2-135m"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_bash_script_completes_in_bash(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "harness"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m harness \"$@\"\n")
    wrapper.chmod(0o755)
    script = subprocess.run([str(wrapper), "completion", "bash"], capture_output=True, text=True, check=True).stdout
    probe = script + (
        'compopt() { :; }\n'  # only callable from inside real completion
        't() { COMP_LINE="$1"; COMP_POINT=${#1}; _harness_complete; echo "${COMPREPLY[*]}"; }\n'
        't "harness tr"\nt "harness train model=smo"\nt "harness train train.precision=b"\n')
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.stdout.splitlines() == ["train", "smollm2-135m", "bf16"], out.stderr


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh (apt-get install zsh)")
def test_the_zsh_script_adds_whole_words(tmp_path):
    """The zsh function with compadd stubbed: whole words, no space after `key=` / `key.`, file names otherwise."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "harness").write_text(f"#!/bin/sh\nexec {sys.executable} -m harness \"$@\"\n")
    (bin_dir / "harness").chmod(0o755)
    script = subprocess.run([str(bin_dir / "harness"), "completion", "zsh"], capture_output=True, text=True,
                            check=True).stdout
    probe = ("compdef() { :; }\ncompadd() { print -r -- \"compadd $*\"; }\n_files() { print _files; }\n" + script +
             'for l in "harness train model=smo" "harness train train.prec" "harness sweep sweeps/"; do '
             'LBUFFER=$l; _harness; done\n')
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(["zsh", "-f", "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.stdout.splitlines() == ["compadd -- model=smollm2-135m", "compadd -S  -- train.precision=", "_files"], \
        out.stderr
