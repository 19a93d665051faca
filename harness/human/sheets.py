"""What a human-evaluation round trip agrees on: the schema version, the rating scale, criteria names,
the accepted winners of a pairwise judgment, how a file's text is decoded, how ids are written to a
spreadsheet and read back, what a key.json must hold, and the JSONL line reader shared by every reader.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

SCHEMA = 1


DEFAULT_CRITERIA = ("relevance", "fluency", "coherence", "factual_accuracy")


SCALE = (1, 5)


WINNERS = ("a", "b", "tie")


FORMATS = ("csv", "jsonl", "labelstudio")


CRITERION = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class HumanEvalError(ValueError):
    """Bad input to export/import/elo; the message names the input and the fix."""


# ------------------------------------------------------------------------------------- text
ENCODINGS = ("utf-8", "cp1252")  # tried in this order; a UTF-8 byte-order mark is dropped


def decode(data: bytes) -> tuple[str, str]:
    """(text, encoding) of a sheet's bytes: UTF-8 (with or without a BOM), UTF-16 with a BOM (Excel's
    "Unicode Text"), else Windows-1252 (Excel's "CSV" on Windows); HumanEvalError names the fix."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            pass
    why = []
    for encoding, codec in (("utf-8", "utf-8-sig"), ("cp1252", "cp1252")):
        try:
            return data.decode(codec), encoding
        except UnicodeDecodeError as e:
            why.append(f"{encoding}: byte 0x{e.object[e.start]:02x} at offset {e.start + len(data) - len(e.object)}")
    raise HumanEvalError(f"not text in {' or '.join(ENCODINGS)} ({'; '.join(why)}); save it again as UTF-8 (Excel: Save As -> "
                         "\"CSV UTF-8 (Comma delimited)\"; LibreOffice: Character set \"Unicode (UTF-8)\")")


def read_text(path: Path) -> tuple[str, str]:
    """decode() of a file; HumanEvalError names the file."""
    try:
        return decode(Path(path).read_bytes())
    except OSError as e:
        raise HumanEvalError(f"{path}: cannot read ({e.strerror or e})") from None
    except HumanEvalError as e:
        raise HumanEvalError(f"{path}: {e}") from None


def jsonl_rows(text: str):
    """(line number, object or the reason the line is not one) for each non-blank line of JSONL text."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, f"not JSON ({e.msg})"
            continue
        yield n, row if isinstance(row, dict) else "not a JSON object"


def jsonl_lines(path: Path):
    """jsonl_rows of a file (decoded by read_text: a file that is not text raises HumanEvalError)."""
    yield from jsonl_rows(read_text(path)[0])


def jsonl_objects(path: Path, problems: list[str]):
    """(line number, object) for each JSON object line of path; other lines go to problems with their number."""
    for n, row in jsonl_lines(path):
        if isinstance(row, str):
            problems.append(f"{path}:{n}: {row}")
            continue
        yield n, row


# -------------------------------------------------------------------------------------- ids
# A blinded id such as 0012345678901234 or 1e52 is a number to a spreadsheet: it drops the leading
# zeros, keeps 15 significant digits, or shows 1.23457E+19. CSV sheets therefore write every id as
# ID_PREFIX + id (text to Excel and LibreOffice); import strips the prefix, and maps a number a
# spreadsheet made of a bare id back to it when exactly one id of the key fits.
ID_PREFIX = "id-"


def sheet_id(key_id: str) -> str:
    """An id as a CSV sheet shows it."""
    return ID_PREFIX + key_id


_NUMBER = re.compile(r"\+?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NUMERIC_ID = re.compile(r"\d+(?:[eE]\d+)?")  # ids a spreadsheet reads as a number
EXACT_DIGITS = 15  # a spreadsheet number keeps this many significant digits


def _sig(text: str) -> tuple[str, int] | None:
    """A non-negative decimal as (significant digits, exponent of the last one), trailing zeros dropped."""
    try:
        _, digits, exp = Decimal(text).as_tuple()
    except (InvalidOperation, ValueError):
        return None
    return _strip("".join(map(str, digits)).lstrip("0"), int(exp))


def _strip(digits: str, exp: int) -> tuple[str, int]:
    if not digits.strip("0"):
        return "0", 0
    trimmed = digits.rstrip("0")
    return trimmed, exp + len(digits) - len(trimmed)


def _shorten(sig: tuple[str, int], n: int, rounding: bool) -> tuple[str, int]:
    """sig cut to n significant digits, truncated (Excel on input) or rounded half up (display, LibreOffice)."""
    digits, exp = sig
    if len(digits) <= n:
        return sig
    head, rest = digits[:n], digits[n:]
    if rounding and rest[0] >= "5":
        head = str(int(head) + 1)
        if len(head) > n:  # 999 -> 1000
            head, exp = head[:n], exp + 1
    return _strip(head, exp + len(rest))


def numeric_ids(ids) -> dict[str, tuple[str, int]]:
    """The ids a spreadsheet would turn into numbers, with their value (see _sig); the rest are left out."""
    return {i: s for i in ids if _NUMERIC_ID.fullmatch(i) and (s := _sig(i)) is not None}


def resolve_id(raw, ids, numeric: dict[str, tuple[str, int]]) -> tuple[str | None, str, str | None]:
    """The key id a sheet cell names: (id or None, the cell as text, problem or None).

    Accepts the id, the id with ID_PREFIX (and a leading ' of a spreadsheet), and a number a
    spreadsheet made of a bare id (lost leading zeros, 15 significant digits, scientific notation)
    when exactly one id of the key fits it."""
    text = ("" if raw is None else str(raw)).strip()
    cell = text[1:] if text.startswith("'") else text
    if not cell:
        return None, text, "missing id"
    if cell in ids:
        return cell, text, None
    bare = cell[len(ID_PREFIX):] if cell.lower().startswith(ID_PREFIX) else cell  # Id- after autocapitalisation
    if bare in ids:
        return bare, text, None
    if _NUMBER.fullmatch(bare) and (value := _sig(bare)) is not None:
        fits = [i for i, s in numeric.items() if s == value]
        lossy = "e" in bare.lower() or len(value[0]) + value[1] > EXACT_DIGITS  # shown rounded, or too long to keep
        if not fits and lossy:
            n = len(value[0])
            fits = [i for i, s in numeric.items() if len(s[0]) > n and value in (_shorten(s, n, False), _shorten(s, n, True))]
        if len(fits) == 1:
            return fits[0], text, None
        if fits:
            shown = ", ".join(repr(sheet_id(i)) for i in sorted(fits)[:5])
            return None, text, (f"id {text!r} is a number a spreadsheet made of an id, and {len(fits)} ids of this key fit "
                                f"it ({shown}); write the id as the exported sheet has it, with the {ID_PREFIX!r} prefix")
    return None, text, f"unknown id {text!r} (not in this key: a sheet from another export, or an edited id)"


# -------------------------------------------------------------------------------------- key
KEY_KIND = "harness-human-key"


def key_problems(key) -> list[str]:
    """What keeps a parsed key.json from being read back (pure; empty when it is usable)."""
    if not isinstance(key, dict):
        return [f"a JSON {type(key).__name__}, expected an object"]
    if key.get("kind") != KEY_KIND:
        return [f"kind is {key.get('kind')!r}, expected {KEY_KIND!r} (is this the key.json of an export?)"]
    out = []
    if key.get("schema") != SCHEMA:
        out.append(f"schema is {key.get('schema')!r}; this harness reads schema {SCHEMA}")
    mode = key.get("mode")
    if mode not in ("pointwise", "pairwise"):
        out.append(f"mode is {mode!r}, expected 'pointwise' or 'pairwise'")
    crit = key.get("criteria")
    if not isinstance(crit, list) or not all(isinstance(c, str) and c for c in crit) or (mode == "pointwise" and not crit):
        out.append(f"criteria is {crit!r}, expected a list of criterion names" + (" (pointwise: at least one)" if mode == "pointwise" else ""))
    names = key.get("annotators")
    if not isinstance(names, list) or not names or not all(isinstance(a, str) for a in names):
        out.append(f"annotators is {names!r}, expected a list of annotator names")
        names = []
    runs = key.get("runs")
    labels = [r.get("label") for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []
    if not isinstance(runs, list) or not runs or len(labels) != len(runs) or not all(isinstance(x, str) for x in labels):
        out.append("runs must be a list of {label, run_dir, items} objects")
    rows = key.get("rows")
    if not isinstance(rows, dict) or not rows:
        return out + [f"rows is {type(rows).__name__ if rows is not None else 'missing'}, expected an object {{id: row}}"]
    need = ("annotator", "unit", "item_id") + (("run",) if mode == "pointwise" else ("run_a", "run_b", "pair"))
    bad = []
    for rid, row in rows.items():
        if not isinstance(row, dict):
            bad.append(f"rows[{rid!r}] is not an object")
            continue
        missing = [k for k in need if k not in row]
        if missing:
            bad.append(f"rows[{rid!r}] has no {', '.join(missing)}")
        elif row["annotator"] not in names or not isinstance(row["unit"], str):
            bad.append(f"rows[{rid!r}]: annotator {row['annotator']!r} is not one of annotators, or unit is not text")
        elif any(row[k] not in labels for k in need[3:] if k != "pair") or (
                "pair" in row and (not isinstance(row["pair"], list) or len(row["pair"]) != 2
                                   or not all(x in labels for x in row["pair"]))):
            bad.append(f"rows[{rid!r}] names a run that is not in runs")
    out += bad[:5] + ([f"... and {len(bad) - 5} more rows like these"] if len(bad) > 5 else [])
    return out


def read_key(path: str | Path) -> dict:
    """A key.json written by `harness human export`, checked; raises HumanEvalError naming every problem."""
    fix = ("pass the key.json that `harness human export` wrote for these sheets; if it was edited or damaged, "
           "restore it, or export again with the same run directories, options and --seed into a new --out "
           "(the same seed gives the same ids)")
    text, _ = read_text(Path(path))
    try:
        key = json.loads(text)
    except json.JSONDecodeError as e:
        raise HumanEvalError(f"--key {path}: not JSON ({e.msg} at line {e.lineno} column {e.colno}); {fix}") from None
    problems = key_problems(key)
    if problems:
        raise HumanEvalError(f"--key {path}: not a usable key.json:\n" + "\n".join(f"  - {p}" for p in problems) + f"\n{fix}")
    return key
