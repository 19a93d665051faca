"""Fault injection for the sweep driver (harness/sweep/, harness/commands/sweep.py): kill -9 of the driver,
errors in the driver, orphaned workers, a signal while a child finishes, parallel samplers, bad inputs.

    python -m pytest -q -m faults tests/faults/          # this group; also part of the default suite

Every trial uses the stand-in trainer (tests/sweep_fakes.py), so each test takes seconds. The measurement
over many random kills of the driver is tests/faults/kill_loop.py.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness import config, paths
from harness.commands.sweep import run
from harness.run.record import SCHEMA, read_summary, write_summary
from harness.sweep.plan import plan_grid
from harness.sweep.retry import DRIVER_DIED, DRIVER_ERROR, NOT_RETRIED
from harness.sweep.spec import load_spec
from harness.sweep.storage import default_storage_url
from harness.sweep.study import Taker, enqueue_grid, next_trial, open_study
from harness.sweep.worker import TRAIN_CMD_ENV
from tests.sweep_fakes import BASE, attempts, by_state, fake_env, harness, trials_of, write_spec  # noqa: F401 (fixture)

pytestmark = pytest.mark.faults
FAST_HEARTBEAT = {"interval_s": 1, "grace_period_s": 2}


def start_driver(spec: Path, env: dict, cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(spec), *extra], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(predicate, timeout: float = 60, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def sweep_args(*argv: str):
    from harness.cli import build_parser

    return build_parser(only="sweep").parse_args(["sweep", *argv])


def complete_cells(trials) -> list[str]:
    return sorted(t.user_attrs["cell"] for t in trials if t.state.name == "COMPLETE")


# ------------------------------------------------------------------ 1. driver deaths are not retries
@pytest.mark.slow  # six drivers started (five killed): about a minute on a loaded 2-core machine
def test_driver_killed_five_times_in_one_cell_then_rerun_completes_each_cell_once(tmp_path, fake_env):
    # max_retries stays at its default (2): five driver deaths during one cell must not use it up
    spec = write_spec(tmp_path / "s.yaml", grid={"notes": ["sleepn:5:60", "ok"]}, heartbeat=FAST_HEARTBEAT)
    for kill in range(1, 6):
        proc = start_driver(spec, fake_env, tmp_path)
        wait_for(lambda: any(attempts(d)[0] >= kill for d in (tmp_path / "runs" / "t").glob("c000-*")), what=f"attempt {kill}")
        proc.kill()  # kill -9: no clean-up at all; the trial's child dies with it (PR_SET_PDEATHSIG)
        proc.wait()
    r = harness(["sweep", str(spec)], fake_env, tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    trials = trials_of(tmp_path)
    assert complete_cells(trials) == sorted(t.cell for t in plan_grid(load_spec(spec)))  # every cell, each once
    (slow_dir,) = (tmp_path / "runs" / "t").glob("c000-*")
    (ok_dir,) = (tmp_path / "runs" / "t").glob("c001-*")
    assert attempts(slow_dir) == (6, 1) and attempts(ok_dir) == (1, 1)  # resumed in the same run dir; completed once
    fails = by_state(trials)["FAIL"]
    assert len(fails) == 5 and {t.user_attrs["ended"] for t in fails} == {DRIVER_DIED}
    assert all("its driver stopped" in t.user_attrs["reason"] for t in fails)
    assert read_summary(slow_dir)["status"] == "completed"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() below, outside Study.optimize on purpose
def test_stale_trial_is_requeued_without_limit_and_its_run_marked_interrupted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write_spec(tmp_path / "s.yaml", grid={"notes": ["ok"]}, max_retries=0, heartbeat=FAST_HEARTBEAT))
    url = default_storage_url("t", tmp_path / "studies")
    study, storage = open_study(spec, url, create=True)
    enqueue_grid(study, storage, url, spec, plan_grid(spec))
    trial = study.ask()  # taken, and its driver killed before its first heartbeat
    for round_ in range(3):
        run_dir = tmp_path / "runs" / "t" / trial.user_attrs["run_id"]
        run_dir.mkdir(parents=True, exist_ok=True)
        write_summary(run_dir, {"schema": SCHEMA, "status": "running", "name": "t", "run_id": run_dir.name, "run_dir": str(run_dir)})
        trial.set_user_attr("run_dir", str(run_dir))
        time.sleep(spec.grace_period + 1.3)  # no heartbeat for longer than the grace period (SQLite keeps whole seconds)
        taker = Taker()
        new, _ = next_trial(study, storage, spec, url, None, taker)
        old = storage.get_trial(trial._trial_id)
        assert old.state.name == "FAIL" and old.user_attrs["ended"] == DRIVER_DIED, round_
        assert "its driver stopped" in old.user_attrs["reason"]
        assert new is not None and new.number == old.number + 1 and new.user_attrs["run_id"] == old.user_attrs["run_id"]
        assert new.user_attrs["interruptions"] == round_ + 1 and new.user_attrs["failures"] == 0  # max_retries=0 untouched
        assert read_summary(run_dir)["status"] == "interrupted"  # not `running` for good
        assert [n["event"] for n in taker.notes] == ["requeue"]
        trial = new


@pytest.mark.slow
def test_run_that_completed_before_its_driver_died_is_not_trained_again(tmp_path, fake_env, monkeypatch, capsys):
    spec = load_spec(write_spec(tmp_path / "s.yaml", grid={"notes": ["ok"]}, heartbeat=FAST_HEARTBEAT))
    url = default_storage_url("t", tmp_path / "studies")
    study, storage = open_study(spec, url, create=True)
    enqueue_grid(study, storage, url, spec, plan_grid(spec))
    trial, _ = next_trial(study, storage, spec, url, None)
    run_dir = tmp_path / "runs" / "t" / trial.user_attrs["run_id"]  # the trainer finished; its driver was killed
    run_dir.mkdir(parents=True)
    write_summary(run_dir, {"schema": SCHEMA, "status": "completed", "name": "t", "run_id": run_dir.name, "run_dir": str(run_dir),
                            "best_val_loss": 1.5})
    trial.set_user_attr("run_dir", str(run_dir))
    time.sleep(spec.grace_period + 1.3)
    monkeypatch.setenv(TRAIN_CMD_ENV, fake_env[TRAIN_CMD_ENV])
    assert run(sweep_args(spec.source)) == 0, capsys.readouterr()
    stale, retry = trials_of(tmp_path)
    assert stale.user_attrs["ended"] == DRIVER_DIED and retry.state.name == "COMPLETE" and retry.values == [1.5]
    assert retry.user_attrs["recovered"] is True and attempts(run_dir) == (0, 0)  # read from the record, not trained again
    assert read_summary(run_dir)["status"] == "completed"


@pytest.mark.slow
def test_trial_failures_count_against_max_retries_and_retry_failed_brings_them_back(tmp_path, fake_env, monkeypatch, capsys):
    from harness.commands import status

    monkeypatch.setenv(TRAIN_CMD_ENV, fake_env[TRAIN_CMD_ENV])  # the driver runs in this process (quicker)
    spec = write_spec(tmp_path / "s.yaml", grid={"notes": ["crash", "ok"]}, max_retries=1)
    assert run(sweep_args(str(spec))) == 1
    err = capsys.readouterr().err
    (crash_dir,) = (tmp_path / "runs" / "t").glob("c000-*")
    assert attempts(crash_dir) == (2, 0)  # the run and one retry
    last = max(trials_of(tmp_path), key=lambda t: t.number)
    assert f"trial {last.number}" in err and "notes=crash seed=0: child exited with code 1" in err, err
    assert "(after 1 retries)" in err and "--retry-failed" in err
    # raising max_retries in the spec gives the cell its extra retry on the next run
    write_spec(tmp_path / "s.yaml", grid={"notes": ["crash", "ok"]}, max_retries=2)
    assert run(sweep_args(str(spec))) == 1 and attempts(crash_dir) == (3, 0)
    # the cause is fixed: --retry-failed queues the cell again (same run_id), recorded on the new trial
    monkeypatch.setenv("FAKE_FIXED", "1")
    capsys.readouterr()
    assert run(sweep_args(str(spec), "--retry-failed")) == 0
    assert "--retry-failed: trial" in capsys.readouterr().out
    trials = trials_of(tmp_path)
    assert complete_cells(trials) == sorted(t.cell for t in plan_grid(load_spec(spec)))
    done = next(t for t in trials if t.state.name == "COMPLETE" and t.user_attrs["params"]["notes"] == "crash")
    assert done.user_attrs["queued_because"].startswith("--retry-failed") and done.user_attrs["run_id"] == crash_dir.name
    assert attempts(crash_dir) == (4, 1)
    from harness.cli import build_parser

    assert status.run(build_parser(only="status").parse_args(["status", "t", "--verbose"])) == 0
    out = capsys.readouterr().out
    assert f"retried as trial {done.number}" in out and "queued: --retry-failed" in out


# ------------------------------------------------------------------------- 2. errors in the driver
def mount_tmpfs(where: Path, options: str) -> None:
    """A tmpfs at `where` (read-only or tiny: what chmod cannot do to root); skips where mounting is not possible."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the under-a-file case runs everywhere)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")


