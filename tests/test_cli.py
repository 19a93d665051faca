"""The `harness` command's conventions (harness/cli.py, harness/commands/common.py, harness/config/overrides.py):
--version; one root for runs/, studies/ and reports/ (--root DIR, HARNESS_ROOT, default the current directory);
Hydra's `--cfg job`; a sweep written as overrides (method=lora,qlora) is refused with the spec to write instead;
a key set twice is refused; commas inside lists and quotes are values."""

from __future__ import annotations

import argparse
import importlib
import tomllib
from pathlib import Path

import pytest
import yaml

import harness
from harness import cli, paths
from harness.commands import COMMANDS
from harness.run.record import run_dir_for
from harness.sweep.spec import load_spec
from harness.sweep.storage import default_storage_url


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory that is not the repository, with no HARNESS_ROOT."""
    d = tmp_path / "elsewhere"
    d.mkdir()
    monkeypatch.chdir(d)
    monkeypatch.delenv("HARNESS_ROOT", raising=False)
    return d


# ------------------------------------------------------------------------------------------ --version
def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"harness {harness.__version__}\n"


def test_the_version_is_written_once():
    """pyproject.toml reads it from harness/__init__.py (no second copy to drift)."""
    meta = tomllib.loads((Path(harness.__file__).parent.parent / "pyproject.toml").read_text())
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "harness.__version__"}


# ------------------------------------------------------------------------------------------ the root
def test_root_defaults_to_the_working_directory_and_follows_harness_root(elsewhere, tmp_path, monkeypatch):
    assert paths.root() == elsewhere and paths.runs_root() == elsewhere / "runs"
    assert run_dir_for("runs", "n", "r") == elsewhere / "runs" / "n" / "r"
    monkeypatch.setenv("HARNESS_ROOT", str(tmp_path / "exp"))
    assert paths.studies_dir() == tmp_path / "exp" / "studies" and paths.reports_dir() == tmp_path / "exp" / "reports"
    assert run_dir_for("runs", "n", "r") == tmp_path / "exp" / "runs" / "n" / "r"  # output_dir=runs in conf/config.yaml
    assert run_dir_for(str(tmp_path / "abs"), "n", "r") == tmp_path / "abs" / "n" / "r"  # an absolute one as it is
    assert default_storage_url("s") == f"sqlite:///{tmp_path / 'exp' / 'studies' / 's.db'}"


def _study(root: Path, name: str = "demo") -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (root / "studies").mkdir(parents=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{root / 'studies' / f'{name}.db'}")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))


def test_status_works_from_any_folder_with_root_or_harness_root(elsewhere, tmp_path, capsys, monkeypatch):
    exp = tmp_path / "exp"
    _study(exp)
    rc, _, err = _main(capsys, "status", "demo")
    assert rc == 1 and "--root DIR" in err and str(elsewhere / "studies" / "demo.db") in err
    rc, out, _ = _main(capsys, "status", "demo", "--root", str(exp))
    assert rc == 0 and "study demo" in out and "1 trials" in out
    monkeypatch.delenv("HARNESS_ROOT")  # --root set it for this process and its children
    monkeypatch.setenv("HARNESS_ROOT", str(exp))
    rc, out, _ = _main(capsys, "status", "demo")
    assert rc == 0 and "study demo" in out


@pytest.mark.slow
def test_report_reads_and_writes_under_the_root(elsewhere, tmp_path, capsys):
    from tests.fixtures_runs import make_study

    exp = tmp_path / "exp"
    make_study(exp / "runs", "demo", n_configs=2, seeds=1, items=10, failures=False)
    rc, out, err = _main(capsys, "report", "demo", "--root", str(exp), "--no-svg", "--no-optuna")
    assert rc == 0, err
    assert out.strip() == str(exp / "reports" / "demo" / "report.html") and Path(out.strip()).exists()
    assert not (elsewhere / "reports").exists()


@pytest.mark.parametrize("command", ["train", "eval", "sweep", "status", "report"])
def test_every_command_that_uses_the_root_takes_root(command):
    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    assert "--root" in parser._option_string_actions


# ------------------------------------------------------------------------------------------ --cfg job
@pytest.mark.parametrize("command", ["train", "validate"])
def test_cfg_job_prints_the_composed_config_and_runs_nothing(elsewhere, capsys, command):
    rc, out, err = _main(capsys, command, "--cfg", "job", "model=tiny-llama", "method=qlora", "train.lr=3e-4")
    assert rc == 0, err
    cfg = yaml.safe_load(out)  # nothing but the YAML on stdout
    assert cfg["model"]["name"] == "tiny-llama" and cfg["method"]["quant"] == "nf4" and cfg["train"]["lr"] == 3e-4
    assert not (elsewhere / "runs").exists()


def test_cfg_job_still_checks_the_config(elsewhere, capsys):
    rc, out, err = _main(capsys, "train", "--cfg", "job", "model=tiny-lama")
    assert rc == 2 and out == "" and "Did you mean 'tiny-llama'" in err


# ------------------------------------------------------------------------------------------ overrides
def _spec_from(err: str) -> str:
    """The sweep spec a refusal shows (its indented lines between `...yaml:` and `and run it`)."""
    block = err.split("sweeps/my-sweep.yaml:\n", 1)[1].split("  and run it", 1)[0]
    return "\n".join(line[4:] for line in block.splitlines())


def test_a_comma_list_is_refused_with_the_sweep_spec_to_write(elsewhere, capsys):
    rc, out, err = _main(capsys, "train", "model=tiny-llama", "method=lora,qlora", "train.max_steps=2")
    assert rc == 2 and out == ""
    assert "harness sweep sweeps/my-sweep.yaml model=tiny-llama train.max_steps=2" in err
    text = _spec_from(err)
    assert len(text.splitlines()) == 3, text
    spec_file = elsewhere / "sweeps" / "my-sweep.yaml"
    spec_file.parent.mkdir()
    spec_file.write_text(text)
    spec = load_spec(spec_file)
    assert spec.grid == [{"method": ["lora", "qlora"]}]
    rc, out, err = _main(capsys, "sweep", str(spec_file), "model=tiny-llama", "train.max_steps=2", "--dry-run")
    assert rc == 0, err
    assert "method=lora" in out and "method=qlora" in out and not (elsewhere / "runs").exists()


@pytest.mark.parametrize("argv", [
    ["validate", "train.lr=1e-4,1e-3"],
    ["eval", "model=tiny-llama", "eval=quick,standard"],
    ["train", "train.lr=range(1,3)"],
    ["sweep", "sweeps/quickstart.yaml", "method=lora,qlora", "--dry-run"],
])
def test_every_command_refuses_a_sweep_in_its_overrides(argv, capsys, monkeypatch):
    monkeypatch.chdir(Path(harness.__file__).parent.parent)
    rc, _, err = _main(capsys, *argv)
    assert rc == 2 and "sweep" in err and "Traceback" not in err


def test_a_key_set_twice_is_refused_naming_the_key(capsys):
    rc, _, err = _main(capsys, "validate", "model=tiny-llama", "train.lr=1", "train.lr=2", "method=lora", "method=qlora")
    assert rc == 2
    assert "train.lr is set 2 times (train.lr=1 train.lr=2)" in err and "method is set 2 times" in err


def test_commas_inside_lists_and_quotes_are_values(elsewhere, capsys):
    rc, out, err = _main(capsys, "validate", "--cfg", "job", "model=tiny-llama", "method.target_modules=[q_proj,v_proj]",
                         "tracker.tags=['a,b',c]", "notes='x, y'")
    assert rc == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["method"]["target_modules"] == ["q_proj", "v_proj"] and cfg["tracker"]["tags"] == ["a,b", "c"]
    assert cfg["notes"] == "x, y"


def test_a_sweep_spec_is_found_by_name_from_any_folder(elsewhere, capsys):
    rc, out, err = _main(capsys, "sweep", "quickstart", "model=tiny-llama", "--dry-run")
    assert rc == 0, err
    assert "study quickstart" in out and "3 trials" in out
    rc, _, err = _main(capsys, "sweep", "quickstrat", "--dry-run")
    assert rc == 2 and "Shipped specs: " in err and "quickstart" in err
