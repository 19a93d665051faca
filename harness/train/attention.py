"""Training attention on CPUs: the block-causal kernel where one forward + backward measures faster than sdpa.

torch's CPU sdpa kernel is slow in bf16, its backward most of all: on 1 thread of an AMX Xeon (2026-12-03), one
attention layer's forward + backward at 2 x 128 bf16 tokens (9 query / 3 key-value heads of 64) took 7.0 ms with
sdpa, 2.7 ms with the block-causal kernel (harness/model/attention.py); 1.4x faster at 256 positions, 1.25x at 512,
0.76x at 1,024 (sdpa wins). In fp32 the two are within 10% of each other (0.89-1.04x), so fp32 runs keep sdpa
unmeasured. Whole SmolLM2-135M steps (bf16 autocast, batch 2 x 128, same machine): full 1.23x and LoRA 1.10x on 1
thread, LoRA 1.03x on 2 threads; 2 x 512 on 2 threads 1.02x (benchmarks/results/amx/train-attention.md).

`choose(model, batch, positions)` (harness/train/fit.py, bf16 runs on a CPU): times both kernels at the run's shape
(batch rows of train.max_length positions, the model's head shape, bf16 autocast; forward + backward, interleaved
after a warm-up, median of 3) and switches the model to the kernel when it is at least MIN_SPEEDUP faster. The
timing is cached per machine (CPU model + flags, torch version, threads, shape) under
$HARNESS_CACHE/train-attention/. Not applied: models that do not run sdpa, attention dropout (the kernel hands
dropout to sdpa anyway), and shapes where autograd would keep more than MAX_SAVED_BYTES of attention probabilities
(batch x heads x positions² / 2 fp32 values per layer; sdpa keeps O(positions)). The decision, both timings and
why go into manifest.json (`train_attention`); `restore` puts sdpa back after training, so evaluation (exact mode:
lm-eval's numbers) runs the model's own kernel, and `own_kernel` does the same while the trainer scores the model
(validation loss, benchmarks during training). HARNESS_TRAIN_ATTENTION=blocked forces it, =sdpa forbids it,
=auto (default) measures.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass

from harness.model.attention import BLOCK, NAME, blocked_attention, head_shape, register
from harness.run import measured

OVERRIDE_ENV = "HARNESS_TRAIN_ATTENTION"
OVERRIDES = ("auto", "blocked", "sdpa")
CACHE_KIND = "train-attention"
MIN_SPEEDUP = 1.1  # within 10% the switch changes nothing but rounding
MAX_SAVED_BYTES = 1 << 30  # attention probabilities autograd may keep over all layers (1 GiB)
MAX_MEASURE_BATCH = 4  # the timing's rows: the run's batch, capped (both kernels scale with it)


@dataclass(frozen=True)
class TrainAttention:
    """Which attention a training run uses and why: manifest.json `train_attention`."""

    implementation: str  # harness_blocked | the model's own
    source: str  # measured | cache | forced | not applicable
    reason: str
    sdpa_ms: float | None = None  # median ms of one layer's forward + backward at `shape`
    blocked_ms: float | None = None
    shape: tuple | None = None  # (batch, positions, query heads, key-value heads, head dim)
    machine_key: str | None = None
    cache_path: str | None = None

    def record(self) -> dict:
        return asdict(self)


def saved_bytes(layers: int, batch: int, heads: int, positions: int) -> int:
    """Pure: bytes of attention probabilities the block-causal kernel leaves for the backward pass: per layer and
    head, each block of BLOCK queries keeps fp32 probabilities over the keys up to its end."""
    per_head = sum(min(positions, s + BLOCK) * min(BLOCK, positions - s) for s in range(0, positions, BLOCK))
    return 4 * layers * batch * heads * per_head


def decide(sdpa_ms: float, blocked_ms: float, min_speedup: float = MIN_SPEEDUP) -> tuple[bool, str]:
    """Pure: switch only when the kernel measured at least `min_speedup` times faster than sdpa."""
    speedup = measured.speedup(sdpa_ms, blocked_ms, "attention (sdpa, blocked)")
    if speedup >= min_speedup:
        return True, f"block-causal attention {speedup:.2f}x faster than sdpa for a bf16 forward + backward here"
    return False, (f"block-causal attention {speedup:.2f}x sdpa's speed for a bf16 forward + backward "
                   f"(< {min_speedup:.2f}x): sdpa kept")


def override() -> str:
    """HARNESS_TRAIN_ATTENTION: auto (measure), blocked (force), sdpa (never). Anything else is an error."""
    from harness.model.device import env_choice

    return env_choice(OVERRIDE_ENV, OVERRIDES, "auto times both kernels once per machine and shape")


def measure(batch: int, positions: int, heads: int, kv_heads: int, head_dim: int, reps: int = 3) -> dict:
    """Milliseconds of one attention layer's forward + backward under bf16 autocast, sdpa vs the block-causal
    kernel, interleaved after a warm-up of each; medians of `reps`."""
    import torch

    from harness.model.attention import _sdpa

    class Probe(torch.nn.Module):
        is_causal = True
        num_key_value_groups = heads // kv_heads

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, n, positions, head_dim, generator=gen).requires_grad_()
               for n in (heads, kv_heads, kv_heads))
    probe = Probe().train()
    fns = {"sdpa": _sdpa(), "blocked": blocked_attention}
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.enable_grad():
        for rep in range(reps + 1):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out, _ = fn(probe, q, k, v, None, dropout=0.0, scaling=head_dim ** -0.5)
                out.float().sum().backward()
                if rep:
                    times[name].append((time.perf_counter() - t0) * 1000)
                q.grad = k.grad = v.grad = None
    return {"sdpa_ms": round(statistics.median(times["sdpa"]), 3),
            "blocked_ms": round(statistics.median(times["blocked"]), 3), "reps": reps,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _config(model):
    from harness.model.scoring import base_model

    inner = base_model(model)
    config = getattr(inner, "config", None)
    return inner, config, getattr(config, "text_config", None) or config


def choose(model, batch: int, positions: int) -> TrainAttention:
    """For a bf16 training run on a CPU: switch the model to the block-causal kernel where it measures faster
    (module docstring); returns the decision either way."""
    import torch

    from harness.run.environment import cpu_identity

    inner, config, text = _config(model)
    current = str(getattr(config, "_attn_implementation", None))
    shape = head_shape(model)
    layers = int(getattr(text, "num_hidden_layers", 0) or 0)
    if current != "sdpa":
        return TrainAttention(current, "not applicable", f"the model runs {current!r} attention, not sdpa")
    if shape is None or not layers:
        return TrainAttention(current, "not applicable", "no attention-head shape or layer count in the model's config")
    if float(getattr(text, "attention_dropout", 0.0) or 0.0) > 0:
        return TrainAttention(current, "not applicable", "attention dropout: the kernel hands dropout to sdpa")
    run_shape = (int(batch), int(positions), *shape)
    need = saved_bytes(layers, batch, shape[0], positions)
    if need > MAX_SAVED_BYTES:
        return TrainAttention(current, "not applicable", f"the kernel would keep {need / 2**30:.1f} GiB of attention "
                              f"probabilities for the backward pass (> {MAX_SAVED_BYTES / 2**30:.0f} GiB): sdpa kept",
                              shape=run_shape)
    forced = override()
    if forced != "auto":
        decision = TrainAttention(NAME if forced == "blocked" else current, "forced", f"{OVERRIDE_ENV}={forced}",
                                  shape=run_shape)
    else:
        timed = (min(int(batch), MAX_MEASURE_BATCH), int(positions), *shape)
        cpu = cpu_identity()
        key = measured.machine_key(cpu, torch.__version__, torch.get_num_threads(), shape=list(timed))
        timings, source, path = measured.cached(CACHE_KIND, key, ("sdpa_ms", "blocked_ms"), lambda: measure(*timed),
                                                {"shape": list(timed), "cpu": cpu["cpu"], "torch": torch.__version__})
        use, reason = decide(timings["sdpa_ms"], timings["blocked_ms"])
        decision = TrainAttention(NAME if use else current, source, reason, timings["sdpa_ms"], timings["blocked_ms"],
                                  run_shape, key, path)
    if decision.implementation == NAME:
        try:
            inner.set_attn_implementation(register())
        except (ValueError, AttributeError, NotImplementedError) as exc:  # its architecture takes no registered kernel
            return TrainAttention(current, "not applicable", f"the model takes no registered attention: {exc}"[:300])
    return decision


@contextlib.contextmanager
def own_kernel(model):
    """While the trainer scores the model (validation loss, benchmarks during training): the model's own sdpa, the
    kernel of the evaluation after training, so the two give one number on the same rows; the block-causal kernel
    is back afterwards. Nothing happens to a model that runs another kernel."""
    inner, config, _ = _config(model)
    switched = str(getattr(config, "_attn_implementation", None)) == NAME
    if switched:
        inner.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        if switched:
            inner.set_attn_implementation(register())


def restore(model, decision: TrainAttention) -> None:
    """After training: the model's own sdpa back (evaluation in exact mode is lm-eval's kernel)."""
    if decision.implementation == NAME:
        _config(model)[0].set_attn_implementation("sdpa")
