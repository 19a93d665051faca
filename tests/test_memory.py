"""Process memory: glibc reuses freed blocks (harness/run/memory.py), and a full fine-tune owns its weights before the
optimizer writes them (harness/model/load.py own_trainable_parameters)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from harness.model.load import file_mapped_ranges

# A child that allocates, touches and frees a 64 MiB block (above glibc's largest mmap threshold) five times and
# prints the minor page faults of the last four rounds: the first round faults the block in either way.
_ROUNDS = textwrap.dedent("""
    import ctypes, json, resource, sys
    from harness.run import memory
    state = memory.keep_freed_memory() if sys.argv[1] == "keep" else memory.record()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, faults = 64 << 20, []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"state": state, "later_faults": sum(faults[1:])}))
""")


def _rounds(mode: str, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})}, timeout=120)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    kept, default = _rounds("keep"), _rounds("default")
    assert kept["state"] == {"malloc": "keep", "mmap_max": 0, "trim_threshold": -1}
    assert default["state"]["malloc"] == "default"
    # glibc's default maps and unmaps the block every round: 16,384 faults per round with 4 KiB pages (32 with 2 MiB
    # transparent huge pages); kept, the heap block is reused and nothing is faulted in again
    assert kept["later_faults"] <= 16
    assert default["later_faults"] >= 4 * 32 > kept["later_faults"]


def test_harness_malloc_default_leaves_glibc_alone():
    got = _rounds("keep", {"HARNESS_MALLOC": "default"})
    assert got["state"] == {"malloc": "default", "reason": "HARNESS_MALLOC=default"}
    assert got["later_faults"] >= 4 * 32


# The start of a child that allocates with glibc's malloc directly: keeps freed memory unless argv[1] is "default".
_HEAP_CHILD = textwrap.dedent("""
    import ctypes, json, os, sys
    from harness.run import memory
    memory.keep_freed_memory() if sys.argv[1:2] != ["default"] else None
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
""")

# A child that keeps freed memory, frees 256 MiB of touched heap blocks, and gives them back (or not) to the kernel.
_GIVE_BACK = _HEAP_CHILD + textwrap.dedent("""
    blocks = [libc.malloc(64 << 20) for _ in range(4)]
    for b in blocks:
        ctypes.memset(b, 1, 64 << 20)
    for b in reversed(blocks):
        libc.free(b)
    freed = rss()
    gave = memory.give_back_freed_memory()
    print(json.dumps({"gave": gave, "freed_rss": freed, "after_rss": rss()}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim: Linux only")
def test_kept_memory_goes_back_to_the_kernel_when_asked():
    out = subprocess.run([sys.executable, "-c", _GIVE_BACK, "keep"], capture_output=True, text=True, check=True,
                         timeout=120)
    got = json.loads(out.stdout)
    assert got["gave"] is True
    assert got["freed_rss"] - got["after_rss"] >= 200 << 20  # kept after free(), returned by the trim
    # without the keep setting glibc already unmapped the blocks at free(): nothing to do, nothing claimed
    out = subprocess.run([sys.executable, "-c", _GIVE_BACK, "default"], capture_output=True, text=True, check=True,
                         timeout=120)
    assert json.loads(out.stdout)["gave"] is False


# A child that keeps freed memory and frees 2.25 GiB of touched heap blocks at once: more than the largest positive
# trim threshold mallopt takes (INT_MAX, 2 GiB), as a full fine-tune at 8 x 512 tokens frees at the end of a step.
_BIG_FREE = _HEAP_CHILD + textwrap.dedent("""
    blocks = [libc.malloc(256 << 20) for _ in range(9)]
    for b in blocks:
        ctypes.memset(b, 1, 256 << 20)
    touched = rss()
    for b in reversed(blocks):
        libc.free(b)
    print(json.dumps({"touched_rss": touched, "freed_rss": rss(), "gave": memory.give_back_freed_memory()}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_more_than_2_gib_freed_at_once_stays_for_reuse():
    out = subprocess.run([sys.executable, "-c", _BIG_FREE], capture_output=True, text=True, check=True, timeout=300)
    got = json.loads(out.stdout)
    assert got["touched_rss"] >= 9 * (256 << 20)
    # free() trimmed nothing (with a 2 GiB threshold it gave the 2.25 GiB back here), and malloc_trim still can
    assert got["freed_rss"] >= got["touched_rss"] - (64 << 20) and got["gave"] is True


def test_training_state_is_dropped_before_the_weights_are_written():
    import torch

    from harness.train.fit import drop_training_state

    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    assert len(optimizer.state) == 2 and model.weight.grad is not None
    weights = model.weight.detach().clone()

    # accelerate's AcceleratedOptimizer holds the torch optimizer as .optimizer
    drop_training_state(SimpleNamespace(optimizer=SimpleNamespace(optimizer=optimizer)), model)
    assert len(optimizer.state) == 0 and model.weight.grad is None and model.bias.grad is None
    assert torch.equal(model.weight, weights)  # the trained weights themselves are untouched
    drop_training_state(SimpleNamespace(optimizer=None), model)  # nothing to drop: no error


def test_file_mapped_ranges_keeps_only_file_mappings():
    maps = "\n".join([
        "55d0c0000000-55d0c0021000 r--p 00000000 fd:01 1311 /usr/bin/python3.11",
        "7f0000000000-7f0000400000 r--p 00000000 00:2a 99 /cache/models/m/model.safetensors",
        "7f0000400000-7f0000800000 rw-p 00000000 00:00 0 ",
        "7f0000800000-7f0000801000 rw-p 00000000 00:00 0 [heap]",
        "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]",
    ])
    assert file_mapped_ranges(maps) == [(0x55D0C0000000, 0x55D0C0021000), (0x7F0000000000, 0x7F0000400000)]


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps")
def test_trainable_weights_are_copied_out_of_the_checkpoint_mapping(byo_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from harness.model.load import own_trainable_parameters

    def mapped(p) -> bool:
        with open("/proc/self/maps") as f:
            return any(lo <= p.data_ptr() < hi for lo, hi in file_mapped_ranges(f.read()))

    model = AutoModelForCausalLM.from_pretrained(str(byo_model_dir), dtype=torch.float32, use_safetensors=True)
    params = dict(model.named_parameters())
    frozen = "model.layers.0.mlp.up_proj.weight"
    params[frozen].requires_grad_(False)
    before = {n: p.detach().clone() for n, p in params.items()}
    was_mapped = {n for n, p in params.items() if mapped(p)}
    assert frozen in was_mapped and len(was_mapped) >= 2  # safetensors maps the file: the case this is for

    copied = own_trainable_parameters(model)

    assert copied == sum(p.numel() * p.element_size() for n, p in params.items() if n in was_mapped and n != frozen)
    assert not any(mapped(p) for n, p in params.items() if n != frozen)  # the optimizer writes its own pages now
    assert mapped(params[frozen])  # frozen weights are only read: they stay in the page cache
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())  # same Parameter objects (ties, optimizer)
    assert own_trainable_parameters(model) == 0  # nothing left to copy
