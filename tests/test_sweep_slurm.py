"""`harness sweep SPEC --launcher slurm` (harness/sweep/launcher.py, slurm.py, harness/commands/launch.py; docs/cluster.md).

    sudo bash scripts/system-deps.sh     # installs slurm-wlm + munge, starts PostgreSQL and a one-node Slurm cluster
    python -m pytest tests/test_sweep_slurm.py -q

The option tests need nothing. The `slurm` tests submit real job arrays to the local cluster of
scripts/start-slurm.sh (started by the fixture; skipped with its message where it cannot start: not root,
packages missing) on the PostgreSQL study storage of scripts/start-postgres.sh (HARNESS_TEST_PG_URL), with
the stand-in trainer of tests/sweep_fakes.py, so each trial takes seconds.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.commands.sweep import run
from harness.sweep.launcher import LauncherError, job_id_from_env, resolve, slurm_time
from tests.sweep_fakes import attempts, by_state, harness, make_fake_env, write_spec

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("HARNESS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:54329/harness")


def sweep_args(*argv: str):
    from harness.cli import build_parser

    return build_parser(only="sweep").parse_args(["sweep", *argv])


# ------------------------------------------------------------------------------- options (no cluster)
def test_time_is_hours_and_minutes_written_as_slurm_reads_it():
    assert slurm_time("04:00") == ("04:00:00", "")  # Slurm alone would read 04:00 as four MINUTES
    assert slurm_time("1:30:15")[0] == "01:30:15" and slurm_time("2-00:00")[0] == "2-00:00:00"
    for bad in ("90", "4h", "00:60", "1-25:00", "00:00"):
        assert slurm_time(bad)[1], bad
    assert "Quote it" in slurm_time(240)[1]  # YAML's `time: 4:00` arrives as the number 240


def test_flags_override_the_spec_which_overrides_the_preset():
    opts = resolve({"kind": "slurm", "partition": "cpu", "time": "01:00:00", "workers": 3}, {"partition": "gpu", "kind": None})
    assert (opts.kind, opts.partition, opts.time, opts.workers, opts.cpus_per_trial) == ("slurm", "gpu", "01:00:00", 3, 2)
    assert resolve({"kind": "slurm", "partition": "cpu"}, {"kind": "local"}).partition == ""  # this command runs locally
    assert resolve({}, {}).kind == "local"
    assert resolve({}, {"kind": "slurm-gpu"}).gpus_per_trial == 1
    with pytest.raises(LauncherError) as e:
        resolve({}, {"kind": "slurm", "workers": 0, "time": "90", "gpus_per_trial": "x", "partition": "a b"})
    assert len(e.value.errors) == 4 and "--time 90: use HH:MM" in str(e.value)  # every problem at once
    with pytest.raises(LauncherError, match="only for a Slurm launcher; add --launcher slurm"):
        resolve({}, {"partition": "gpu"})
    with pytest.raises(LauncherError, match="Did you mean 'slurm'"):
        resolve({}, {"kind": "slurmm"})


def test_a_bad_launcher_block_is_a_spec_error(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", grid={"method.r": [1]}, launcher={"kind": "slurm", "time": 240, "partitoin": "x"})
    assert run(sweep_args(str(spec), "--dry-run")) == 2
    err = capsys.readouterr().err
    assert "launcher.time=240: a number" in err and "launcher.partitoin: unknown launcher option. Did you mean 'partition'?" in err


def test_slurm_refuses_the_default_sqlite_and_a_machine_without_sbatch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path / "s.yaml", grid={"method.r": [1]})
    assert run(sweep_args(str(spec), "--launcher", "slurm", "--time", "25:00")) == 2
    err = capsys.readouterr().err
    assert "not the default SQLite file" in err and "--storage postgresql://" in err
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert run(sweep_args(str(spec), "--launcher", "slurm", "--storage", f"journal:{tmp_path}/j.log")) == 2
    assert "sbatch is not on PATH" in capsys.readouterr().err
    assert not (tmp_path / "studies").exists() and not (tmp_path / "j.log").exists()  # nothing queued


def test_dry_run_prints_the_script_and_submits_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path / "s.yaml", grid={"method.r": [1, 2]},
                      launcher={"kind": "slurm", "partition": "cpu", "time": "02:00", "setup": ["module load cuda"]})
    argv = [str(spec), "--launcher", "slurm", "--workers", "3", "--partition", "gpu", "--gpus-per-trial", "1",
            "--account", "lab", "--storage", "postgresql://me@db-host/harness", "--dry-run"]
    assert run(sweep_args(*argv)) == 0
    out = capsys.readouterr().out
    for line in ("#SBATCH --array=0-2", "#SBATCH --partition=gpu", "#SBATCH --gres=gpu:1", "#SBATCH --time=02:00:00",
                 "#SBATCH --account=lab", "#SBATCH --signal=B:TERM@120", "module load cuda"):
        assert line in out, line
    assert f"-m harness sweep {spec} --storage postgresql://me@db-host/harness --runs-root {tmp_path}/runs --worker" in out
    assert not (tmp_path / "studies").exists()
    # train.device=cuda is for the GPU nodes: not checked on this (CPU) machine when the trials run elsewhere
    assert run(sweep_args(str(spec), "train.device=cuda", *argv[1:])) == 0
    assert "harness train model=tiny-llama" in (out := capsys.readouterr().out) and "train.device=cuda" in out
    assert run(sweep_args(str(spec), "train.device=cuda", "--launcher", "local", "--dry-run")) == 2  # trials here
    assert "train.device=cuda, but" in capsys.readouterr().err


def test_external_launcher_queues_and_prints_the_worker_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path / "s.yaml", grid={"method.r": [1, 2]})
    assert run(sweep_args(str(spec), "--launcher", "external", "--workers", "2", "--storage", f"journal:{tmp_path}/j.log")) == 0
    out = capsys.readouterr().out
    assert "2 trials queued now" in out and f"harness sweep {spec} --storage journal:{tmp_path}/j.log" in out and "--worker" in out


def test_slurm_job_id_of_an_array_task():
    assert job_id_from_env({"SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "42"}) == "41_1"
    assert job_id_from_env({"SLURM_JOB_ID": "42"}) == "42" and job_id_from_env({}) == ""


# ------------------------------------------------------------------------------- a real cluster
@pytest.fixture(scope="module")
def cluster() -> str:
    """The local one-node cluster (scripts/start-slurm.sh, idempotent) and the PostgreSQL study storage."""
    from tests.test_sweep_postgres import _connect_error

    out = subprocess.run(["bash", str(REPO / "scripts" / "start-slurm.sh")], capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        pytest.skip(f"no local Slurm cluster: {(out.stdout + out.stderr).strip()[-400:]} "
                    "(`sudo bash scripts/system-deps.sh` installs slurm-wlm + munge and starts it)")
    err = _connect_error()
    if err:
        pytest.skip(err)
    return PG_URL


def _squeue(job: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %t"], capture_output=True, text=True, timeout=30)
    return out.stdout.split("\n") if out.returncode == 0 and out.stdout.strip() else []


def _trials(url: str, study: str):
    import optuna

    from harness.sweep.storage import open_storage

    return optuna.load_study(study_name=study, storage=open_storage(url)).get_trials(deepcopy=False)


def _wait(job: str, logs: Path, timeout: float = 150) -> None:
    deadline = time.time() + timeout
    while _squeue(job) and time.time() < deadline:
        time.sleep(1)
    if _squeue(job):
        subprocess.run(["scancel", job], timeout=30)
        pytest.fail(f"job {job} still running after {timeout}s; logs:\n" +
                    "\n".join(p.read_text()[-1500:] for p in sorted(logs.glob("*.out"))))


def _submit(tmp_path: Path, url: str, study: str, cells: list[int], notes: str) -> tuple[str, Path, dict]:
    env = make_fake_env(tmp_path)
    spec = write_spec(tmp_path / f"{study}.yaml", study=study, grid={"notes": [notes], "method.r": cells}, seeds=[0])
    out = harness(["sweep", str(spec), "--launcher", "slurm", "--workers", "2", "--cpus-per-trial", "1", "--time", "00:10",
                   "--storage", url, "--runs-root", str(tmp_path / "runs")], env, tmp_path, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    job = out.stdout.split("submitted Slurm job ")[1].split(":")[0]
    script = next((tmp_path / "studies" / study / "slurm").glob("*.sbatch"))
    assert "#SBATCH --array=0-1" in script.read_text()
    return job, script.parent, env


@pytest.mark.slow  # a Slurm job array of real sweep workers: 40-60 s on the 2-core machine
@pytest.mark.slurm
def test_a_job_array_runs_each_cell_once_and_survives_a_cancelled_task(cluster, tmp_path):
    # 1. two array tasks share four cells: each runs exactly once, and status names the task that ran it
    study = "slurm-" + secrets.token_hex(3)
    job, logs, env = _submit(tmp_path, cluster, study, [1, 2, 3, 4], "sleep:2")
    _wait(job, logs)
    trials = _trials(cluster, study)
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials), [(t.number, t.state.name, t.user_attrs.get("reason")) for t in trials]
    assert sorted(t.user_attrs["params"]["method.r"] for t in trials) == [1, 2, 3, 4]
    assert all(attempts(t.user_attrs["run_dir"]) == (1, 1) for t in trials)  # started and completed once each
    tasks = {t.user_attrs["slurm_job"] for t in trials}
    assert tasks <= {f"{job}_0", f"{job}_1"} and tasks
    st = harness(["status", study, "--storage", cluster], env, tmp_path)
    assert st.returncode == 0 and st.stdout.count("COMPLETE ") == 4 and f"slurm {job}_" in st.stdout, st.stdout + st.stderr

    # 2. scancel one task mid-trial (SIGTERM to the worker and its trial's child, SIGKILL after KillWait): the
    #    worker records the trial as interrupted and re-queues it, the other task finishes the study, and no cell
    #    completes twice
    study = "slurm-" + secrets.token_hex(3)
    job, logs, env = _submit(tmp_path, cluster, study, [1, 2, 3, 4], "sleepfirst:6")
    victim, deadline = f"{job}_1", time.time() + 90
    while time.time() < deadline and not any(t.state.name == "RUNNING" and t.user_attrs.get("slurm_job") == victim
                                             for t in _trials(cluster, study)):
        time.sleep(0.5)
    assert time.time() < deadline, f"task {victim} never ran a trial: {_squeue(job)}"
    subprocess.run(["scancel", victim], check=True, timeout=30)
    _wait(job, logs)
    states = by_state(_trials(cluster, study))
    assert len(states.get("COMPLETE", [])) == 4 and not states.get("RUNNING") and not states.get("WAITING"), states
    assert sorted(t.user_attrs["params"]["method.r"] for t in states["COMPLETE"]) == [1, 2, 3, 4]
    cut = [t for t in states.get("FAIL", []) if t.user_attrs.get("slurm_job") == victim]
    assert cut and all(t.user_attrs.get("ended") in ("interrupted", "driver-died") for t in cut), [t.user_attrs for t in states.get("FAIL", [])]
    assert all(attempts(t.user_attrs["run_dir"])[1] == 1 for t in states["COMPLETE"])  # each cell completed once
    finished_by = {t.user_attrs["params"]["method.r"]: t.user_attrs["slurm_job"] for t in states["COMPLETE"]}
    assert all(finished_by[t.user_attrs["params"]["method.r"]] == f"{job}_0" for t in cut)  # the other task took it over


@pytest.mark.slow  # two Slurm tasks, one killed: 13-20 s
@pytest.mark.slurm
def test_a_task_killed_outright_leaves_its_trial_to_the_other_task(cluster, tmp_path):
    # SIGKILL of the worker (a node that crashed, or KillWait running out on a stuck worker; `scancel --signal=KILL`
    # is a plain cancel to Slurm): nothing is recorded, the trial's child dies with its worker (PR_SET_PDEATHSIG),
    # the heartbeat stops and the other task re-queues the trial after grace_period_s (3 s here)
    study = "slurm-" + secrets.token_hex(3)
    job, logs, env = _submit(tmp_path, cluster, study, [1, 2], "sleepfirst:6")
    victim, deadline, running = f"{job}_1", time.time() + 90, []
    while time.time() < deadline and not running:
        running = [t for t in _trials(cluster, study) if t.state.name == "RUNNING" and t.user_attrs.get("slurm_job") == victim]
        time.sleep(0.5)
    assert running, f"task {victim} never ran a trial: {_squeue(job)}"
    os.kill(running[0].user_attrs["worker_pid"], signal.SIGKILL)  # one machine: the task's worker is a process here
    _wait(job, logs)
    states = by_state(_trials(cluster, study))
    assert len(states.get("COMPLETE", [])) == 2 and not states.get("RUNNING") and not states.get("WAITING"), states
    cut = [t for t in states.get("FAIL", []) if t.user_attrs.get("slurm_job") == victim]
    assert [t.user_attrs.get("ended") for t in cut] == ["driver-died"] and f"Slurm job {victim}" in cut[0].user_attrs["reason"]
    assert all(attempts(t.user_attrs["run_dir"])[1] == 1 for t in states["COMPLETE"])
