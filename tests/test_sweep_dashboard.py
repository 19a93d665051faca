"""Grid studies in Optuna's own tools (harness/sweep/params.py): every grid trial carries its cell as Optuna
params with distributions, so optuna-dashboard (the README's command), optuna.visualization, optuna.importance
and trials_dataframe() show grid studies as they show searches.

    python -m pytest tests/test_sweep_dashboard.py -q

The sweep runs the stand-in trainer of tests/sweep_fakes.py (its loss depends on method.r and the seed).
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness.sweep.plan import pin_axes, plan_grid
from harness.sweep.spec import load_spec
from harness.sweep.storage import default_storage_url, open_storage
from harness.sweep.study import enqueue_grid, open_study
from tests.sweep_fakes import fake_env, harness, trials_of, write_spec  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parent.parent
GRID = {"method.r": [4, 8], "train.lr": [1e-4, 3e-4], "method": ["lora", "dora"]}


@pytest.fixture()
def swept(tmp_path, fake_env):
    """A finished 8-cell grid study `t` under tmp_path (studies/t.db, runs/t/)."""
    r = harness(["sweep", str(write_spec(tmp_path / "s.yaml", grid=GRID))], fake_env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    return tmp_path


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the matplotlib backend
def test_grid_trials_carry_their_cell_as_optuna_params(swept):
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    study = optuna.load_study(study_name="t", storage=open_storage(default_storage_url("t", swept / "studies")))
    trials = study.get_trials()
    assert len(trials) == 8 and all(t.state.name == "COMPLETE" for t in trials)
    for t in trials:
        cell = t.user_attrs["params"]  # what the driver ran
        assert t.params == cell
        assert t.distributions == {"method.r": IntDistribution(4, 8), "train.lr": FloatDistribution(1e-4, 3e-4),
                                   "method": CategoricalDistribution(["lora", "dora"])}
    df = study.trials_dataframe()
    assert {"params_method.r", "params_train.lr", "params_method"} <= set(df.columns)
    assert df["params_method.r"].notna().all()
    importances = optuna.importance.get_param_importances(study)
    assert set(importances) == set(GRID) and max(importances, key=importances.get) == "method.r"  # the loss follows r
    fig = optuna.visualization.plot_parallel_coordinate(study)
    assert len(fig.data) > 8 and set(fig.layout.xaxis.ticktext) >= set(GRID)  # a line per trial, an axis per param
    assert len(optuna.visualization.plot_param_importances(study).data) == 1
    optuna.visualization.matplotlib.plot_parallel_coordinate(study)


def _readme_dashboard_command() -> str:
    text = (REPO / "README.md").read_text()
    found = re.findall(r"^\s*(optuna-dashboard sqlite:///studies/<study>\.db)", text, re.M)
    assert found, "README shows how to open a study in optuna-dashboard"
    return found[0]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_readme_dashboard_command_shows_the_grid(swept):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = shlex.split(_readme_dashboard_command().replace("<study>", "t"))
    exe = Path(sys.executable).with_name(command[0])  # the venv's script, as `.venv/bin/optuna-dashboard`
    proc = subprocess.Popen([str(exe), *command[1:], "--port", str(port), "--quiet"], cwd=swept,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base, studies, deadline = f"http://127.0.0.1:{port}", None, time.time() + 60
        while studies is None and time.time() < deadline and proc.poll() is None:
            try:
                studies = _get(f"{base}/api/studies")["study_summaries"]
            except OSError:
                time.sleep(0.3)
        assert studies is not None, proc.stdout.read() if proc.poll() is not None else "no answer in 60 s"
        (study,) = [s for s in studies if s["study_name"] == "t"]
        detail = _get(f"{base}/api/studies/{study['study_id']}")
        assert len(detail["trials"]) == 8
        assert {p["name"] for p in detail["intersection_search_space"]} == set(GRID)
        for t in detail["trials"]:
            assert {p["name"] for p in t["params"]} == set(GRID)
        imp = _get(f"{base}/api/studies/{study['study_id']}/param_importances")["param_importances"][0]
        assert {p["name"] for p in imp} == set(GRID)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_pinned_first_run_then_grown_grid_keep_compatible_params(tmp_path, fake_env):
    """A study started with one axis pinned on the command line gets the declared grid's choices, so the full
    grid joins it later; a numeric axis may grow (its range widens); a categorical value Optuna cannot add
    is queued without that param, with a note."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    url = default_storage_url("t", tmp_path / "studies")
    spec = load_spec(write_spec(tmp_path / "s.yaml", grid={"method": ["lora", "dora"], "method.r": [4, 8]}))
    pinned, _ = pin_axes(spec, ["method=dora"])
    study, storage = open_study(pinned, url, create=True)
    assert enqueue_grid(study, storage, url, pinned, plan_grid(pinned)) == 2
    full, _ = pin_axes(spec, [])
    assert enqueue_grid(study, storage, url, full, plan_grid(full)) == 2
    grown = load_spec(write_spec(tmp_path / "s.yaml", grid={"method": ["lora", "dora", "qlora"], "method.r": [4, 8, 64]}))
    grown, _ = pin_axes(grown, [])
    notes: list[str] = []
    assert enqueue_grid(study, storage, url, grown, plan_grid(grown), notes) == 9 - 4
    trials = study.get_trials()
    assert len(trials) == 9
    for t in trials:
        cell = t.user_attrs["params"]
        assert t.params.get("method.r") == cell["method.r"] and isinstance(t.distributions["method.r"], IntDistribution)
        if cell["method"] == "qlora":  # not among the choices the study recorded
            assert "method" not in t.params
        else:
            assert t.params["method"] == cell["method"]
            assert t.distributions["method"] == CategoricalDistribution(["lora", "dora"])
    assert trials[-1].distributions["method.r"] == IntDistribution(4, 64)
    assert len(notes) == 1 and notes[0].startswith("grid axis method:") and "qlora" in notes[0]


def test_values_optuna_cannot_hold_become_their_override_text():
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from harness.sweep.params import cell_params, grid_distributions

    dists = grid_distributions([{"method.target_modules": [["q_proj"], ["q_proj", "v_proj"]], "train.lr": [1e-4, 2],
                                 "notes": [None, True, "x"]}], {})
    assert dists == {"method.target_modules": CategoricalDistribution(["[q_proj]", "[q_proj,v_proj]"]),
                     "train.lr": FloatDistribution(1e-4, 2.0), "notes": CategoricalDistribution([None, True, "x"])}
    params, _ = cell_params({"method.target_modules": ["q_proj", "v_proj"], "train.lr": 2, "notes": None}, dists)
    assert params == {"method.target_modules": "[q_proj,v_proj]", "train.lr": 2, "notes": None}
