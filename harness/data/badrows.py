"""Bad rows: the error when more than data.max_bad_share of a data set is malformed, and the lines that name
the first few, with their reasons, when fewer are (the trainer and the evaluator print those; stats keep them all).

    print(describe_bad_rows(prepared.stats))   # "2 malformed rows skipped (row = line of the file):
                                               #    row 3: invalid JSON: ... / row 7: field 'output' is empty"
"""
from __future__ import annotations

from harness.data.read import DataError

ROW_NUMBERS = {"line": "line of the file", "record": "record of the file"}


def describe_bad_rows(stats: dict, k: int = 5) -> str:
    """The malformed rows a preparation skipped (stats of prepare() or load_eval_set()): their count, then the
    first k with their reasons, one a line; "" when there are none."""
    n = stats.get("n_bad", 0)
    if not n:
        return ""
    listed = stats.get("bad_rows", [])[:k]
    unit = ROW_NUMBERS.get(stats.get("row_numbers", ""))
    lines = [f"{n} malformed row{'s' if n != 1 else ''} skipped" + (f" (row = {unit})" if unit else "") + ":"]
    lines += [f"  row {b['row']}: {b['reason']}" for b in listed]
    if n > len(listed):
        lines.append(f"  ... and {n - len(listed)} more")
    return "\n".join(lines)


def check_bad(where: str, rows: int, bad: list[dict], max_share: float, columns: list[str]) -> None:
    if not bad or len(bad) / max(rows, 1) <= max_share:
        return
    listed = "\n".join(f"  row {b['row']}: {b['reason']}" for b in bad[:10])
    hint = ""
    reasons = {b["reason"] for b in bad}
    if len(bad) == rows and len(reasons) == 1 and next(iter(reasons)).startswith("missing field"):
        hint = (f"\nEvery row lacks that column. The file's columns are: {', '.join(columns) or '(none)'}. Map ours "
                "to theirs with data.fields (e.g. data.fields.completion=COLUMN); a prompt-only set (no target "
                "column) is for evaluation only (an eval generation suite), not for training.")
    raise DataError(
        f"{where}: {len(bad)} of {rows} rows ({len(bad) / max(rows, 1):.1%}) are malformed, more than "
        f"data.max_bad_share={max_share}. First {min(10, len(bad))}:\n{listed}{hint}\n"
        "Fix: clean those rows in the file (row numbers are 1-based lines for JSONL/CSV/text, records for "
        "JSON/Parquet/datasets), or raise data.max_bad_share to train on the rest (bad rows are listed in "
        "the run's manifest.json)."
    )
