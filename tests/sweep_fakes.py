"""The stand-in trainer and helpers shared by the sweep tests (tests/test_sweep.py, tests/faults/,
tests/test_sweep_postgres.py) and the driver-kill measurement (tests/faults/kill_loop.py).

    from tests.sweep_fakes import FAKE_TRAIN, fake_env, write_spec, harness, trials_of, by_state

FAKE_TRAIN is selected with HARNESS_SWEEP_TRAIN_CMD instead of `python -m harness train`: it takes the
same overrides and writes the same run record in a fraction of a second, so crashes, kills, pruning and
resumes are exercised without a model. Every attempt appends `start` and, when it completes, `done` to
<run_dir>/attempts.log, so a test can count how often each cell ran and completed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from harness.sweep.storage import default_storage_url, open_storage
from harness.sweep.worker import TRAIN_CMD_ENV

REPO = Path(__file__).resolve().parent.parent

# Behaviour chosen by `notes=`:
#   ok | crash (exit 1 with a failed summary, unless FAKE_FIXED=1) | kill (SIGKILL itself, like the OOM killer) | sleep:S
#   | sleepfirst:S (sleep only when not resuming: room to interrupt it even on a loaded machine)
#   | sleepn:K:S (sleep S seconds on each of the first K attempts of its run: a cell to kill the driver in K times)
#   | nometric (exit 0 without best_val_loss) | prune (report validation losses to the study through
#   harness.sweep.pruning, exit 3 when told to) | termparent (complete, SIGTERM its driver, finish 1 s later
#   with exit 0, ignoring SIGINT) | termafter (complete and exit 0; a helper SIGTERMs the driver 0.3 s later)
#   | termparent-int (complete, SIGTERM its driver, then die of the driver's SIGINT: an uncaught KeyboardInterrupt)
#   | termparent-130 (the same, but the KeyboardInterrupt is turned into exit code 130, as `harness train` does)
#   | progress:S (write progress.json at step 20 of 100 as the trainer's display does, sleep S seconds, complete)
FAKE_TRAIN = textwrap.dedent('''
    import os, signal, subprocess, sys, time
    from harness import atomic
    from harness.run import record as records
    def unquote(v):  # Hydra's quoted values (format_value): 'it\\'s' -> it's
        return v[1:-1].replace("\\\\'", "'") if len(v) > 1 and v[0] == v[-1] == "'" else v
    ovs = sys.argv[1:]
    kv = {k: unquote(v) for k, v in (o.lstrip("+").split("=", 1) for o in ovs)}  # light on purpose: no Hydra import per trial
    run_dir = records.run_dir_for(kv["output_dir"], kv["name"], kv["run_id"])
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "overrides.yaml", "".join(f"- {o!r}\\n" for o in ovs))
    with open(run_dir / "attempts.log", "a") as f:
        f.write("start\\n")
    attempts = (run_dir / "attempts.log").read_text().count("start")
    seed, r, mode = int(kv.get("train.seed", 0)), int(kv.get("method.r", 16)), kv.get("notes", "ok")
    base = {"schema": 1, "name": kv["name"], "run_id": kv["run_id"], "run_dir": str(run_dir), "study": kv["study"],
            "trial": int(kv["trial"]), "seed": seed}
    prior = records.read_summary(run_dir) or {}
    atomic.write_json(run_dir / "summary.json", {**base, "status": "running", "resumed": bool(prior)})
    print("fake training", mode, flush=True)
    if mode.startswith("progress:"):  # where a trainer stands, as harness/run/progress.py writes it
        from harness.run.progress import Progress
        shown = Progress(command="train")
        shown.attach(run_dir)
        shown.begin("train", total=100, unit="step")
        shown.update(done=10, loss=2.5)
        time.sleep(0.2)
        shown.update(done=20, loss=2.25, tokens_per_s=1500.0)
        shown.save()
        time.sleep(float(mode.split(":")[1]))
    if mode.startswith("sleep:"):
        time.sleep(float(mode.split(":")[1]))
    if mode.startswith("sleepfirst:") and not prior:  # a long first attempt to interrupt; a resume is quick
        time.sleep(float(mode.split(":")[1]))
    if mode.startswith("sleepn:") and attempts <= int(mode.split(":")[1]):
        time.sleep(float(mode.split(":")[2]))
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "crash" and not os.environ.get("FAKE_FIXED"):  # FAKE_FIXED=1: the cause was fixed
        atomic.write_json(run_dir / "summary.json", {**base, "status": "failed", "reason": "RuntimeError: boom"})
        print("Traceback: RuntimeError: boom", flush=True)
        sys.exit(1)
    loss = 1.0 + r / 100 + seed / 1000
    if mode == "nometric":  # completes, but the run record lacks the objective
        atomic.write_json(run_dir / "summary.json", {**base, "status": "completed", "reason": ""})
        sys.exit(0)
    if mode == "prune":  # report to the study like the trainer's pruning callback
        from harness.sweep.pruning import OptunaReporter
        reporter = OptunaReporter(kv["storage"], kv["study"], int(kv["trial"]))
        for step in (10, 20, 30):
            if reporter.report(step, loss + 1 / step):
                atomic.write_json(run_dir / "summary.json", {**base, "status": "pruned", "reason": f"pruned at step {step}",
                                                             "pruned_at_step": step})
                sys.exit(3)
    atomic.write_json(run_dir / "summary.json", {**base, "status": "completed", "reason": "", "best_val_loss": loss,
                      "peak_memory_mb": 100.0 + r, "train_time_s": 0.01, "eval_time_s": 0.0, "resumed": bool(prior)})
    with open(run_dir / "attempts.log", "a") as f:
        f.write("done\\n")
    if mode == "termparent":  # the driver is told to stop while this child is finishing
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        os.kill(os.getppid(), signal.SIGTERM)
        time.sleep(1.0)
    if mode.startswith("termparent-"):  # ... and the SIGINT the driver sends its child on stopping ends it
        os.kill(os.getppid(), signal.SIGTERM)
        try:
            time.sleep(30)
        except KeyboardInterrupt:
            if mode == "termparent-130":
                sys.exit(130)
            raise
    if mode == "termafter":  # ... or just after it exited 0
        code = f"import os, signal, time; time.sleep(0.3); os.kill({os.getppid()}, signal.SIGTERM)"
        subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
''')

BASE = ["model=tiny-llama", "data=alpaca-tiny", "tracker=none", "train.max_steps=2", "method=lora"]


def make_fake_env(tmp_path: Path) -> dict:
    """The environment that selects the stand-in trainer (written to tmp_path/fake_train.py)."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    return dict(os.environ, **{TRAIN_CMD_ENV: f"{sys.executable} {script}", "PYTHONPATH": str(REPO)})


