"""Tests for the sweep stage (harness/sweep/, harness/commands/sweep.py) and `harness status`.

    python -m pytest tests/test_sweep.py -x -q

Pure parts (spec parsing, grid expansion, trial -> overrides) are tested directly. The driver runs
as a real `harness sweep` process; most trials use a stand-in trainer (FAKE_TRAIN in tests/sweep_fakes.py,
selected by HARNESS_SWEEP_TRAIN_CMD) that takes the same overrides and writes the same run record, so
crashes, SIGKILLs, pruning and resumes are exercised in seconds (those trials start cold). Two tests run the
real `harness train` on tiny-llama, started warm (the second, a grid, is marked slow); warm starts in detail:
tests/test_sweep_warm.py. Driver kills and bad inputs: tests/faults/.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness import config
from harness.commands.sweep import run
from harness.sweep.plan import expand_grid, format_value, pin_axes, plan_grid
from harness.sweep.spec import SpecError, load_spec, parse_spec
from harness.sweep.storage import default_storage_url, open_storage
from harness.sweep.study import enqueue_grid, open_study
from harness.sweep.worker import TRAIN_CMD_ENV
from tests.sweep_fakes import BASE, FAKE_TRAIN, by_state, fake_env, harness, is_running, trials_of, write_spec  # noqa: F401 (fixture; FAKE_TRAIN for test_sweep_postgres)

REPO = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------------ pure
def test_expand_grid_is_union_of_products_in_order_without_duplicates():
    grid = [{"method": ["full"]}, {"method": ["lora", "qlora"], "method.r": [4, 16]}, {"method": ["full"]}]
    cells = expand_grid(grid)
    assert cells == [
        {"method": "full"},
        {"method": "lora", "method.r": 4}, {"method": "lora", "method.r": 16},
        {"method": "qlora", "method.r": 4}, {"method": "qlora", "method.r": 16},
    ]


def test_plan_maps_every_cell_and_seed_to_overrides():
    spec = parse_spec({"study": "s", "base": [*BASE, "method.r=8"], "grid": {"method": ["lora", "qlora"], "method.r": [4, 16]},
                             "seeds": [0, 1, 2], "objectives": [{"metric": "summary.best_val_loss", "direction": "minimize"}]})
    planned = plan_grid(spec)
    assert len(planned) == 4 * 3
    assert len({t.cell for t in planned}) == 12  # every (cell, seed) distinct
    t = planned[4]  # cell 1 (lora, r=16), seed 1
    assert (t.params, t.seed) == ({"method": "lora", "method.r": 16}, 1)
    # the axis replaces the base's value instead of appearing twice; the seed goes to train.seed
    assert t.overrides == ["model=tiny-llama", "data=alpaca-tiny", "tracker=none", "train.max_steps=2",
                           "method=lora", "method.r=16", "train.seed=1"]
    cfg = config.compose(t.overrides)
    assert (cfg.method.name, cfg.method.r, cfg.train.seed) == ("lora", 16, 1)


@pytest.mark.parametrize("value", [2e-05, 0.1, 3, True, None, "plain", "it's a 'test', with spaces = and [brackets]", "1e-5", "null"])
def test_format_value_round_trips_through_hydra(value):
    cfg = config.compose_tree(BASE + [f"notes={format_value(value)}"])
    assert cfg["notes"] == value


def test_spec_errors_are_reported_all_at_once():
    bad = {"study": "../x", "base": ["train.seed=3"], "grid": {"mthod": ["lora"], "method.r": []}, "seeds": [],
           "objectives": [{"metric": "summary.best_val_los", "direction": "down"}], "sampler": "gird", "pruner": "median",
           "budgett": {}}
    with pytest.raises(SpecError) as exc:
        parse_spec(bad, "bad.yaml")
    text = "\n".join(exc.value.errors)
    for needle in ("budgett: unknown key", "Did you mean 'budget'", "study '../x' is not allowed", "train.seed=3",
                   "mthod", "grid.method.r: a non-empty list", "seeds:", "Did you mean 'best_val_loss'",
                   "direction='down'", "'gird' is not one of", "Did you mean 'grid'"):
        assert needle in text, needle
    assert len(exc.value.errors) >= 10


def test_pruner_needs_a_single_minimized_objective():
    tree = {"study": "s", "base": BASE, "search": {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
            "sampler": "tpe", "pruner": "median", "budget": {"n_trials": 2},
            "objectives": [{"metric": "summary.best_val_loss", "direction": "maximize"}]}
    with pytest.raises(SpecError, match="maximized"):
        parse_spec(tree)
    tree["objectives"][0]["direction"] = "minimize"
    assert parse_spec(tree).search["train.lr"].log


def test_command_line_override_pins_an_axis_and_extends_base():
    spec = parse_spec({"study": "s", "base": BASE, "grid": {"method": ["lora", "qlora"], "method.r": [4, 16]},
                             "objectives": [{"metric": "summary.best_val_loss", "direction": "minimize"}]})
    pinned, rest = pin_axes(spec, ["method=qlora", "train.max_steps=5"])
    assert rest == ["train.max_steps=5"]
    assert expand_grid(pinned.grid) == [{"method": "qlora", "method.r": 4}, {"method": "qlora", "method.r": 16}]
    assert "train.max_steps=5" in pinned.base and "train.max_steps=2" not in pinned.base
    # with sub-grids, pinning keeps the cells that have the value (full keeps its own learning rate)
    spec = parse_spec({"study": "s", "base": BASE, "grid": [{"method": ["full"], "train.lr": [2e-5]},
                                                                  {"method": ["lora", "qlora"], "train.lr": [2e-4]}],
                             "objectives": [{"metric": "summary.best_val_loss", "direction": "minimize"}]})
    assert expand_grid(pin_axes(spec, ["method=lora"])[0].grid) == [{"method": "lora", "train.lr": 2e-4}]
    # a value no cell has is set everywhere
    assert expand_grid(pin_axes(spec, ["train.lr=1e-3"])[0].grid) == [
        {"method": "full", "train.lr": 1e-3}, {"method": "lora", "train.lr": 1e-3}, {"method": "qlora", "train.lr": 1e-3}]


@pytest.mark.slow
@pytest.mark.parametrize("spec_path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_specs_validate_in_a_dry_run(spec_path, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(sweep_args(str(spec_path), "--dry-run")) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "dry run: config OK" in out
    assert not (tmp_path / "studies").exists() and not (tmp_path / "runs").exists()  # nothing created


def sweep_args(*argv: str):
    from harness.cli import build_parser

    return build_parser(only="sweep").parse_args(["sweep", *argv])


def test_every_trial_config_is_checked_before_training(tmp_path, fake_env, capsys):
    # tiny-gpt2 cannot be quantized: the qlora cells must fail up front, with the objective's missing suite
    spec = write_spec(tmp_path / "s.yaml", base=[b for b in BASE if b != "method=lora"] + ["model=tiny-gpt2"],
                      grid={"method": ["lora", "qlora", "lora-8bit"]},
                      objectives=[{"metric": "hellaswag.acc", "direction": "maximize"}])
    assert run(sweep_args(str(spec))) == 2
    err = capsys.readouterr().err
    assert "method=qlora needs a quantizable model" in err and "method=lora-8bit needs a quantizable model" in err
    assert "needs eval suite 'hellaswag'" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "studies").exists()


# ---------------------------------------------------------------------------------- driver
@pytest.mark.slow
def test_grid_runs_each_cell_once_and_failures_do_not_stop_the_study(tmp_path, fake_env):
    spec = write_spec(tmp_path / "s.yaml", grid={"notes": ["ok", "crash", "kill"]}, seeds=[0, 1], max_retries=0)
    r = harness(["sweep", str(spec)], fake_env, tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr  # cells left unfinished: each listed with its trial, params and reason
    assert "4 cell(s) unfinished" in r.stderr and "notes=crash seed=1: child exited with code 1" in r.stderr
    assert "Traceback" not in r.stderr
    trials = trials_of(tmp_path)
    assert len(trials) == 6 and len({t.user_attrs["cell"] for t in trials}) == 6
    states = {(t.user_attrs["params"]["notes"], t.user_attrs["seed"]): t for t in trials}
    for seed in (0, 1):
        ok, crash, kill = states[("ok", seed)], states[("crash", seed)], states[("kill", seed)]
        assert ok.state.name == "COMPLETE" and ok.values == [pytest.approx(1.0 + 16 / 100 + seed / 1000)]
        assert crash.state.name == "FAIL" and "exited with code 1" in crash.user_attrs["reason"] and "boom" in crash.user_attrs["reason"]
        assert kill.state.name == "FAIL" and "SIGKILL" in kill.user_attrs["reason"]
        # the run record of the killed child says so too, and the trial and its run dir point at each other
        summary = json.loads((Path(kill.user_attrs["run_dir"]) / "summary.json").read_text())
        assert summary["status"] == "failed" and "SIGKILL" in summary["reason"] and summary["trial"] == kill.number
        assert (Path(ok.user_attrs["run_dir"]) / "train.log").read_text().count("fake training ok") == 1
        assert json.loads((Path(ok.user_attrs["run_dir"]) / "summary.json").read_text())["trial"] == ok.number
    # a second run of the same command re-runs nothing
    r2 = harness(["sweep", str(spec)], fake_env, tmp_path)
    assert r2.returncode == 1 and "0 trials queued now" in r2.stdout and "4 cell(s) unfinished" in r2.stderr
    assert len(trials_of(tmp_path)) == 6
    # status lists every trial with its reason; --verbose prints the reproduce command
    st = harness(["status", "t", "--verbose"], fake_env, tmp_path)
    assert st.returncode == 0 and st.stdout.count("COMPLETE ") == 2 and st.stdout.count("FAIL ") == 4
    assert "SIGKILL" in st.stdout and "reproduce: harness train model=tiny-llama" in st.stdout
    # `harness status t | head -1`: a reader that goes away ends the listing quietly, no BrokenPipeError
    piped = subprocess.Popen([sys.executable, "-m", "harness", "status", "t", "--verbose"], env=fake_env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    piped.stdout.close()  # the reader is gone before the first line is written: every write fails with EPIPE
    err = piped.stderr.read().decode()
    assert piped.wait(timeout=90) == 0 and "BrokenPipe" not in err and "Traceback" not in err, err


@pytest.mark.slow
def test_pruned_and_missing_metric_trials(tmp_path, fake_env):
    # r=4 completes first; r=64 reports a worse loss at step 10 and is pruned by the median pruner;
    # a run whose record lacks the objective fails with the metric named
    spec = write_spec(tmp_path / "s.yaml", grid=[{"method.r": [4, 64], "notes": ["prune"]}, {"notes": ["nometric"]}],
                      pruner={"type": "median", "n_startup_trials": 1})
    r = harness(["sweep", str(spec)], fake_env, tmp_path)
    assert r.returncode == 1 and "1 cell(s) unfinished" in r.stderr, r.stdout + r.stderr  # the nometric cell
    first, second, third = trials_of(tmp_path)
    assert first.state.name == "COMPLETE"
    assert second.state.name == "PRUNED" and second.user_attrs["pruned_at_step"] == 10 and "step 10" in second.user_attrs["reason"]
    assert second.intermediate_values == {10: pytest.approx(1.64 + 0.1)}
    assert third.state.name == "FAIL" and "summary.best_val_loss missing" in third.user_attrs["reason"]


@pytest.mark.slow
def test_worker_killed_mid_trial_then_resume_completes_each_cell_once(tmp_path, fake_env):
    spec = write_spec(tmp_path / "s.yaml", grid={"notes": ["sleepfirst:15", "ok"]}, seeds=[0, 1])
    proc = subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(spec)], env=fake_env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until the first (slow) trial's child is training
        if list((tmp_path / "runs").glob("t/*/summary.json")):
            break
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = trials_of(tmp_path)[0]
    assert killed.state.name == "RUNNING"
    run_dir = Path(killed.user_attrs["run_dir"])
    time.sleep(1.0)  # the orphaned child got SIGKILL from the kernel too (PR_SET_PDEATHSIG)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"

    r = harness(["sweep", str(spec)], fake_env, tmp_path, timeout=120)  # same command: resume
    assert r.returncode == 0, r.stdout + r.stderr
    trials = trials_of(tmp_path)
    states = by_state(trials)
    complete_cells = [t.user_attrs["cell"] for t in states["COMPLETE"]]
    assert sorted(complete_cells) == sorted(t.cell for t in plan_grid(load_spec(spec)))  # each once
    assert [t.number for t in states["FAIL"]] == [killed.number]
    retry = next(t for t in states["COMPLETE"] if t.user_attrs["cell"] == killed.user_attrs["cell"])
    assert retry.system_attrs["retry_history"] == [killed.number]
    assert retry.user_attrs["run_id"] == killed.user_attrs["run_id"]  # same run dir: the trainer resumes
    assert json.loads((run_dir / "summary.json").read_text())["resumed"] is True
    st = harness(["status", "t"], fake_env, tmp_path)
    assert f"retried as trial {retry.number}" in st.stdout
    print(f"resume counts: {({k: len(v) for k, v in states.items()})}, planned {len(complete_cells)}")


def run_concurrently(spec: Path, env: dict, cwd: Path, commands: list[list[str]]) -> list[str]:
    procs = [subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(spec), *extra], env=env, cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for extra in commands]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), outs
    return outs


@pytest.mark.slow
def test_concurrent_drivers_and_workers_share_one_sqlite_study(tmp_path, fake_env):
    # two drivers started together (both enqueue the grid) and one of them with 2 local worker processes
    cells = list(range(1, 9))
    spec = write_spec(tmp_path / "s.yaml", grid={"notes": ["sleep:1"], "method.r": cells})
    outs = run_concurrently(spec, fake_env, tmp_path, [["--workers", "2"], []])
    trials = trials_of(tmp_path)
    assert len(trials) == len(cells) and len({t.user_attrs["cell"] for t in trials}) == len(cells)  # neither duplicated nor lost
    assert sorted(t.user_attrs["params"]["method.r"] for t in trials) == cells
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["worker_pid"] for t in trials}) >= 2  # the work was shared
    assert outs[0].count(" start ") == outs[0].count(" COMPLETE ") >= 1  # worker events relayed to the driver


@pytest.mark.slow
def test_search_sampler_runs_n_trials_times_seeds(tmp_path, fake_env):
    spec = write_spec(tmp_path / "s.yaml", grid={"method": ["lora", "qlora"]},
                      search={"method.r": {"type": "int", "low": 2, "high": 32, "log": True}},
                      seeds=[0, 1], sampler={"type": "tpe", "seed": 1}, budget={"n_trials": 3})
    r = harness(["sweep", str(spec)], fake_env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    trials = trials_of(tmp_path)
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    for t in trials:
        assert 2 <= t.params["method.r"] <= 32 and t.params["method"] in ("lora", "qlora")
    sampled = [t for t in trials if t.user_attrs.get("origin") == "sampled"]
    assert len(sampled) == 3 and [t.user_attrs["seed"] for t in sampled] == [0, 0, 0]
    for t in sampled:  # each sampled configuration ran for the other seed too, with the same params
        copies = [c for c in trials if c.user_attrs.get("group") == t.number]
        assert [(c.user_attrs["seed"], c.params) for c in copies] == [(1, t.params)]


@pytest.mark.slow
def test_ctrl_c_requeues_the_running_trial_and_the_rerun_finishes_it(tmp_path, fake_env):
    spec = write_spec(tmp_path / "s.yaml", grid={"notes": ["sleepfirst:60", "ok"]}, max_retries=0)
    # a terminal's foreground job has SIGINT at its default; a test run started in the background of a
    # non-interactive shell (nohup ... &) inherits it ignored, and Python then keeps ignoring it
    proc = subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(spec)], env=fake_env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "runs").glob("t/*/summary.json")):
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the driver and its child
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert "run the same command again to resume" in out
    first = trials_of(tmp_path)
    assert [t.state.name for t in first] == ["FAIL", "WAITING", "WAITING"]  # requeued at once, not after a grace period
    assert first[2].system_attrs["requeued_from"] == 0 and first[2].user_attrs["run_id"] == first[0].user_attrs["run_id"]
    summary = json.loads((Path(first[0].user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "interrupted" in summary["reason"]  # not a phantom "running"
    r = harness(["sweep", str(spec)], fake_env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    states = {t.number: t.state.name for t in trials_of(tmp_path)}
    assert states == {0: "FAIL", 1: "COMPLETE", 2: "COMPLETE"}  # max_retries=0: a Ctrl-C is not a retry


@pytest.mark.slow
def test_journal_storage_and_references_reach_the_runs(tmp_path, fake_env):
    refs = [{"metric": "summary.best_val_loss", "value": 1.5, "source": "Hu et al. (2021), Table 2"}]
    spec = write_spec(tmp_path / "s.yaml", grid={"method.r": [4, 8]}, references=refs)
    url = f"journal:{tmp_path / 'shared' / 't.log'}"
    r = harness(["sweep", str(spec), "--storage", url], fake_env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    import optuna

    trials = optuna.load_study(study_name="t", storage=open_storage(url)).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all("heartbeat_at" in t.user_attrs for t in trials)  # the journal's heartbeat
    overrides = trials[0].user_attrs["overrides"]
    ref = next(o for o in overrides if o.startswith("references="))
    assert config.compose(overrides).references == refs  # the published numbers reach the run's config
    st = harness(["status", "t", "--storage", url], fake_env, tmp_path)
    assert st.returncode == 0 and st.stdout.count("COMPLETE ") == 2 and ref


def test_changed_spec_is_refused_but_a_grown_grid_is_enqueued(tmp_path, fake_env):
    url = default_storage_url("t", tmp_path / "studies")
    spec = load_spec(write_spec(tmp_path / "s.yaml", grid={"method.r": [4]}))
    study, storage = open_study(spec, url, create=True)
    assert enqueue_grid(study, storage, url, spec, plan_grid(spec)) == 1
    assert enqueue_grid(study, storage, url, spec, plan_grid(spec)) == 0  # idempotent
    grown = load_spec(write_spec(tmp_path / "s.yaml", grid={"method.r": [4, 8]}))
    study, storage = open_study(grown, url, create=True)
    assert enqueue_grid(study, storage, url, grown, plan_grid(grown)) == 1
    changed = load_spec(write_spec(tmp_path / "s.yaml", grid={"method.r": [4]}, seeds=[5]))
    with pytest.raises(SpecError, match=r"created from a different spec \(seeds differ"):
        open_study(changed, url, create=True)


# ------------------------------------------------------------------- the real trainer
def _real_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop(TRAIN_CMD_ENV, None)
    return env


@pytest.mark.slow  # one real tiny training: 15-50 s depending on the machine's load
def test_real_trainer_single_trial_records_overhead(tmp_path, monkeypatch):
    env = _real_env(tmp_path, monkeypatch)
    spec = write_spec(tmp_path / "s.yaml", grid={"method": ["lora"]}, base=[*BASE[:-1], "eval=none"])
    r = harness(["sweep", str(spec)], env, tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (t,) = trials_of(tmp_path)
    assert t.state.name == "COMPLETE", t.user_attrs.get("reason")
    run_dir = Path(t.user_attrs["run_dir"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["study"] == "t" and summary["trial"] == t.number
    assert t.values == [pytest.approx(summary["best_val_loss"])]
    overrides = yaml.safe_load((run_dir / "overrides.yaml").read_text())
    assert "method=lora" in overrides and f"run_id={run_dir.name}" in overrides
    assert 0 < t.user_attrs["overhead_s"] < t.user_attrs["wall_time_s"]
    assert t.user_attrs["start"] == "warm"  # forked from the worker's fork server (harness/sweep/warm.py)
    assert "started warm" in (run_dir / "train.log").read_text()
    print(f"real trial: wall {t.user_attrs['wall_time_s']:.1f}s, train {summary['train_time_s']:.1f}s, "
          f"eval {summary.get('eval_time_s') or 0:.1f}s, overhead {t.user_attrs['overhead_s']:.1f}s")


@pytest.mark.slow  # three real tiny trainings: about a minute on a quiet 2-core machine
def test_real_trainer_grid_end_to_end(tmp_path, monkeypatch):
    env = _real_env(tmp_path, monkeypatch)
    spec = write_spec(tmp_path / "s.yaml", base=[*BASE[:-1], "eval=none"],
                      grid=[{"method": ["full"]}, {"method": ["lora"], "method.r": [4, 8]}])
    r = harness(["sweep", str(spec)], env, tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    trials = trials_of(tmp_path)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for t in trials:
        summary = json.loads((Path(t.user_attrs["run_dir"]) / "summary.json").read_text())
        assert summary["method"] == t.user_attrs["params"]["method"] and summary["trial"] == t.number
        print(f"trial {t.number}: wall {t.user_attrs['wall_time_s']:.1f}s overhead {t.user_attrs['overhead_s']:.1f}s")


def test_a_trials_storage_handle_skips_the_set_up_its_driver_did(tmp_path):
    """open_storage(set_up=True), as a trial's pruning reporter opens it: the driver created the tables and
    checked their schema, so neither is done again; on a database nobody set up it creates nothing."""
    import optuna
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="s", storage=open_storage(url)).enqueue_trial({"x": 1})
    again = optuna.load_study(study_name="s", storage=open_storage(url, set_up=True))
    assert [t.params for t in again.get_trials()] == [{}]  # an enqueued trial: its fixed params wait in system attrs
    bare = f"sqlite:///{tmp_path / 'bare.db'}"
    with pytest.raises(optuna.exceptions.StorageInternalError):  # its tables do not exist
        optuna.load_study(study_name="s", storage=open_storage(bare, set_up=True))
    assert sa.inspect(sa.create_engine(bare)).get_table_names() == []


def test_an_idle_worker_looks_again_soon_then_less_often():
    from harness.sweep.worker import wait_interval

    assert [wait_interval(n, 5) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0]
    assert wait_interval(10_000, 5) == 5 and wait_interval(0, 0.1) == 0.1  # capped by the heartbeat interval


def _sweep_args(spec: Path, *extra: str):
    import argparse

    from harness.commands import sweep as sweep_cmd

    p = argparse.ArgumentParser()
    sweep_cmd.add_arguments(p)
    args = p.parse_args([str(spec), *extra])
    args.runs_root = str(spec.parent / "runs")
    return args


def _processes_running(marker: str) -> list[int]:
    """Live processes whose command line contains `marker` (zombies left out)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and marker.encode() in (d / "cmdline").read_bytes():
                pids.append(int(d.name))
        except OSError:
            pass
    return [pid for pid in pids if is_running(pid)]


