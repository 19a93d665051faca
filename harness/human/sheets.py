"""What a human-evaluation round trip agrees on: the schema version, the rating scale, criteria names,
the accepted winners of a pairwise judgment, and the JSONL line reader shared by every reader.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

SCHEMA = 1


DEFAULT_CRITERIA = ("relevance", "fluency", "coherence", "factual_accuracy")


SCALE = (1, 5)


WINNERS = ("a", "b", "tie")


FORMATS = ("csv", "jsonl", "labelstudio")


CRITERION = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class HumanEvalError(ValueError):
    """Bad input to export/import/elo; the message names the input and the fix."""


def jsonl_lines(path: Path):
    """(line number, object or the reason the line is not one) for each non-blank line of a JSONL file."""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, f"not JSON ({e.msg})"
            continue
        yield n, row if isinstance(row, dict) else "not a JSON object"


def jsonl_objects(path: Path, problems: list[str]):
    """(line number, object) for each JSON object line of path; other lines go to problems with their number."""
    for n, row in jsonl_lines(path):
        if isinstance(row, str):
            problems.append(f"{path}:{n}: {row}")
            continue
        yield n, row
