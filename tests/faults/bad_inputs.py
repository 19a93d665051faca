"""Run the sweep driver on inputs that used to crash it or its trials, and classify what happens to each.

    python -m tests.faults.bad_inputs            # a table, then a JSON summary

Each input gets a fresh directory and one real `harness sweep` (the stand-in trainer of tests/sweep_fakes.py
runs the trials). Outcomes: `ok` (exit 0, every cell COMPLETE, and the command line each child got
composes with the real config code to the intended value, run id and study name), `clear error`
(non-zero exit, no traceback, the cause named), `crash` (a traceback), `wrong` (exit 0, but a child's
command line does not compose, or composes to another value: the real trainer would fail or train
something else).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tests.sweep_fakes import make_fake_env, trials_of, write_spec


def _case(work: Path, name: str) -> tuple[Path, dict, list[str], str, dict]:
    """(spec, env, extra args, study, expected notes values) for one input."""
    env = make_fake_env(work)
    study, extra = "t", []
    notes = {"a..b": ["a..b"], "x=y": ["x=y"], "p/q": ["p/q"], "../data/x.json": ["../data/x.json"],
             "${oc.env:HOME}": ["${oc.env:HOME}"], "back\\slash": ["back\\slash"], "nan (a string)": ["nan"]}.get(name, ["ok"])
    kw: dict = {"grid": {"notes": notes}}
    if name == "study named s=1":
        study = kw["study"] = "s=1"
    if name == "seed 10**130 (run id > 128 chars)":
        kw["seeds"] = [0, 10**130]
    if name == "runs root under a regular file":
        (work / "blocker").write_text("")
        extra = ["--runs-root", str(work / "blocker" / "runs")]
    if name == "read-only runs root":
        (work / "ro").mkdir()
        (work / "ro").chmod(0o555)
        extra = ["--runs-root", str(work / "ro")]
    return write_spec(work / "s.yaml", **kw), env, extra, study, notes


CASES = ["a..b", "x=y", "p/q", "../data/x.json", "${oc.env:HOME}", "back\\slash", "nan (a string)", "study named s=1",
         "seed 10**130 (run id > 128 chars)", "runs root under a regular file", "read-only runs root", "unsafe run id queued earlier"]


def classify(name: str) -> tuple[str, str]:
    work = Path(tempfile.mkdtemp(prefix="sweep-bad-input-"))
    spec, env, extra, study, notes = _case(work, name)
    if name == "read-only runs root" and os.access(work / "ro", os.W_OK):
        return "n/a", "running as root: chmod does not stop root"
    if name == "unsafe run id queued earlier":
        code = ("import sys; from harness.sweep.spec import load_spec; from harness.sweep.plan import plan_grid; "
                "from harness.sweep.storage import default_storage_url; from harness.sweep.study import open_study; "
                "spec = load_spec(sys.argv[1]); study, _ = open_study(spec, default_storage_url('t', 'studies'), create=True); "
                "t = plan_grid(spec)[0]; study.enqueue_trial({}, user_attrs={'params': t.params, 'cell': t.cell, 'seed': t.seed, "
                "'run_id': '../evil', 'overrides': t.overrides})")
        subprocess.run([sys.executable, "-c", code, str(spec)], cwd=work, env=env, check=True, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "harness", "sweep", str(spec), *extra], cwd=work, env=env,
                       capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    if "Traceback" in out:
        return "crash", out.strip().splitlines()[-1][:160]
    if r.returncode != 0:
        lines = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()]
        return "clear error", f"exit {r.returncode}: " + " | ".join(lines[:2])[:200]
    from harness import config

    trials = trials_of(work, study)
    if not trials or any(t.state.name != "COMPLETE" for t in trials):
        return "wrong", f"exit 0 but states {[t.state.name for t in trials]}"
    for t in trials:
        argv = yaml.safe_load((Path(t.user_attrs["run_dir"]) / "overrides.yaml").read_text())
        try:
            cfg = config.compose(argv)
        except config.ConfigError as exc:
            return "wrong", f"the trainer would refuse its command line: {exc.errors[0][:160]}"
        if (cfg.notes, cfg.run_id, cfg.name) != (t.user_attrs["params"]["notes"], t.user_attrs["run_id"], study):
            return "wrong", f"notes={t.user_attrs['params']['notes']!r} reaches the trainer as {cfg.notes!r}"
    return "ok", f"exit 0, {len(trials)} trial(s) COMPLETE, values arrive unchanged"


def main() -> int:
    results = {}
    for name in CASES:
        outcome, detail = classify(name)
        results[name] = outcome
        print(f"{name:<36} {outcome:<12} {detail}", flush=True)
    counts: dict[str, int] = {}
    for v in results.values():
        counts[v] = counts.get(v, 0) + 1
    print(json.dumps({"inputs": len(results), "outcomes": counts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