def test_workers_started_early_wait_for_the_driver_and_leave_untold(tmp_path, fake_env, monkeypatch):
    """--workers N starts its workers before the driver composes and queues the trials (their fork servers import
    meanwhile); a worker never told GO exits 0 without opening the study, and close() leaves none behind."""
    from harness.commands.sweep import EarlyStart

    for key in (TRAIN_CMD_ENV, "PYTHONPATH"):  # the stand-in trainer: no fork server to wait for
        monkeypatch.setenv(key, fake_env[key])
    spec = write_spec(tmp_path / "s.yaml", grid={"method.r": [2, 4]})
    url = f"sqlite:///{tmp_path / 'early.db'}"
    args = _sweep_args(spec, "--workers", "2", "--storage", url)
    early = EarlyStart(args, "local", load_spec(spec), url)
    workers = list(early.workers)
    assert len(workers) == 2 and early.starter is None
    time.sleep(1.0)
    assert [w.poll() for w in workers] == [None, None]  # waiting for GO on stdin
    early.close()
    assert [w.returncode for w in workers] == [0, 0], [w.stdout.read() for w in workers]
    assert not (tmp_path / "early.db").exists()  # they never looked at the study
    assert not early.workers

    args = _sweep_args(spec, "--dry-run")  # nothing starts for a dry run, a Slurm driver or an external launcher
    assert EarlyStart(args, "local", load_spec(spec), url).workers == []
    args = _sweep_args(spec, "--workers", "2")
    assert EarlyStart(args, "slurm", load_spec(spec), url).workers == []


