"""Ratings back in: filled sheets (CSV, JSONL, Label Studio exports) and judgment files read and checked
against the key, every bad row reported with its location.

    harness human import human/e2e-r1/annotator-*.csv --key human/e2e-r1/key.json
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import NamedTuple

from harness.human.sheets import (
    SCALE,
    WINNERS,
    HumanEvalError,
    decode,
    jsonl_objects,
    jsonl_rows,
    numeric_ids,
    resolve_id,
)

FILE = "file"  # the `where` of a problem with a whole sheet (it cannot be read at all)

NOTES = {"cp1252": "read as Windows-1252 (cp1252: what Excel writes for \"CSV\" on Windows), not UTF-8; check that "
                   "accented letters in the comments look right, or save as \"CSV UTF-8\" next time",
         "utf-16": "read as UTF-16 (Excel's \"Unicode Text\")"}


# ------------------------------------------------------------------------------------ import
def _read_sheet(name: str, text: str, mode: str, criteria: list[str]):
    """Yield (row_label, fields) with fields {"id", <criterion>|"winner", "comment"} as raw values,
    (row_label, error message) for rows that cannot be read, or (FILE, message) for a sheet that cannot."""
    wanted = criteria if mode == "pointwise" else ["winner"]
    if name.endswith(".csv"):
        yield from _csv_rows(text, mode, wanted)
    elif name.endswith(".jsonl"):
        for n, row in jsonl_rows(text):
            yield f"line {n}", row if isinstance(row, str) else {k: row.get(k) for k in ["id", *wanted, "comment"]}
    else:
        try:
            tasks = json.loads(text)
        except json.JSONDecodeError as e:
            yield FILE, f"not JSON ({e.msg} at line {e.lineno} column {e.colno}); expected Label Studio's JSON export (Export -> JSON)"
            return
        rows, bad = labelstudio_rows(tasks, wanted)
        if bad:
            yield FILE, ("not a Label Studio JSON export (Export -> JSON, not JSON-MIN or CSV):\n"
                         + "\n".join(f"  - {b}" for b in bad[:10]) + (f"\n  - ... {len(bad) - 10} more" if len(bad) > 10 else ""))
            return
        yield from rows


def _csv_rows(text: str, mode: str, wanted: list[str]):
    first = text.split("\n", 1)[0]
    delimiter = next((d for d in (";", "\t") if d in first and "," not in first), ",")  # Excel in some locales: ;
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    n = 1
    try:
        cols = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = cols
        missing = [c for c in ["id"] + wanted if c not in cols]
        if missing:
            yield FILE, (f"missing column(s) {', '.join(missing)} in the header row {', '.join(cols) or '(empty file)'}; "
                         f"this key is {mode}: use the sheet export wrote (columns id, {', '.join(wanted)}, comment)")
            return
        for n, row in enumerate(reader, 2):  # spreadsheet row numbers: the header is row 1
            if None in row:
                yield f"row {n}", f"more cells than header columns: {row[None]!r}"
                continue
            yield f"row {n}", {k: row.get(k) for k in ["id", *wanted, "comment"]}
    except csv.Error as e:
        yield FILE, f"not readable as CSV after row {n} ({e}); save it again from the spreadsheet as \"CSV UTF-8\""


def _kind(v) -> str:
    return "missing" if v is None else f"a {type(v).__name__}"


def labelstudio_rows(tasks, wanted: list[str]) -> tuple[list[tuple[str, dict]], list[str]]:
    """(rows, problems) of a parsed Label Studio JSON export (pure): rows as _read_sheet yields them, one
    per annotation not cancelled (a task without one: a row with no ratings); problems: where the file
    is not the shape of such an export, each with its task."""
    if not isinstance(tasks, list):
        return [], [f"the file holds {_kind(tasks)}, expected a list of tasks"]
    if not tasks:
        return [], ["the file holds no tasks"]
    rows, bad, rated = [], [], 0
    for n, task in enumerate(tasks, 1):
        where = f"task {n}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            bad.append(f"{where}: no `data` object")
            continue
        anns = task.get("annotations") or []
        if not isinstance(anns, list) or not all(isinstance(a, dict) for a in anns):
            bad.append(f"{where}: `annotations` is {_kind(anns)}, expected a list of objects")
            continue
        anns = [a for a in anns if not a.get("was_cancelled")]
        blank = {"id": task["data"].get("id"), **{w: None for w in wanted}, "comment": None}
        if not anns:
            rows.append((where, blank))
            continue
        rated += 1
        for j, ann in enumerate(anns):
            label = where if len(anns) == 1 else f"{where} annotation {j + 1}"
            fields, problem = _annotation(ann, wanted)
            if problem:
                bad.append(f"{label}: {problem}")
            else:
                rows.append((label, {**blank, **fields}))
    if not rated and not bad:
        bad.append("no task has an annotation: this is the task file that export wrote, or an export made before "
                   "anyone rated; import the tasks into Label Studio, rate them, then Export -> JSON")
    return rows, bad


def _annotation(ann: dict, wanted: list[str]) -> tuple[dict, str | None]:
    """The rated fields of one Label Studio annotation, or the reason it is not the expected shape."""
    result = ann.get("result")
    if not isinstance(result, list):
        return {}, f"`result` is {_kind(result)}, expected a list (one entry per rated field)"
    fields: dict = {}
    for k, res in enumerate(result):
        value = res.get("value") if isinstance(res, dict) else None
        if not isinstance(value, dict):
            return {}, f"result[{k}] has no `value` object"
        name = res.get("from_name")
        if name in wanted:
            if "rating" in value:
                fields[name] = value["rating"]
            elif isinstance(value.get("choices"), list) and all(isinstance(c, str) for c in value["choices"]):
                fields[name] = (value["choices"] or [None])[0]
            else:
                return {}, f"result[{k}] ({name}): expected `rating` (a number) or `choices` (a list of text)"
        elif name == "comment":
            text = value.get("text") or []
            text = [text] if isinstance(text, str) else text
            if not isinstance(text, list) or not all(isinstance(t, str) for t in text):
                return {}, f"result[{k}] (comment): `text` is {_kind(text)}, expected a list of text"
            fields["comment"] = "\n".join(text)
    return fields, None


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


class Ratings(NamedTuple):
    good: list[dict]  # [{"id", "annotator", "file", "row", <criterion>: int ... | "winner": a|b|tie, "comment"}]
    errors: list[dict]  # [{"file", "row", "id", "problem"}]; a row with any problem is not in good
    rows_read: int
    unreadable: list[dict]  # [{"file", "problem"}]: sheets that could not be read at all
    notes: list[str]  # e.g. a sheet read as Windows-1252


def read_ratings(sheets: list[str | Path], key: dict) -> Ratings:
    """Check every row of every sheet against the key (a key_problems-checked key.json)."""
    mode, criteria, rows = key["mode"], key["criteria"], key["rows"]
    numeric = numeric_ids(rows)
    seen: dict[str, str] = {}
    good, errors, unreadable, notes, n_rows = [], [], [], [], 0
    for sheet in sheets:
        path = Path(sheet)
        name = path.name.lower()
        if not name.endswith((".csv", ".jsonl", ".json")):
            unreadable.append({"file": str(path), "problem": "unknown sheet format: use .csv, .jsonl or a Label Studio export .json"})
            continue
        try:
            text, encoding = decode(path.read_bytes())
        except OSError as e:
            unreadable.append({"file": str(path), "problem": "file not found" if isinstance(e, FileNotFoundError)
                               else f"cannot read ({e.strerror or e})"})
            continue
        except HumanEvalError as e:
            unreadable.append({"file": str(path), "problem": str(e)})
            continue
        if encoding in NOTES:
            notes.append(f"{path}: {NOTES[encoding]}")
        for where, fields in _read_sheet(name, text, mode, criteria):
            if where == FILE:
                unreadable.append({"file": str(path), "problem": fields})
                continue
            n_rows += 1
            if isinstance(fields, str):
                errors.append({"file": str(path), "row": where, "id": None, "problem": fields})
                continue
            blind, cell, problem = resolve_id(fields.get("id"), rows, numeric)
            problems = [problem] if problem else []
            if blind in seen:
                problems.append(f"duplicate id {cell!r} (first seen at {seen[blind]})")
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
            if blind and blind not in seen:
                seen[blind] = f"{path}:{where}"
            if problems:
                errors.extend({"file": str(path), "row": where, "id": blind or cell or None, "problem": p} for p in problems)
                continue
            rec["annotator"] = rows[blind]["annotator"]
            good.append(rec)
    return Ratings(good, errors, n_rows, unreadable, notes)


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