@pytest.fixture()
def fake_env(tmp_path, monkeypatch):
    """cwd = a temp dir (studies/ and runs/ land there) and the stand-in trainer selected."""
    monkeypatch.chdir(tmp_path)
    return make_fake_env(tmp_path)


def is_running(pid: int) -> bool:
    """A live process (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def write_spec(path: Path, **kw) -> Path:
    tree = {"study": "t", "base": BASE, "objectives": [{"metric": "summary.best_val_loss", "direction": "minimize"}],
            "heartbeat": {"interval_s": 1, "grace_period_s": 3}, **kw}
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def harness(args: list[str], env: dict, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def trials_of(cwd: Path, study: str = "t"):
    import optuna

    url = default_storage_url(study, cwd / "studies")
    return optuna.load_study(study_name=study, storage=open_storage(url)).get_trials(deepcopy=False)


def by_state(trials) -> dict[str, list]:
    out: dict[str, list] = {}
    for t in trials:
        out.setdefault(t.state.name, []).append(t)
    return out


def attempts(run_dir: str | Path) -> tuple[int, int]:
    """(attempts started, attempts completed) of one run directory of the stand-in trainer."""
    log = Path(run_dir) / "attempts.log"
    text = log.read_text() if log.exists() else ""
    return text.count("start"), text.count("done")
