"""Ratings back in: filled sheets (CSV, JSONL, Label Studio exports) and judgment files read and checked
against the key, every bad row reported with its location.

    harness human import human/e2e-r1/annotator-*.csv --key human/e2e-r1/key.json
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from harness.human.sheets import SCALE, WINNERS, jsonl_lines, jsonl_objects


# ------------------------------------------------------------------------------------ import
def _read_sheet(path: Path, mode: str, criteria: list[str]):
    """Yield (row_label, fields) with fields {"id", <criterion>|"winner", "comment"} as raw values,
    or (row_label, error message) for rows that cannot be read at all."""
    wanted = criteria if mode == "pointwise" else ["winner"]
    suffix = path.name.lower()
    if suffix.endswith(".csv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            missing = [c for c in ["id"] + wanted if c not in cols]
            if missing:
                yield "header", f"missing column(s) {', '.join(missing)} (this key is {mode}; expected id, {', '.join(wanted)})"
                return
            for n, row in enumerate(reader, 2):  # spreadsheet row numbers: the header is row 1
                if None in row:
                    yield f"row {n}", f"more cells than header columns: {row[None]!r}"
                    continue
                yield f"row {n}", {k: row.get(k) for k in ["id", *wanted, "comment"]}
    elif suffix.endswith(".jsonl"):
        for n, row in jsonl_lines(path):
            yield f"line {n}", row if isinstance(row, str) else {k: row.get(k) for k in ["id", *wanted, "comment"]}
    elif suffix.endswith(".json"):
        try:
            tasks = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            yield "file", f"not JSON ({e.msg}); expected a Label Studio JSON export"
            return
        if not isinstance(tasks, list):
            yield "file", "expected a list of tasks (Label Studio: Export -> JSON)"
            return
        for n, task in enumerate(tasks, 1):
            yield from _labelstudio_task(n, task, wanted)
    else:
        yield "file", "unknown sheet format: use .csv, .jsonl or a Label Studio export .json"


def _labelstudio_task(n: int, task, wanted: list[str]):
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        yield f"task {n}", "no `data` object (use Label Studio's full JSON export, not JSON-MIN or CSV)"
        return
    anns = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not anns:
        yield f"task {n}", {"id": data.get("id"), **{w: None for w in wanted}, "comment": None}
        return
    for j, ann in enumerate(anns):
        fields = {"id": data.get("id"), **{w: None for w in wanted}, "comment": None}
        for res in ann.get("result") or []:
            name, value = res.get("from_name"), res.get("value") or {}
            if name in wanted:
                fields[name] = value.get("rating") if "rating" in value else (value.get("choices") or [None])[0]
            elif name == "comment":
                fields["comment"] = "\n".join(value.get("text") or [])
        yield (f"task {n}" if len(anns) == 1 else f"task {n} annotation {j + 1}"), fields


def _score(raw) -> int | None | str:
    """A 1-5 rating from a cell: int, or None if empty, or an error message."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        v = float(raw.strip().lstrip("'") if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        return f"not a number: {raw!r}"
    if not v.is_integer() or not SCALE[0] <= v <= SCALE[1]:
        return f"out of range: {raw!r} (whole numbers {SCALE[0]}-{SCALE[1]})"
    return int(v)


def read_ratings(sheets: list[str | Path], key: dict):
    """Check every row of every sheet against the key: (ratings, errors, rows_seen).

    ratings: [{"id", "annotator", "file", "row", <criterion>: int ... | "winner": a|b|tie, "comment"}]
    errors:  [{"file", "row", "id", "problem"}]; a row with any problem is not in ratings.
    """
    mode, criteria, rows = key["mode"], key["criteria"], key["rows"]
    seen: dict[str, str] = {}
    good, errors, n_rows = [], [], 0
    for sheet in sheets:
        path = Path(sheet)
        if not path.exists():
            errors.append({"file": str(path), "row": "file", "id": None, "problem": "file not found"})
            continue
        for where, fields in _read_sheet(path, mode, criteria):
            n_rows += 1
            if isinstance(fields, str):
                errors.append({"file": str(path), "row": where, "id": None, "problem": fields})
                continue
            blind = str(fields.get("id") or "").strip().lstrip("'")
            problems = []
            if not blind:
                problems.append("missing id")
            elif blind not in rows:
                problems.append(f"unknown id {blind!r} (not in this key: a sheet from another export, or an edited id)")
            elif blind in seen:
                problems.append(f"duplicate id {blind!r} (first seen at {seen[blind]})")
            rec = {"id": blind, "file": str(path), "row": where, "comment": fields.get("comment") or ""}
            if mode == "pointwise":
                for c in criteria:
                    v = _score(fields.get(c))
                    if v is None:
                        problems.append(f"missing rating for {c}")
                    elif isinstance(v, str):
                        problems.append(f"{c} {v}")
                    else:
                        rec[c] = v
            else:
                w = fields.get("winner")
                w = w.strip().lower() if isinstance(w, str) else w
                if w in (None, ""):
                    problems.append("missing rating for winner")
                elif w not in WINNERS:
                    problems.append(f"winner {fields.get('winner')!r} is not one of a, b, tie")
                else:
                    rec["winner"] = w
            if blind and blind in rows and blind not in seen:
                seen[blind] = f"{path}:{where}"
            if problems:
                errors.extend({"file": str(path), "row": where, "id": blind or None, "problem": p} for p in problems)
                continue
            rec["annotator"] = rows[blind]["annotator"]
            good.append(rec)
    return good, errors, n_rows


# ------------------------------------------------------------------------------------- Elo
def read_judgments(files: list[str | Path]):
    """Pairwise judgments from JSONL files: (judgments, errors). Each line: item_id, model_a, model_b,
    winner ("a", "b" or "tie"), optional judge. Errors name file and line."""
    good, errors = [], []
    for f in files:
        path = Path(f)
        if not path.exists():
            errors.append(f"{path}: file not found")
            continue
        for n, row in jsonl_objects(path, errors):
            problems = [f"missing {k}" for k in ("item_id", "model_a", "model_b", "winner") if row.get(k) in (None, "")]
            w = str(row.get("winner", "")).strip().lower()
            if row.get("winner") not in (None, "") and w not in WINNERS:
                problems.append(f"winner {row['winner']!r} is not one of a, b, tie")
            if not problems and str(row["model_a"]) == str(row["model_b"]):
                problems.append(f"model_a and model_b are the same ({row['model_a']!r})")
            if problems:
                errors.extend(f"{path}:{n}: {p}" for p in problems)
                continue
            good.append({"item_id": row["item_id"], "model_a": str(row["model_a"]), "model_b": str(row["model_b"]),
                         "winner": w, "judge": row.get("judge")})
    return good, errors
