"""Optuna storage for sweep studies: URLs (SQLite by default, PostgreSQL or any SQLAlchemy URL, journal:PATH),
opening them with heartbeats, the storage-level locks that make enqueueing and taking trials exactly-once, and
which RUNNING trials have gone stale (their driver died). What happens to a stale trial: harness/sweep/retry.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from harness import atomic, paths

# Optuna flags heartbeats and fail_stale_trials as experimental and warns when heartbeats are used
# outside Study.optimize; this driver is the ask/tell loop those warnings have in mind.
warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed.*")


warnings.filterwarnings("ignore", message=".*is experimental.*")


warnings.filterwarnings("ignore", message=".*heartbeat_interval.*")


warnings.filterwarnings("ignore", message=".*is an experimental feature.*")


# ------------------------------------------------------------------------------- storage
def default_storage_url(study: str, studies_dir: str | Path | None = None) -> str:
    """sqlite:///<studies_dir>/<study>.db; studies_dir defaults to studies/ under the harness root."""
    return "sqlite:///" + str((Path(studies_dir or paths.studies_dir()) / f"{study}.db").resolve())


def normalize_url(url: str) -> str:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; the pinned driver is psycopg2, so name it
    when psycopg 3 is not installed (an explicit postgresql+driver:// URL is kept as given)."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def _sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def open_storage(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 set_up: bool = False):
    """Optuna storage for a URL: any SQLAlchemy URL (with a heartbeat table when heartbeat_interval is
    given) or journal:PATH (JournalFileBackend, for shared file systems). No stale-trial callback:
    harness/sweep/retry.py decides what a stale trial becomes (Optuna's callback caps driver deaths).
    set_up: the caller's driver opened this storage before it (creating its tables and checking their schema
    against this Optuna), as a trial's child knows: neither is done again (0.1-0.2 s of every trial)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = Path(url[len("journal:"):].removeprefix("//")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    kwargs: dict[str, Any] = {}
    sqlite = _sqlite_path(url)
    if sqlite:
        sqlite.parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    elif url.startswith("postgresql"):
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    if heartbeat_interval:
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    if set_up:
        return optuna.storages.RDBStorage(normalize_url(url), skip_compatibility_check=True, skip_table_creation=True,
                                          **kwargs)
    with _creation_lock(url), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # two processes creating the tables at once collide (alembic_version)
        return optuna.storages.RDBStorage(normalize_url(url), **kwargs)


@contextlib.contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    if url.startswith(("postgresql", "mysql")):
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        class _Engine:  # study_lock only needs .engine
            engine = sa.create_engine(normalize_url(url), poolclass=NullPool)

        try:
            with study_lock(_Engine, url, "__create_tables__"):
                yield
        finally:
            _Engine.engine.dispose()
        return
    with study_lock(None, url, "__create_tables__"):
        yield


@contextlib.contextmanager
def study_lock(storage, url: str, study: str) -> Iterator[None]:
    """A lock shared by every process using this study: PostgreSQL advisory lock, MySQL GET_LOCK,
    or an fcntl lock file beside a SQLite database or journal file."""
    if url.startswith(("postgresql", "mysql")):
        import sqlalchemy as sa

        key = int.from_bytes(hashlib.sha256(f"harness-sweep:{study}".encode()).digest()[:8], "big", signed=True)
        with storage.engine.connect() as conn:
            if url.startswith("postgresql"):
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            else:
                conn.execute(sa.text("SELECT GET_LOCK(:k, 600)"), {"k": str(key)})
            try:
                yield
            finally:
                if url.startswith("postgresql"):
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                else:
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:k)"), {"k": str(key)})
                conn.commit()
        return
    if url.startswith("journal:"):
        target = Path(url[len("journal:"):].removeprefix("//")).expanduser()
    elif url == "sqlite:///:memory:":
        yield
        return
    elif _sqlite_path(url):
        target = _sqlite_path(url)
    else:
        raise ValueError(f"storage {url!r}: supported are sqlite:///PATH, postgresql://..., mysql://... and journal:PATH")
    # not ".lock": Optuna's journal lock uses that name
    with atomic.file_lock(target.with_name(target.name + ".harness-lock")):
        yield


def _heartbeat_enabled(storage) -> bool:
    return getattr(storage, "heartbeat_interval", None) is not None


def record_heartbeat(storage, trial_id: int) -> None:
    """RDBStorage's heartbeat table; elsewhere (journal files) a `heartbeat_at` user attribute."""
    if _heartbeat_enabled(storage):
        storage.record_heartbeat(trial_id)
    else:
        storage.set_trial_user_attr(trial_id, "heartbeat_at", time.time())


def stale_trial_ids(study, storage, grace_period: int) -> list[int]:
    """Ids of RUNNING trials whose driver stopped: no heartbeat for grace_period seconds, or none at all
    although the trial was taken that long ago (a driver killed between taking a trial and its first
    heartbeat). Call under the study lock."""
    from optuna.trial import TrialState

    now = time.time()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    old = {t._trial_id for t in running if t.datetime_start is not None and now - t.datetime_start.timestamp() > grace_period}
    if _heartbeat_enabled(storage):
        stale = set(storage._get_stale_trial_ids(study._study_id))  # BaseHeartbeat's own query (as optuna.storages.fail_stale_trials)
        silent = old - stale - _ids_with_heartbeat(storage, sorted(old - stale))
        return [t._trial_id for t in running if t._trial_id in stale | silent]
    out = []
    for t in running:  # journal files: the `heartbeat_at` attribute (the machines' clocks must agree)
        beat = t.user_attrs.get("heartbeat_at") or (t.datetime_start.timestamp() if t.datetime_start else None)
        if beat is not None and now - beat > grace_period:
            out.append(t._trial_id)
    return out


def _ids_with_heartbeat(storage, trial_ids: list[int]) -> set[int]:
    """Which of these trials have a row in RDBStorage's heartbeat table (Optuna's stale query skips the others)."""
    if not trial_ids:
        return set()
    import sqlalchemy as sa

    query = sa.text("SELECT trial_id FROM trial_heartbeats WHERE trial_id IN :ids").bindparams(sa.bindparam("ids", expanding=True))
    with storage.engine.connect() as conn:
        return {row[0] for row in conn.execute(query, {"ids": list(trial_ids)})}
