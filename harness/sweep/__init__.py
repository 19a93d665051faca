"""Sweep stage: a spec (sweeps/NAME.yaml) -> an Optuna study whose trials are `harness train` runs.

    harness sweep sweeps/quickstart.yaml                       # run or resume the study
    harness sweep sweeps/quickstart.yaml --dry-run             # list the trials, train nothing
    harness sweep sweeps/method_comparison.yaml --workers 2    # two local worker processes
    harness sweep sweeps/lr_search.yaml --storage postgresql://user@host/db   # join from any machine

spec.py parses and checks the spec, expands the grid (every cell x seed) and composes EVERY trial's
config before anything trains. The study lives in Optuna storage (storage.py: SQLite studies/<study>.db
by default, any SQLAlchemy URL, or journal:PATH). Grid cells are enqueued exactly once under a
storage-level lock and workers take WAITING trials under the same lock (study.py), so concurrent
workers never duplicate or lose a cell. Each trial runs `python -m harness train ...` in its own child
process (worker.py; `--workers N` local processes: spawn.py), forked from the worker's fork server that
has the libraries imported (warm.py; `--cold`: a fresh process); its exit code and run directory decide the
trial's state. retry.py decides what runs again: a trial whose driver died is re-queued without limit,
a trial that failed by itself up to max_retries times, failed cells on `--retry-failed`. samplers.py
maps the spec's sampler and pruner names to Optuna objects (each worker seeded apart); pruning.py is the
hook a trial's child uses to report to its study. launcher.py says where the workers run (here, a Slurm job
array written and submitted by slurm.py, or somewhere of the user's choosing). Spec format: docs/sweeps.md;
clusters: docs/cluster.md.
"""
