"""Tests for warm trial starts (harness/sweep/warm.py): a sweep worker forks each trial from a fork server that
has the libraries imported; the trial must behave as a fresh `python -m harness train` would.

    python -m pytest -q tests/test_sweep_warm.py            # the slow ones: add -m slow (or nothing: all run)

The tests with the real trainer start a fork server (its imports: 10-40 s on the 2-core machine), so they carry
the slow marker; tests/test_sweep.py's fast real-trainer test runs its one trial warm too (it checks the record).
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

from harness.sweep.warm import COLD_ENV, Starter, default_train_command
from harness.sweep.worker import TRAIN_CMD_ENV
from tests.sweep_fakes import BASE, harness, is_running, trials_of, write_spec

REPO = Path(__file__).resolve().parent.parent
TINY = [*BASE[:-1], "eval=none", "train.batch_size=2", "train.max_length=128", "train.log_every=1", "data.max_rows=40"]
# what differs between two runs of the same config by nature: identity, clocks, speed, memory
VARIES = {"run_id", "run_dir", "name", "study", "trial", "started_at", "finished_at", "trained_at", "wall_time_s",
          "train_time_s", "eval_time_s", "tokens_per_s", "peak_memory_mb", "time_s", "mem_mb"}


def _env(tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO), HARNESS_PROGRESS="plain")
    for key in (TRAIN_CMD_ENV, COLD_ENV):
        env.pop(key, None)
    return env


def _same(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in VARIES}


def _metrics(run_dir: Path) -> list[dict]:
    return [_same(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _fork_server_children(worker_pid: int) -> list[int]:
    """Pids of the warm children: processes whose parent is a fork server (`-m harness.sweep.warm`) under worker_pid."""
    procs = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                procs[int(d.name)] = (ppid, (d / "cmdline").read_bytes().split(b"\0"))
            except (OSError, IndexError, ValueError):
                pass
    servers = [pid for pid, (ppid, cmd) in procs.items() if b"harness.sweep.warm" in cmd and ppid == worker_pid]
    return [pid for pid, (ppid, _) in procs.items() if ppid in servers]


@pytest.mark.slow  # a fork server's imports plus two warm and two cold tiny trials: 40-120 s on the 2-core machine
def test_warm_trials_record_the_same_losses_and_summary_as_cold_ones(tmp_path, monkeypatch):
    """Two trials each way: the first warm trial loads its tokenizer itself and tells the fork server, the second is
    forked with the server's copy (harness/model/preload.py); both record what their cold twins record."""
    env = _env(tmp_path, monkeypatch)
    runs = {}
    for how in ("warm", "cold"):
        spec = write_spec(tmp_path / f"{how}.yaml", study=how, base=TINY, grid={"train.lr": [2e-4, 1e-4]}, seeds=[3])
        r = harness(["sweep", str(spec), *(["--cold"] if how == "cold" else [])], env, tmp_path, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        trials = sorted(trials_of(tmp_path, how), key=lambda t: t.number)
        assert len(trials) == 2
        for t in trials:
            assert t.state.name == "COMPLETE" and t.user_attrs["start"] == how, t.user_attrs
            runs[how, t.params["train.lr"]] = Path(t.user_attrs["run_dir"])
            assert json.loads((Path(t.user_attrs["run_dir"]) / "trial.json").read_text())["start"] == how
        runs[how, "first"] = Path(trials[0].user_attrs["run_dir"])
    kept = {}
    for lr in (2e-4, 1e-4):
        warm, cold = runs["warm", lr], runs["cold", lr]
        assert "started warm: forked from the worker's fork server" in (warm / "train.log").read_text()
        assert len(_metrics(warm)) >= 3 and _metrics(warm) == _metrics(cold)  # every step's loss, grad norm, lr; val loss
        summary = {h: json.loads((d / "summary.json").read_text()) for h, d in (("warm", warm), ("cold", cold))}
        assert summary["warm"]["status"] == "completed" and _same(summary["warm"]) == _same(summary["cold"])
        manifest = {h: json.loads((d / "manifest.json").read_text()) for h, d in (("warm", warm), ("cold", cold))}
        kept[warm == runs["warm", "first"]] = manifest["warm"].pop("kept_by_fork_server", None)
        assert "kept_by_fork_server" not in manifest["cold"]
        # the data preparation a warm trial stored (or found) is the cold trial's cache hit (harness/data/cache.py)
        assert manifest["warm"]["data"].pop("cache") in ("miss", "hit") and manifest["cold"]["data"].pop("cache") == "hit"
        # per-machine measured choices (bf16 layout, attention kernel): the first trial of a fresh cache measures them,
        # the others read what it stored (harness/run/measured.py) — the same decision and figures, a different source
        for record in (manifest["warm"], manifest["cold"]):
            for choice in record.values():
                if isinstance(choice, dict) and choice.get("source") in ("measured", "cache"):
                    choice.pop("source")
        # the environment record: same interpreter, versions and machine; argv as `python -m harness train` sets it
        assert {k: v for k, v in manifest["warm"].items() if k != "command"} == \
               {k: v for k, v in manifest["cold"].items() if k != "command"}
        if sys.platform.startswith("linux"):  # both processes reuse freed memory (harness/run/memory.py), set the same way
            assert manifest["warm"]["malloc"]["malloc"] == "keep"
        argv = manifest["warm"]["command"]
        assert argv[0] == manifest["cold"]["command"][0] and argv[0].endswith("harness/__main__.py") and argv[1] == "train"
        assert "study=warm" in argv and "study=cold" in manifest["cold"]["command"]
    # the first warm trial loaded the tokenizer itself; the server loaded it after that trial, for the second
    assert kept == {True: None, False: ["tokenizer"]}


@pytest.mark.slow  # a fork server's imports plus two tiny trainings: 30-90 s on the 2-core machine
def test_a_killed_warm_child_fails_its_trial_and_a_sigterm_requeues_the_next(tmp_path, monkeypatch):
    env = _env(tmp_path, monkeypatch)
    long = [o for o in TINY if not o.startswith("train.max_steps")] + ["train.max_steps=100000"]
    spec = write_spec(tmp_path / "s.yaml", base=long, grid={"train.lr": [1e-4, 2e-4]}, max_retries=0)
    proc = subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(spec)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def training(cell: str, timeout: float = 300) -> int:
        """Wait until the trial of `cell` trains (its progress says train), then return its warm child's pid."""
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            for p in (tmp_path / "runs" / "t").glob(f"{cell}-*/progress.json"):
                try:
                    if json.loads(p.read_text()).get("stage") == "train":
                        (child,) = _fork_server_children(proc.pid)
                        return child
                except (ValueError, OSError):
                    pass
            time.sleep(0.3)
        raise AssertionError(f"{cell} never trained: {proc.communicate(timeout=30)[0] if proc.poll() is not None else ''}")

    try:
        os.kill(training("c000"), signal.SIGKILL)  # what the OOM killer does
        second = training("c001")
        os.kill(proc.pid, signal.SIGTERM)  # the worker is told to stop: its warm child is interrupted
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)  # the interrupted child is gone, not orphaned
    trials = trials_of(tmp_path)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "WAITING"], out
    killed, stopped = trials[0].user_attrs, trials[1].user_attrs
    assert killed["start"] == "warm" and killed["ended"] == "trial-failed"
    assert killed["reason"].startswith("child killed by SIGKILL (out of memory?"), killed["reason"]
    assert json.loads((Path(killed["run_dir"]) / "summary.json").read_text())["status"] == "failed"
    assert stopped["ended"] == "interrupted" and trials[2].system_attrs["requeued_from"] == 1
    assert json.loads((Path(stopped["run_dir"]) / "summary.json").read_text())["status"] == "interrupted"