@pytest.fixture()
def mounts():
    made: list[Path] = []
    yield made
    for m in made:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["under-a-file", "read-only", "full"])
def test_unwritable_runs_root_stops_the_driver_cleanly_and_a_rerun_recovers(tmp_path, fake_env, how, mounts):
    spec = write_spec(tmp_path / "s.yaml", grid={"notes": ["ok"], "method.r": [4, 8]})
    root = tmp_path / "runs"
    if how == "under-a-file":  # works as root too: nothing can create a directory below a regular file
        (tmp_path / "blocker").write_text("a regular file\n")
        root = tmp_path / "blocker" / "runs"
    elif how == "read-only":  # a read-only mount stops root as well (chmod 555 does not)
        mount_tmpfs(root, "ro,size=1m")
        mounts.append(root)
    else:  # a full file system: a 16 KiB tmpfs, filled up
        mount_tmpfs(root, "size=16k")
        mounts.append(root)
        fd = os.open(root / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
    r = harness(["sweep", str(spec), "--runs-root", str(root)], fake_env, tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "sweep stopped: trial 0 (notes=ok method.r=4 seed 0)" in r.stderr
    why = {"under-a-file": "NotADirectoryError", "read-only": "Read-only file system", "full": "No space left on device"}
    assert why[how] in r.stderr and "re-queued" in r.stderr, r.stderr
    first = trials_of(tmp_path)
    assert [t.state.name for t in first] == ["FAIL", "WAITING", "WAITING"]  # cell 0 failed and re-queued; cell 1 untouched
    assert first[0].user_attrs["ended"] == DRIVER_ERROR and first[0].user_attrs["reason"].startswith("driver error: ")
    if how == "under-a-file":
        (tmp_path / "blocker").unlink()
    elif how == "read-only":
        subprocess.run(["mount", "-o", "remount,rw", str(root)], check=True)
    else:
        (root / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,size=64m", str(root)], check=True)
    r = harness(["sweep", str(spec), "--runs-root", str(root)], fake_env, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert complete_cells(trials_of(tmp_path)) == sorted(t.cell for t in plan_grid(load_spec(spec)))


@pytest.mark.slow
def test_full_disk_while_opening_a_trial_log_stops_the_driver_cleanly(tmp_path, fake_env, monkeypatch, capsys):
    """Where no tmpfs can be mounted: the first write of a trial (its train.log) fails with ENOSPC."""
    spec = write_spec(tmp_path / "s.yaml", grid={"notes": ["ok"], "method.r": [4, 8]})
    monkeypatch.setenv(TRAIN_CMD_ENV, fake_env[TRAIN_CMD_ENV])

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("harness.sweep.worker.open", full, raising=False)  # the train.log of the first trial
    assert run(sweep_args(str(spec))) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "re-queued with the same run_id" in err and "Traceback" not in err
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(TRAIN_CMD_ENV, fake_env[TRAIN_CMD_ENV])
    assert run(sweep_args(str(spec))) == 0, capsys.readouterr()
    assert complete_cells(trials_of(tmp_path)) == sorted(t.cell for t in plan_grid(load_spec(spec)))


@pytest.mark.slow
def test_trial_with_an_invalid_run_id_fails_with_the_reason_and_the_rest_runs(tmp_path, fake_env, monkeypatch, capsys):
    spec = load_spec(write_spec(tmp_path / "s.yaml", grid={"notes": ["ok"], "method.r": [4, 8]}))
    url = default_storage_url("t", tmp_path / "studies")
    study, _ = open_study(spec, url, create=True)
    planned = plan_grid(spec)  # cell 0 queued by an older driver with a run id that is not a safe name
    study.enqueue_trial({}, user_attrs={"params": planned[0].params, "cell": planned[0].cell, "seed": 0, "run_id": "../evil",
                                        "overrides": planned[0].overrides})
    monkeypatch.setenv(TRAIN_CMD_ENV, fake_env[TRAIN_CMD_ENV])
    assert run(sweep_args(spec.source)) == 1
    err = capsys.readouterr().err
    assert "1 cell(s) unfinished" in err and "trial 0" in err and "run_id '../evil' is not allowed" in err and "Traceback" not in err
    bad, good = trials_of(tmp_path)
    assert bad.state.name == "FAIL" and bad.user_attrs["ended"] == NOT_RETRIED and good.state.name == "COMPLETE"
    assert not (tmp_path / "evil").exists()


# --------------------------------------------------------------------------------------- 4. orphans
def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended (nothing may reap it in a container)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_workers_and_their_children_die_with_a_killed_driver(tmp_path, fake_env):
    spec = write_spec(tmp_path / "s.yaml", grid={"notes": ["sleep:60"], "method.r": [1, 2, 3, 4]})
    proc = start_driver(spec, fake_env, tmp_path, "--workers", "2")
    family: list[int] = []
    try:
        wait_for(lambda: len(list((tmp_path / "runs" / "t").glob("*/summary.json"))) >= 2, what="both workers' trials")
        workers = _children(proc.pid)
        family = workers + [c for w in workers for c in _children(w)]
        assert len(workers) == 2 and len(family) >= 4, family  # 2 workers, each with its trial's child
        proc.kill()
        proc.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(p) for p in family):
            time.sleep(0.2)
        assert not [p for p in family if _alive(p)], "workers or trial children outlived their driver"
    finally:
        for p in [proc.pid, *family]:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    # on their way out the workers interrupted their trials and re-queued them (same run_id)
    states = by_state(trials_of(tmp_path))
    assert len(states["FAIL"]) == 2 and all(t.user_attrs["ended"] == "interrupted" for t in states["FAIL"])
    assert "COMPLETE" not in states and "RUNNING" not in states


# ------------------------------------------------------------------ 5. a signal while a child finishes
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["termparent", "termafter", "termparent-int", "termparent-130"])
def test_sigterm_while_a_child_finishes_keeps_its_completed_trial(tmp_path, fake_env, mode):
    """termparent-int / -130: the child had recorded its completed result when the driver's SIGINT ended it
    (a KeyboardInterrupt, or exit code 130): the trial is COMPLETE all the same, not interrupted."""
    spec = write_spec(tmp_path / "s.yaml", grid={"notes": [mode, "ok"]})
    r = harness(["sweep", str(spec)], fake_env, tmp_path)
    assert r.returncode == 130, r.stdout + r.stderr  # the driver was told to stop
    trials = trials_of(tmp_path)
    first = trials[0]
    assert first.state.name == "COMPLETE" and first.values == [pytest.approx(1.16)], first.user_attrs.get("reason")
    assert [t.number for t in trials if t.user_attrs["cell"] == first.user_attrs["cell"]] == [0]  # not re-queued
    assert read_summary(first.user_attrs["run_dir"])["status"] == "completed"
    assert "RUNNING" not in by_state(trials)


# --------------------------------------------------------------------------------------- 6. searches
def test_two_workers_on_one_study_sample_different_points(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write_spec(tmp_path / "s.yaml", sampler={"type": "random", "seed": 0}, budget={"n_trials": 4},
                                search={"method.r": {"type": "int", "low": 1, "high": 1_000_000}}))
    url = default_storage_url("t", tmp_path / "studies")
    open_study(spec, url, create=True)
    workers = [(*open_study(spec, url, create=False), Taker()) for _ in range(2)]  # two processes' view of the study
    taken = [next_trial(study, storage, spec, url, None, taker)[0] for study, storage, taker in workers * 2]
    assert len({t.params["method.r"] for t in taken}) == 4
    assert [t.user_attrs["sampler_seed"] for t in taken] == [workers[0][2].sampler_seed, workers[1][2].sampler_seed] * 2
    assert workers[0][2].sampler_seed != workers[1][2].sampler_seed


@pytest.mark.slow  # three worker processes and six trials: about half a minute on a loaded 2-core machine
def test_parallel_workers_sample_different_configurations(tmp_path, fake_env):
    spec = write_spec(tmp_path / "s.yaml", base=[*BASE, "notes=sleep:1"], sampler={"type": "random", "seed": 0},
                      search={"method.r": {"type": "int", "low": 1, "high": 1_000_000}}, budget={"n_trials": 6})
    r = harness(["sweep", str(spec), "--workers", "3"], fake_env, tmp_path, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    trials = trials_of(tmp_path)
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.params["method.r"] for t in trials}) == 6  # every worker drew its own points
    seeds = {t.user_attrs["worker_pid"]: t.user_attrs["sampler_seed"] for t in trials}
    assert len(set(seeds.values())) == len(seeds) >= 2  # one seed per worker, recorded on each trial


# ----------------------------------------------------------------------------------- 7. bad inputs
@pytest.mark.slow
def test_awkward_values_and_study_names_reach_every_trial_unchanged(tmp_path, fake_env):
    values = ["a..b", "x=y", "p/q", "../data/x.json", "${oc.env:HOME}", "back\\slash", "nan"]
    spec = write_spec(tmp_path / "s.yaml", study="s=1", grid={"notes": values})
    dry = harness(["sweep", str(spec), "--dry-run"], fake_env, tmp_path)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    r = harness(["sweep", str(spec)], fake_env, tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    trials = trials_of(tmp_path, "s=1")
    assert sorted(t.user_attrs["params"]["notes"] for t in trials if t.state.name == "COMPLETE") == sorted(values)
    for t in trials:  # what the real trainer would compose from the command line its child got
        argv = yaml.safe_load((Path(t.user_attrs["run_dir"]) / "overrides.yaml").read_text())
        cfg = config.compose(argv)
        assert (cfg.notes, cfg.run_id, cfg.name, cfg.study) == (t.user_attrs["params"]["notes"], t.user_attrs["run_id"], "s=1", "s=1")
        assert paths.check_name(cfg.run_id)


@pytest.mark.slow
def test_cells_that_cannot_run_are_reported_before_anything_runs(tmp_path, fake_env):
    spec = write_spec(tmp_path / "s.yaml", grid={"notes": ["ok"]}, seeds=[0, 10**130])  # the run id would pass 128 characters
    for extra in (["--dry-run"], []):
        r = harness(["sweep", str(spec), *extra], fake_env, tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"seed {10**130}): run_id 'c000-ok-s{10**130}-" in r.stderr and "is not allowed" in r.stderr
        assert "Traceback" not in r.stderr and f"seed 0)" not in r.stderr  # each bad cell named, only those
    assert not (tmp_path / "studies").exists() and not (tmp_path / "runs").exists()
