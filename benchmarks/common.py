"""Shared plumbing for the benchmarks: options, isolated child processes, timing statistics,
the machine description and the section/row format every benchmark returns.

    python -m benchmarks.run                 # uses this module; see benchmarks/run.py
    python -m benchmarks.common child MODULE FUNCTION ARGS.json OUT.json   # one isolated measurement

Each configuration that reports a memory peak runs in its own child process
(`run_child`), so peaks never mix: the child's peak RSS comes from the kernel's rusage of that
very process (os.wait4), not from a process that already held another model.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------- options
@dataclass
class Options:
    """What a benchmark run measures and at what size. `quick` = tiny model, seconds (smoke)."""

    quick: bool = False
    reps: int = 3  # repetitions for whole-measurement benchmarks (eval, report); training: steps are the reps
    model: str = "smollm2-135m"
    data: str = "alpaca-demo"
    max_length: int = 256
    batch_size: int = 4
    warmup_steps: int = 2
    steps: int = 10  # measured optimizer steps per training configuration
    bf16_steps: int | None = None  # measured steps for bf16 configurations (default: steps); bf16 is slow on CPUs without it
    train_reps: int = 2  # child processes per training configuration and implementation, interleaved
    bf16_reps: int | None = None  # the same for bf16 configurations (default: train_reps)
    methods: tuple[str, ...] = ("full", "lora", "qlora")
    precisions: tuple[str, ...] = ("fp32", "bf16")
    impls: tuple[str, ...] = ("harness", "plain", "trl")
    packing_precision: str = "auto"  # the harness default; fp32 is faster on CPUs without native bf16
    packing_max_length: int = 512  # long enough that most alpaca rows leave padding (at 128 most rows fill it)
    ppl_docs: int = 1  # wikitext2 documents scored by both perplexity implementations
    ppl_max_length: int = 1024
    mc_task: str = "arc_easy"
    mc_items: int = 20
    gen_prompts: int = 32
    gen_batch: int = 32
    gen_new_tokens: int = 64
    sweep_trials: tuple[int, ...] = (2, 4)
    sweep_workers: tuple[int, ...] = (1, 2)
    report_runs: int = 1000
    child_timeout_s: float = 1800.0
    train_budget_min: float | None = None  # training configurations not started within this are "not measured"
    deadline: float | None = None  # epoch seconds: configurations not started by then are reported "not measured"
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="harness-bench-")))

    @classmethod
    def quick_defaults(cls, **kw) -> "Options":
        """Tiny model, tiny data, one of everything: the smoke version the tests run."""
        base = dict(
            quick=True, reps=1, model="tiny-llama", data="alpaca-tiny", max_length=128, packing_max_length=128, batch_size=2,
            warmup_steps=1, steps=2, train_reps=1, ppl_docs=1, ppl_max_length=128, mc_items=4, gen_prompts=4, gen_batch=2,
            gen_new_tokens=4, sweep_trials=(2,), sweep_workers=(1,), report_runs=12, child_timeout_s=600.0,
        )
        base.update(kw)
        return cls(**base)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.time() > self.deadline

    def timeout(self) -> float:
        """A child's time limit: child_timeout_s, cut to what is left before the deadline (at least 60 s)."""
        if self.deadline is None:
            return self.child_timeout_s
        return max(60.0, min(self.child_timeout_s, self.deadline - time.time() + 300.0))

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["workdir"] = str(self.workdir)
        return d


