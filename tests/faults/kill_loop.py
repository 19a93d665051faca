"""Kill -9 the sweep driver at random moments, many times, then let one run finish; count what survived.

    python -m tests.faults.kill_loop --kills 20                # a single-process driver
    python -m tests.faults.kill_loop --kills 20 --workers 2    # a driver with two worker processes

A grid of `--cells` cells runs on the stand-in trainer (tests/sweep_fakes.py; each trial sleeps `--trial-s`
seconds) with max_retries: 0, so a driver death counted as a failure of its trial would show up as a lost
cell. The driver is started and killed with SIGKILL, `--kills` times: a third of the kills at a random
moment of its first `--max-s` seconds (mostly start-up on a loaded machine), the others a random 0..2 x
trial-s seconds after it printed that a trial started (while the trial runs, is recorded, or the next
one is taken). Then one run goes to the end. Prints JSON: kills, kills that hit a running trial, final exit code, cells lost (no COMPLETE
trial), duplicate cells (more than one COMPLETE trial, or a trainer that completed one run directory
twice), run records left `running`, and how the killed attempts ended.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.sweep_fakes import attempts, make_fake_env, trials_of, write_spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--cells", type=int, default=24)
    ap.add_argument("--trial-s", type=float, default=2.0, help="how long each stand-in trial sleeps")
    ap.add_argument("--max-s", type=float, default=12.0, help="kill each driver after a random 1..MAX_S seconds")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default="", help="work directory (default: a new temporary one)")
    args = ap.parse_args(argv)

    rng = random.Random(args.seed)
    work = Path(args.dir or tempfile.mkdtemp(prefix="sweep-kill-loop-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**make_fake_env(work), "PYTHONUNBUFFERED": "1"}  # the driver's "trial N start" lines, as they happen
    spec = write_spec(work / "s.yaml", grid={"notes": [f"sleep:{args.trial_s:g}"], "method.r": list(range(1, args.cells + 1))},
                      max_retries=0, heartbeat={"interval_s": 1, "grace_period_s": 2})
    cmd = [sys.executable, "-m", "harness", "sweep", str(spec)] + (["--workers", str(args.workers)] if args.workers > 1 else [])
    kills, in_flight, finished_early, errors = 0, 0, False, 0
    with open(work / "drivers.log", "ab") as log:
        while kills < args.kills and errors < 5:
            out = work / f"driver-{kills}.log"
            started = datetime.datetime.now()
            with open(out, "wb") as f:
                proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT)
            when = rng.uniform(1.0, args.max_s)
            if rng.random() > 1 / 3:  # after a trial started
                while proc.poll() is None and b" start " not in out.read_bytes():
                    time.sleep(0.05)
                when = rng.uniform(0.0, 2 * args.trial_s)
            try:
                rc = proc.wait(timeout=when)
                if rc == 0:  # nothing left to kill
                    finished_early = True
                    break
                errors += 1  # a driver that stopped by itself (see drivers.log)
                continue
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                kills += 1
            time.sleep(0.3)  # let a worker's clean-up (--workers) reach the study before counting
            if (work / "studies" / "t.db").exists():  # trials this driver (or its workers) had started and not finished
                in_flight += any(t.datetime_start and t.datetime_start >= started and t.state.name in ("RUNNING", "FAIL")
                                 for t in trials_of(work))
            print(f"kill {kills}: {in_flight} of them with a trial in flight", file=sys.stderr, flush=True)
        final = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=3600).returncode

    trials = trials_of(work)
    complete: dict[str, int] = {}
    for t in trials:
        if t.state.name == "COMPLETE":
            complete[t.user_attrs["cell"]] = complete.get(t.user_attrs["cell"], 0) + 1
    cells = {t.user_attrs["cell"] for t in trials}
    run_dirs = [d for d in (work / "runs" / "t").iterdir() if d.is_dir()]
    ended: dict[str, int] = {}
    for t in trials:
        if t.state.name == "FAIL":
            ended[t.user_attrs.get("ended", "?")] = ended.get(t.user_attrs.get("ended", "?"), 0) + 1
    report = {
        "kills": kills, "kills_with_a_trial_in_flight": in_flight, "finished_before_all_kills": finished_early,
        "drivers_that_stopped_by_themselves": errors,
        "final_exit_code": final, "cells": args.cells, "cells_in_study": len(cells),
        "cells_lost": args.cells - len(complete), "duplicate_cells": sum(n > 1 for n in complete.values()),
        "run_dirs_completed_twice": sum(attempts(d)[1] > 1 for d in run_dirs),
        "recovered_from_run_record": sum(bool(t.user_attrs.get("recovered")) for t in trials),
        "runs_left_running": sum(json.loads((d / "summary.json").read_text()).get("status") == "running"
                                 for d in run_dirs if (d / "summary.json").exists()),
        "trials": len(trials), "failed_attempts_by_cause": ended, "work_dir": str(work),
    }
    print(json.dumps(report, indent=1))
    ok = final == 0 and report["cells_lost"] == 0 and report["duplicate_cells"] == 0 and report["run_dirs_completed_twice"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