@pytest.mark.slow  # a fork server's imports plus a tiny training: 20-60 s on the 2-core machine
def test_fork_server_and_its_child_die_with_a_killed_worker(tmp_path, monkeypatch):
    env = _env(tmp_path, monkeypatch)
    long = [o for o in TINY if not o.startswith("train.max_steps")] + ["train.max_steps=100000"]
    spec = write_spec(tmp_path / "s.yaml", base=long, grid={"train.lr": [1e-4]})
    proc = subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(spec)], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not _fork_server_children(proc.pid):
            assert proc.poll() is None
            time.sleep(0.3)
        (child,) = _fork_server_children(proc.pid)
        server = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
        proc.kill()  # kill -9 of the worker: nothing of it may go on training (PR_SET_PDEATHSIG, twice)
        proc.wait()
        deadline = time.time() + 20
        alive = [server, child]
        while alive and time.time() < deadline:
            alive = [p for p in alive if is_running(p)]
            time.sleep(0.2)
        assert not alive, f"still running after their worker was killed: {alive} (server {server}, child {child})"
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow  # a fork server's imports: 10-40 s on the 2-core machine
def test_fork_server_death_falls_back_to_cold_starts_once(tmp_path, monkeypatch):
    env = dict(_env(tmp_path, monkeypatch), PYTHONUNBUFFERED="1")
    notes: list[str] = []
    starter = Starter(env, note=notes.append)
    try:
        assert starter.wait_ready() and starter.warm
        cmd = [*default_train_command(), "--cfg", "job", "model=tiny-llama"]  # prints the config, trains nothing
        taken: list[int] = []  # children whose exit code came through their exit pipe (exit_trial)
        report = starter.server._reported
        monkeypatch.setattr(starter.server, "_reported", lambda c: (taken.append(c.pid), report(c))[1])
        child = starter.popen(cmd, env)
        assert type(child).__name__ == "WarmProcess"
        assert child.wait(timeout=120) == 0 and b"tiny-llama" in child.stdout.read()
        assert taken == [child.pid]
        starter.server.proc.kill()  # the fork server dies (OOM killer, a bug): later trials start cold, said once
        starter.server.proc.wait()
        first, second = starter.popen(cmd, env), starter.popen(cmd, env)
        assert isinstance(first, subprocess.Popen) and isinstance(second, subprocess.Popen)
        assert first.wait(timeout=300) == 0 and second.wait(timeout=300) == 0
        first.stdout.close()
        second.stdout.close()
        assert len(notes) == 1 and "starting trials cold from now on" in notes[0] and "died" in notes[0], notes
    finally:
        starter.close()


