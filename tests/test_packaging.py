"""`pip install .` (not editable) gives a working harness (setup.py, pyproject.toml): the wheel holds conf/ (every
config group), sweeps/*.yaml and the lm-eval task YAMLs; an installed copy composes configs and finds shipped sweeps
from another folder; setuptools builds it without a licence deprecation warning; its version is harness.__version__.

The wheel is built from a copy of the sources (nothing is written into the checkout) without build isolation, so
no network is needed: the venv's setuptools must be >= 77 (pyproject.toml's build requirement)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import harness
from harness import paths

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "harness", "conf", "sweeps")


def _setuptools_ok() -> bool:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0]) >= 77
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """(the built wheel, the build's output)."""
    if not _setuptools_ok():
        pytest.skip("building without isolation needs setuptools>=77 in this environment (pip install 'setuptools>=77')")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", str(src),
                          "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("harness-*.whl")
    return whl, out.stdout + out.stderr


@pytest.mark.slow
def test_the_wheel_holds_conf_sweeps_and_task_yamls(wheel):
    names = set(zipfile.ZipFile(wheel[0]).namelist())
    for p in sorted(paths.shipped("conf").rglob("*.yaml")):
        assert f"harness/conf/{p.relative_to(paths.shipped('conf')).as_posix()}" in names
    for p in sorted((REPO / "sweeps").glob("*.yaml")):
        assert f"harness/sweeps/{p.name}" in names
    tasks = sorted((REPO / "harness" / "eval" / "tasks").glob("*.yaml"))
    assert tasks and all(f"harness/eval/tasks/{p.name}" in names for p in tasks)
    assert "harness/eval/tasks/utils.py" in names and "harness/report/templates/report.html.j2" in names
    assert not [n for n in names if n.startswith(("conf/", "sweeps/", "tests/"))]  # nothing at the top level


@pytest.mark.slow
def test_the_build_has_no_licence_or_package_warnings(wheel):
    log = wheel[1]
    assert "project.license` as a TOML table is deprecated" not in log
    assert "License classifiers are deprecated" not in log
    assert "is absent from the `packages` configuration" not in log
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "Apache-2.0" and meta["license-files"] == ["LICENSE"]
    names = zipfile.ZipFile(wheel[0]).namelist()
    metadata = zipfile.ZipFile(wheel[0]).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata and f"Version: {harness.__version__}" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


@pytest.mark.slow
def test_an_installed_copy_composes_from_another_folder(wheel, tmp_path):
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--target", str(target),
                    str(wheel[0])], capture_output=True, text=True, check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")}
    env.update(PYTHONPATH=str(target), HARNESS_DATA=str(paths.data_root()))
    code = ("import harness, harness.paths as p; from harness import config\n"
            "cfg = config.compose(['model=tiny-llama', 'method=qlora', 'eval=quick'])\n"
            "print(harness.__file__); print(p.conf_dir()); print(cfg.model.name, cfg.method.name, cfg.eval.name)\n"
            "print(' '.join(config.group_options('method')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    where, conf, composed, methods = out.stdout.splitlines()
    assert Path(where).is_relative_to(target) and Path(conf) == target / "harness" / "conf"
    assert composed == "tiny-llama qlora quick" and {"full", "lora", "qlora"} <= set(methods.split())
    run = subprocess.run([sys.executable, "-m", "harness", "sweep", "quickstart", "model=tiny-llama", "--dry-run"],
                         capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300)
    assert run.returncode == 0 and "3 trials" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
    version = subprocess.run([sys.executable, "-m", "harness", "--version"], capture_output=True, text=True, env=env,
                             cwd=elsewhere, timeout=60)
    assert version.stdout == f"harness {harness.__version__}\n"
    assert not (elsewhere / "runs").exists() and not (elsewhere / "studies").exists()