def test_a_driver_that_fails_its_checks_stops_the_workers_it_started(tmp_path, fake_env):
    spec = write_spec(tmp_path / "bad-early.yaml", base=[*BASE, "model=no-such-model"], grid={"method.r": [2, 4]})
    r = harness(["sweep", str(spec), "--workers", "2"], fake_env, tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no-such-model" in r.stderr
    assert not (tmp_path / "runs").exists()
    assert _processes_running("bad-early.yaml") == []  # the workers started before the check are gone


def test_a_finished_study_ends_its_worker_without_waiting_for_the_fork_server(tmp_path, fake_env):
    """nothing_left: queued, running, a failed cell with retries left or a search budget left are work; a worker
    whose study has none returns before waiting on its (still importing) fork server."""
    import optuna
    from optuna.trial import TrialState

    from harness.sweep.study import next_trial, nothing_left
    from harness.sweep.worker import WorkerOptions, worker_loop

    url = default_storage_url("t", tmp_path / "studies")
    spec = load_spec(write_spec(tmp_path / "s.yaml", grid={"method.r": [4, 8]}, max_retries=1))
    study, storage = open_study(spec, url, create=True)
    enqueue_grid(study, storage, url, spec, plan_grid(spec))
    assert not nothing_left(study, spec, None)  # two queued
    first, _ = next_trial(study, storage, spec, url, None)
    study.tell(first, 1.0)
    second, _ = next_trial(study, storage, spec, url, None)
    assert not nothing_left(study, spec, None)  # one running
    assert nothing_left(study, spec, time.time() - 1)  # ... but past the deadline
    second.set_user_attr("reason", "exit code 1")
    study.tell(second, state=TrialState.FAIL)
    assert not nothing_left(study, spec, None)  # failed once, max_retries=1: it runs again
    again, _ = next_trial(study, storage, spec, url, None)
    again.set_user_attr("reason", "exit code 1")
    study.tell(again, state=TrialState.FAIL)
    assert nothing_left(study, spec, None)  # retries spent: the study is finished
    search = load_spec(write_spec(tmp_path / "r.yaml", study="r", sampler="tpe", budget={"n_trials": 3},
                                  search={"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3}}))
    assert not nothing_left(open_study(search, default_storage_url("r", tmp_path / "studies"), create=True)[0],
                            search, None)  # budget left to sample

    class Starter:  # the fork server, still importing: waiting on it is what a finished study must not do
        waited = closed = False

        def wait_ready(self, stop=None):
            Starter.waited = True
            return True

        def close(self):
            Starter.closed = True

    before = len(optuna.load_study(study_name="t", storage=open_storage(url)).get_trials())
    assert worker_loop(spec, WorkerOptions(url, str(tmp_path / "runs"), False, emit=lambda e: None,
                                           starter=Starter())) == 0
    assert not Starter.waited and Starter.closed
    assert len(optuna.load_study(study_name="t", storage=open_storage(url)).get_trials()) == before