def test_cold_opt_out_and_the_fake_trainer_start_no_fork_server(tmp_path, monkeypatch):
    """--cold, HARNESS_SWEEP_COLD=1 and HARNESS_SWEEP_TRAIN_CMD (tests) keep today's fresh process per trial."""
    from harness.sweep.spec import load_spec
    from harness.sweep.worker import WorkerOptions, _starter

    spec = load_spec(write_spec(tmp_path / "s.yaml", grid={"train.lr": [1e-4]}))
    monkeypatch.delenv(TRAIN_CMD_ENV, raising=False)
    monkeypatch.delenv(COLD_ENV, raising=False)
    with _starter(spec, WorkerOptions("sqlite://", warm=False)) as s:
        assert s is None
    monkeypatch.setenv(COLD_ENV, "1")
    with _starter(spec, WorkerOptions("sqlite://")) as s:
        assert s is None
    monkeypatch.setenv(COLD_ENV, "0")
    monkeypatch.setenv(TRAIN_CMD_ENV, f"{sys.executable} fake.py")
    with _starter(spec, WorkerOptions("sqlite://")) as s:
        assert s is None


def test_cold_flag_reaches_every_worker_command():
    import argparse

    from harness.sweep.spawn import worker_command

    args = argparse.Namespace(spec="s.yaml", overrides=[], runs_root="runs", study="", stream=False, cold=True)
    assert worker_command(args, "sqlite:///x.db")[-1] == "--cold"  # local --workers N, Slurm array tasks alike
    args.cold = False
    assert "--cold" not in worker_command(args, "sqlite:///x.db")


