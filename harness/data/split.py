"""The train / validation split: which rows are held out, decided by each row's split key (its format's
split_key: rows sharing a prompt share it) and a seed.
"""

from __future__ import annotations

import random

from harness.data.read import DataError


def val_indices(keys: list[str], val_size: float, seed: int, where: str) -> set[int]:
    """Deterministic validation rows: whole groups of rows sharing a prompt, shuffled by seed, until
    the requested count (val_size < 1: a share; >= 1: a row count) is reached."""
    n = len(keys)
    if val_size <= 0 or n == 0:
        return set()
    want = int(val_size) if val_size >= 1 else max(1, round(val_size * n))
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    order = list(groups)
    random.Random(seed).shuffle(order)
    val: list[int] = []
    for k in order:
        if len(val) >= want:
            break
        val += groups[k]
    if len(val) >= n:
        raise DataError(f"{where}: data.val_size={val_size} leaves no training rows ({n} usable rows, "
                        f"{len(val)} would go to validation). Lower data.val_size or use more rows.")
    return set(val)