# ------------------------------------------------------------------------------- statistics
def median(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.median(vals) if vals else None


def spread(values) -> dict:
    """min / median / max of repeated measurements (None-safe), for the JSON record."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"n": 0, "min": None, "median": None, "max": None}
    return {"n": len(vals), "min": min(vals), "median": statistics.median(vals), "max": max(vals)}


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either side is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return float(a) / float(b)


def step_throughput(step_times: list[float], step_tokens: list[int]) -> dict:
    """Per-step tokens/s -> median, and total tokens / total time over the measured steps."""
    if not step_times or len(step_times) != len(step_tokens):
        raise ValueError(f"step_throughput: {len(step_times)} times for {len(step_tokens)} token counts")
    per_step = [n / t for n, t in zip(step_tokens, step_times) if t > 0]
    return {
        "tokens_per_s": median(per_step),
        "tokens_per_s_mean": sum(step_tokens) / sum(step_times) if sum(step_times) > 0 else None,
        "step_s": median(step_times),
        "steps": len(step_times),
        "tokens_per_step": median(step_tokens),
    }


# ------------------------------------------------------------------------------------ machine
def machine() -> dict:
    """What these numbers were measured on (absolute numbers move between machines)."""
    info: dict[str, Any] = {
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "load_avg_1m_5m_15m": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    from harness.run.environment import cpu_flags, cpu_name, git_info, package_versions

    info["cpu"] = cpu_name()
    info["cpu_flags"] = [f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c"))]
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gb"] = round(int(mem[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS")
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        pass
    kind = cpu_kind()
    info.update(cpu_kind=kind["kind"], native_bf16=kind["native_bf16"], cpu_model_id=kind["model_id"])
    info["packages"] = package_versions()
    info["git"] = git_info()
    return info


def model_arch(model: str) -> dict:
    """The shape facts FLOP counts and matmul shapes need, from the (converted) model's config.json:
    layers, hidden, attention width (heads x head_dim), key/value width, MLP width, vocabulary, tied head."""
    from harness import config
    from harness.model.load import local_dir

    c = json.loads((local_dir(config.compose([f"model={model}", "tracker=none"]).model) / "config.json").read_text())
    c = {**c, **(c.get("text_config") or {})}  # multimodal configs keep the language model's fields there
    hidden, heads = c["hidden_size"], c["num_attention_heads"]
    head_dim = c.get("head_dim") or hidden // heads
    return {"layers": c["num_hidden_layers"], "hidden": hidden, "attn_dim": heads * head_dim,
            "kv_dim": c.get("num_key_value_heads", heads) * head_dim, "ffn": c.get("intermediate_size") or 4 * hidden,
            "vocab": c["vocab_size"], "tied": bool(c.get("tie_word_embeddings", True))}


def cpu_kind() -> dict:
    """The CPU kind (AVX2 only / AVX512-BF16 / AMX) and whether bf16 is native, from /proc/cpuinfo's flags."""
    from harness.run.environment import cpu_identity

    ident = cpu_identity()
    return {"cpu": ident["cpu"], "model_id": ident["model_id"], "kind": ident["kind"], "native_bf16": ident["native_bf16"]}


def load_now() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


# ------------------------------------------------------------------------------ child processes
class ChildError(RuntimeError):
    pass


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def run_command(cmd: list[str], log: Path, timeout_s: float, cwd: Path | None = None, env: dict | None = None) -> dict:
    """Run a command to the end; return its exit code, wall time and peak RSS (MiB, from wait4 rusage).
    Output goes to `log`. On timeout the process is killed and the result says so."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=str(cwd or REPO), env=env or child_env())
        deadline = t0 + timeout_s
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
            "timed_out": timed_out, "log": str(log)}


def log_tail(path: str | Path, n: int = 8) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in lines[-n:] if line.strip())[-800:]


def run_child(module: str, function: str, kwargs: dict, workdir: Path, tag: str, timeout_s: float = 1800.0) -> dict:
    """Call benchmarks.<module>.<function>(**kwargs) in a fresh Python process; return its JSON result
    plus `peak_rss_mb` and `process_wall_s` of that process. Raises ChildError naming the log on failure."""
    workdir.mkdir(parents=True, exist_ok=True)
    args_path, out_path, log = workdir / f"{tag}.args.json", workdir / f"{tag}.out.json", workdir / f"{tag}.log"
    args_path.write_text(json.dumps(kwargs, default=str))
    out_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.common", "child", module, function, str(args_path), str(out_path)]
    res = run_command(cmd, log, timeout_s)
    if res["timed_out"]:
        raise ChildError(f"{tag}: timed out after {timeout_s:.0f} s (log {log})")
    if res["returncode"] != 0 or not out_path.exists():
        raise ChildError(f"{tag}: exit code {res['returncode']}: {log_tail(log)} (full log {log})")
    out = json.loads(out_path.read_text())
    out["peak_rss_mb"] = res["peak_rss_mb"]
    out["process_wall_s"] = res["wall_s"]
    return out


def _child_main(argv: list[str]) -> int:
    from harness.run import memory

    module, function, args_path, out_path = argv
    kwargs = json.loads(Path(args_path).read_text())
    # every side of a measurement (harness, plain loop, TRL, lm-eval) under the allocator setting `harness train`
    # and `harness eval` run with (harness/run/memory.py); HARNESS_MALLOC=default measures glibc's own
    malloc = memory.keep_freed_memory()
    try:
        fn = getattr(importlib.import_module(f"benchmarks.{module}"), function)
        result = fn(**kwargs)
    except Exception:
        traceback.print_exc()
        return 1
    from harness import atomic

    if isinstance(result, dict):
        result.setdefault("malloc", malloc)

    atomic.write_json(out_path, result)
    return 0


# ------------------------------------------------------------------------------------ sections
def section(name: str, title: str, rows: list[dict] | None = None, *, columns: list[str] | None = None,
            goals: list[dict] | None = None, notes: list[str] | None = None, params: dict | None = None) -> dict:
    """A benchmark's result: a table (rows, the columns to show), goal verdicts, notes."""
    return {"name": name, "title": title, "rows": rows or [], "columns": columns or [], "goals": goals or [],
            "notes": notes or [], "params": params or {}}


def goal(text: str, value, target: str, met: bool | None, note: str = "") -> dict:
    """met=None: not measured (the note says why)."""
    return {"goal": text, "value": value, "target": target, "met": met, "note": note}


def call(fn, *args, **kwargs):
    """fn(*args, **kwargs) without the keyword arguments fn does not take (optional knobs such as
    progress=False, on harness APIs that are still moving)."""
    import inspect

    params = inspect.signature(fn).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return fn(*args, **kwargs)


def missing_modules(*names: str) -> list[str]:
    """harness modules that do not exist yet (benchmarks report 'not measured' for them)."""
    out = []
    for n in names:
        try:
            spec = importlib.util.find_spec(n)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            out.append(n)
    return out


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "child":
        sys.exit(_child_main(sys.argv[2:]))
    print("usage: python -m benchmarks.common child MODULE FUNCTION ARGS.json OUT.json", file=sys.stderr)
    sys.exit(2)