# A trial child's end as exit_trial does it, with the exit pipe become_trial keeps: output first, then the code
# os._exit made to linger, as the kernel's teardown of a big process does: the report must come before it
CHILD_EXIT = """
import os, sys, time
from harness.sweep import warm
exit_now = os._exit
os._exit = lambda rc: (time.sleep(60), exit_now(rc))
warm._EXIT_FD = int(sys.argv[1])
print("last line of the trial")
warm.exit_trial(int(sys.argv[2]))
"""


def test_a_warm_child_closes_its_output_then_reports_its_exit_code_before_exiting(tmp_path):
    """exit_trial writes the code os._exit leaves (& 0xFF) to the exit pipe, after closing stdout (the worker's
    pipe ends then): the worker need not wait for the kernel to free the process's memory."""
    for rc, reported in ((3, b"3"), (0, b"0"), (300, b"44")):
        read_end, write_end = os.pipe()
        child = subprocess.Popen([sys.executable, "-c", CHILD_EXIT, str(write_end), str(rc)], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(write_end,))
        os.close(write_end)
        try:
            assert child.stdout.read() == b"last line of the trial\n"  # EOF: the child closed it
            assert os.read(read_end, 16) == reported
            assert child.poll() is None  # both came while the process had not yet exited
        finally:
            child.kill()
            child.wait()
            os.close(read_end)
            child.stdout.close()


def test_the_worker_takes_a_reported_exit_code_and_waits_for_the_server_without_one():
    """ForkServer.pump: a code on a child's exit pipe ends that child (the server's later "exited" is ignored); a
    pipe closed with nothing on it (a child killed by a signal) leaves the child to the server's "exited"."""
    import socket
    import threading

    from harness.sweep.warm import ForkServer, WarmProcess

    server = ForkServer.__new__(ForkServer)  # the message handling only: no server process
    server.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.lock, server.children, server.failure, server.ready, server._started = threading.RLock(), {}, "", {}, []
    server._unreaped, server._early_exits = set(), {}
    pipes = {}
    for pid in (101, 102):
        r, w = os.pipe()
        pipes[pid] = w
        server.children[pid] = WarmProcess(server, pid, ["train"], None, r)
    reported, killed = server.children[101], server.children[102]
    try:
        os.write(pipes[101], b"3")
        os.close(pipes[101])
        os.close(pipes[102])  # died without a word
        server.pump(0.5)
        server.pump(0.0)
        assert reported.returncode == 3 and reported.exit_fd is None and 101 not in server.children
        assert killed.returncode is None and killed.exit_fd is None and 102 in server.children
        assert server._unreaped == {101}  # the next start and close() wait for its reap (its memory, a GPU's context)
        for msg in ({"exited": 101, "returncode": 0}, {"exited": 102, "returncode": -9},
                    {"exited": 103, "returncode": -15}):  # 103: read in the same pump as its "started"
            theirs.send(json.dumps(msg).encode())
        server.pump(0.5)
        assert killed.returncode == -9 and reported.returncode == 3 and not server.children
        assert not server._unreaped and server._early_exits == {103: -15}
    finally:
        server.sock.close()
        theirs.close()


def test_fork_hazards_name_a_running_thread():
    """The server refuses to fork while a thread runs (its locks would be copied held); named in the reason."""
    import threading

    from harness.sweep.preimport import fork_hazards

    before = fork_hazards()
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="pool-worker")
    t.start()
    try:
        during = fork_hazards()
    finally:
        stop.set()
        t.join()
    assert len(during) == 1 and "threads running after the imports" in during[0] and during != before


# serve() with its imports, its loads and its thread check stubbed: a fork request's child tells the server one hint
# and ends; the server records what it was told, and after that "load" its thread check finds a thread
SERVE_WITH_HINTS = """
import json, os, socket, sys
from harness.sweep import preimport, warm
told = []
preimport.import_libraries = preimport.warm_up = lambda: None
warm._keep_hinted = lambda data: told.append(data.decode())
preimport.fork_hazards = lambda: ["threads running after the imports: loader"] if told else []
request = warm.serve(socket.socket(fileno=int(sys.argv[1])))
if request is not None:  # the forked child, as a trial that loaded its tokenizer itself
    os.write(request["hint_fd"], b'{"kind": "tokenizer", "path": "/m"}\\n')
    os._exit(0)
print(json.dumps(told))
"""


