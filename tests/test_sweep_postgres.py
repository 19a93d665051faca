"""Distributed sweeps on a real PostgreSQL server: two workers (as on two machines) share one study.

    bash scripts/start-postgres.sh && python -m pytest tests/test_sweep_postgres.py -q

Reads HARNESS_TEST_PG_URL (default postgresql://postgres@127.0.0.1:54329/harness) and skips with the
reason when it cannot connect. Trials use the stand-in trainer from tests/test_sweep.py (seconds each).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from harness.sweep.storage import normalize_url, open_storage
from harness.sweep.worker import TRAIN_CMD_ENV

pytestmark = pytest.mark.postgres

PG_URL = os.environ.get("HARNESS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:54329/harness")
REPO = Path(__file__).resolve().parent.parent


def _connect_error() -> str | None:
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(normalize_url(PG_URL), connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # no server, no driver, wrong credentials: all mean "skip, and say why"
        return f"cannot connect to PostgreSQL at {PG_URL} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); " \
               "start one with `bash scripts/start-postgres.sh` or set HARNESS_TEST_PG_URL"


@pytest.fixture(scope="module")
def pg_url() -> str:
    err = _connect_error()
    if err:
        pytest.skip(err)
    return PG_URL


@pytest.mark.slow  # two sweep workers on PostgreSQL: 12-15 s
def test_two_workers_on_one_postgres_study_run_each_cell_once(pg_url, tmp_path, monkeypatch):
    import optuna
    from tests.sweep_fakes import FAKE_TRAIN, write_spec  # the stand-in trainer and spec writer

    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ, **{TRAIN_CMD_ENV: f"{sys.executable} {script}", "PYTHONPATH": str(REPO)})
    study = "pg-" + secrets.token_hex(4)  # a fresh study per run; the database is shared
    cells = list(range(1, 9))
    spec = write_spec(tmp_path / "s.yaml", study=study, grid={"notes": ["sleep:1"], "method.r": cells}, seeds=[0])
    # two independent drivers, as two machines would start them, each enqueuing the grid and taking trials
    procs = [subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(spec), "--storage", pg_url,
                               "--runs-root", str(tmp_path / f"runs{i}")], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = optuna.load_study(study_name=study, storage=open_storage(pg_url)).get_trials(deepcopy=False)
    assert len(trials) == len(cells)  # nothing duplicated
    assert sorted(t.user_attrs["params"]["method.r"] for t in trials) == cells  # nothing lost
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2  # both "machines" worked
    # status reads the same study from PostgreSQL
    st = subprocess.run([sys.executable, "-m", "harness", "status", study, "--storage", pg_url], env=env, cwd=tmp_path,
                        capture_output=True, text=True, timeout=60)
    assert st.returncode == 0 and st.stdout.count("COMPLETE ") == len(cells), st.stdout + st.stderr