def test_the_server_loads_what_a_trial_told_it_after_the_trial_and_forks_no_more_if_that_left_a_thread():
    """serve(): each child gets a hint pipe; its hints reach _keep_hinted once it has closed the pipe (here: ended);
    a thread found after that load makes the server answer the next request with an error (the worker then starts
    cold, saying why) rather than fork beside it."""
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen([sys.executable, "-c", SERVE_WITH_HINTS, str(theirs.fileno())], cwd=REPO,
                            pass_fds=(theirs.fileno(),), stdout=subprocess.PIPE, text=True)
    theirs.close()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        ours.settimeout(60)
        assert json.loads(ours.recv(65536))["ready"]
        request = json.dumps({"args": [], "env": {}, "cwd": str(REPO)}).encode()
        socket.send_fds(ours, [request], [null, null, null])
        pid = json.loads(ours.recv(65536))["started"]
        assert json.loads(ours.recv(65536)) == {"exited": pid, "returncode": 0}
        socket.send_fds(ours, [request], [null, null, null])
        answer = json.loads(ours.recv(65536))
        assert answer == {"error": "the warm fork server is not safe to fork after loading what a trial loaded: "
                                   "threads running after the imports: loader"}
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and json.loads(out) == ['{"kind": "tokenizer", "path": "/m"}\n']
    finally:
        os.close(null)
        ours.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()

# What a sweep trial runs after the fork server's preparation (serve(): import_libraries, warm_up, gc.freeze): one tiny
# LoRA trial in process, with the study, trial and storage a sweep worker passes (so its pruning reporter opens
# the study's storage, which the test's process has set up as a driver would); prints the modules the trial imported.
TRIAL_AFTER_WARM_UP = """
import gc, json, sys
from harness.sweep import preimport
preimport.import_libraries(); preimport.warm_up(); gc.collect(); gc.freeze()
url, out = sys.argv[1], sys.argv[2]
before = set(sys.modules)
from harness.cli import main
rc = main(["train", "model=tiny-llama", "data=alpaca-tiny", "tracker=none", "eval=none", "method=lora",
           "train.max_steps=2", "train.batch_size=2", "train.max_length=128", "data.max_rows=40",
           f"output_dir={out}", "study=w", "trial=0", f"storage={url}"])
print(json.dumps({"rc": rc, "imported": sorted(set(sys.modules) - before)}))
"""
# Libraries whose import a warm trial must not pay again (each cost 0.1-1 s per trial before it was preloaded:
# Optuna's storage with SQLAlchemy and alembic was 0.5-0.7 s of a 1.8 s tiny trial's overhead)
PRELOADED = {"optuna", "sqlalchemy", "alembic", "hydra", "omegaconf", "datasets", "lm_eval", "accelerate",
             "safetensors", "tokenizers", "yaml", "jinja2"}


@pytest.mark.slow  # the fork server's imports in a fresh interpreter, then a tiny training: 20-60 s
def test_a_warm_trial_imports_none_of_the_preloaded_libraries_again(tmp_path, monkeypatch):
    import optuna

    from harness.sweep.storage import open_storage

    env = _env(tmp_path, monkeypatch)
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="w", storage=open_storage(url), direction="minimize")
    study.set_user_attr("harness_spec", {"pruner": {"type": "median"}})
    study.enqueue_trial({})
    study.ask()
    probe = subprocess.run([sys.executable, "-c", TRIAL_AFTER_WARM_UP, url,
                            str(tmp_path / "runs")], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0
    again = [m for m in result["imported"] if m.split(".")[0] in PRELOADED]
    assert not again, f"a warm trial imported these itself (add them to harness/sweep/preimport.py PRELOAD): {again}"
    summary = json.loads(next((tmp_path / "runs").glob("*/*/summary.json")).read_text())
    assert summary["status"] == "completed" and summary["trial"] == 0
