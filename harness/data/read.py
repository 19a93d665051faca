"""Read a data set's rows: local JSON / JSONL / CSV / Parquet / Arrow / text files or a Hub data set, with
every unparsable record kept as a bad row (line number and reason), never silently dropped. A CSV quote that is
never closed is a bad row at its line, not a row merged from the lines it swallowed (_parse_csv).

    rows = read_rows("../shared/data/alpaca/alpaca_data_cleaned.json")
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import paths

MAX_BAD_LISTED = 50  # bad rows kept in stats (the count is always complete)
# a record with more characters than this is a bad row, found while reading: tokenising a 30 MB row took 7.8 GB of
# memory before its length was checked. 2 M characters are about 500 k tokens, beyond any model's context.
MAX_ROW_CHARS = 2_000_000


EXT_TYPES = paths.DATA_FILE_TYPES  # one list, in harness/paths.py: `harness validate` checks data paths by it too


UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (decoded with surrogateescape)


class DataError(ValueError):
    """Data that cannot be used as configured; the message names the file, the rows and the fix."""


@dataclass
class Prepared:
    train: list[dict]  # {"input_ids", "labels", "attention_mask"}, truncated/packed to max_length
    val: list[dict]  # same format, never packed across rows
    stats: dict


@dataclass
class EvalExample:
    id: str  # stable across runs, e.g. "e2e-0005"
    messages: list[dict]  # the prompt as chat messages (system first if data.system_prompt)
    prompt: str  # the same prompt as plain text (data.prompt_template), for models without a chat template
    references: list[str]


@dataclass
class EvalSet:
    examples: list[EvalExample]
    stats: dict  # rows, n_bad, bad_rows, files, examples


# ------------------------------------------------------------------------------------ reading
class BadRow(Exception):
    """One malformed row; the message is its reason."""


@dataclass
class Broken:
    reason: str  # a record that could not even be parsed (bad JSON line, wrong column count)


@dataclass
class Source:
    path: str  # as recorded in stats
    kind: str  # json | jsonl | csv | parquet | text | arrow | hub
    records: list[tuple[int, Any]]  # (1-based row number, dict or Broken)
    files: list[dict]

    def columns(self) -> list[str]:
        cols: dict[str, None] = {}
        for _, rec in self.records[:1000]:
            if isinstance(rec, dict):
                cols.update(dict.fromkeys(rec))
        return list(cols)


def _chars(value: Any, limit: int) -> int:
    """Characters of text in a record (strings at any depth), counting stops once past `limit`."""
    if isinstance(value, str):
        return len(value)
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    total = 0
    for v in items:
        total += _chars(v, limit - total)
        if total > limit:
            break
    return total


def too_long(records: list[tuple[int, Any]], limit: int = MAX_ROW_CHARS) -> list[tuple[int, Any]]:
    """Records longer than `limit` characters become Broken, with their size and the limit."""
    out = []
    for n, rec in records:
        if not isinstance(rec, Broken) and _chars(rec, limit) > limit:
            rec = Broken(f"a row of more than {limit:,} characters (about {limit // 4:,} tokens, beyond any context "
                         "length); split or remove it")
        out.append((n, rec))
    return out


def _sha256(path: Path) -> str:
    from harness.run.environment import sha256_file

    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()  # a directory: hash of (relative name, file hash) pairs
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path)}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def _decode(raw: bytes) -> str:
    # Undecodable bytes become lone surrogates, so the row holding them is reported, not the file.
    return raw.decode("utf-8-sig", errors="surrogateescape")


def _file_type(p: Path, file_type: str) -> str:
    if file_type != "auto":
        return file_type
    if p.is_dir():
        return "arrow"
    kind = EXT_TYPES.get(p.suffix.lower())
    if kind is None:
        raise DataError(
            f"{p}: cannot tell the file type from the extension {p.suffix!r}. "
            f"Set data.file_type to one of: json, jsonl, csv, parquet, text, arrow."
        )
    return kind


def _parse_jsonl(text: str) -> list[tuple[int, Any]]:
    records: list[tuple[int, Any]] = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            records.append((n, Broken(f"invalid JSON: {exc.msg} at column {exc.colno}")))
            continue
        records.append((n, obj if isinstance(obj, dict) else Broken(f"a JSON {type(obj).__name__}, not an object")))
    return records


def _parse_json(text: str, p: Path) -> tuple[str, list[tuple[int, Any]]]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line in a .json file
            return "jsonl", _parse_jsonl(text)
        raise DataError(
            f"{p}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). Fix the file; if it holds "
            f"one JSON object per line, name it .jsonl or set data.file_type=jsonl."
        ) from None
    if not isinstance(obj, list):
        raise DataError(f"{p}: a JSON data file must hold a list of records, found a {type(obj).__name__}.")
    return "json", [(i, r if isinstance(r, dict) else Broken(f"a JSON {type(r).__name__}, not an object"))
                    for i, r in enumerate(obj, 1)]


def _ends_inside_quotes(text: str, delim: str) -> bool:
    """Whether CSV text ends inside a quoted field (the csv module's default dialect: a quote opens a field only
    at the field's start; "" inside a quoted field is a literal quote)."""
    quoted, at_start, i = False, True, 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == '"':
                if text.startswith('"', i + 1):
                    i += 1
                else:
                    quoted = False
        elif c == '"' and at_start:
            quoted = True
        at_start = not quoted and c in (delim, "\n", "\r")
        i += 1
    return quoted


def _unterminated_quote(lines: list[str], first: int, last: int, delim: str, n_cols: int) -> str:
    """Why the record on lines first..last (1-based) is not a record but the work of a quote that is never closed,
    or "" when it is a proper record. A quoted field may hold line breaks when it is properly closed: the record
    parses under strict quoting (each closing quote followed by the delimiter or the line end) into n_cols
    values. A one-line record is only checked for ending the file inside quotes."""
    text = "".join(lines[first - 1: last])
    what = f"unterminated quote: the quoted field opened on line {first}"
    swallowed = {0: "", 1: f", swallowing line {last}"}.get(last - first, f", swallowing lines {first + 1}-{last}")
    if last == len(lines) and _ends_inside_quotes(text, delim):
        return f"{what} is still open at the end of the file{swallowed}"
    if last == first:
        return ""
    try:
        values = next(csv.reader(io.StringIO(text, newline=""), delimiter=delim, strict=True))
    except csv.Error as exc:
        why = f"and then {exc}"
    else:
        if len(values) == n_cols:
            return ""
        why = f"and the merged record has {len(values)} values for {n_cols} columns"
    return f"{what} runs over the line breaks{swallowed}, {why}"


def _csv_records(lines: list[str], pos: int, delim: str, p: Path):
    """(first line, last line, values) of each CSV record from the 0-based line index pos on (1-based lines)."""
    reader = csv.reader(itertools.islice(lines, pos, None), delimiter=delim)
    start = pos
    try:
        for values in reader:
            last = pos + reader.line_num
            yield start + 1, last, values
            start = last
    except csv.Error as exc:
        raise DataError(f"{p}: unreadable CSV near line {pos + reader.line_num}: {exc}. "
                        "Fix the quoting there.") from None


def _parse_csv(text: str, p: Path) -> list[tuple[int, Any]]:
    """(first line, record) for every CSV/TSV record. A record merged by a quote that is never closed (see
    _unterminated_quote) is a bad row at the line where it starts, and reading goes on at the next line, so the
    rows the quote swallowed are read as rows of their own, not as one merged row."""
    delim = "\t" if p.suffix.lower() == ".tsv" else ","
    lines = io.StringIO(text, newline="").readlines()
    pending = _csv_records(lines, 0, delim, p)
    _, _, header = next(pending, (0, 0, None))
    if not header:
        raise DataError(f"{p}: empty CSV file (no header row).")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{p}: the CSV header repeats column(s) {dupes}; give every column a unique name.")
    records: list[tuple[int, Any]] = []
    while (item := next(pending, None)) is not None:
        first, last, values = item
        if not values:
            continue  # a blank line is not a record
        unterminated = _unterminated_quote(lines, first, last, delim, len(header))
        if unterminated:
            after = "; the lines after it are read as rows of their own" if last > first else ""
            records.append((first, Broken(f'{unterminated}{after}. Close the quote, or double a quote inside a '
                                          'quoted field ("").')))
            pending = _csv_records(lines, first, delim, p)  # read on from the next line
        elif len(values) != len(header):
            records.append((first, Broken(f"{len(values)} values but the header has {len(header)} columns "
                                          "(an unquoted comma or quote?)")))
        else:
            records.append((first, dict(zip(header, values))))
    return records


def _text_lines(text: str) -> list[str]:
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start an empty one
    return lines


def _read_arrow(p: Path, split: str) -> list[dict]:
    import datasets

    if p.is_file():
        return datasets.Dataset.from_file(str(p)).to_list()
    try:
        ds = datasets.load_from_disk(str(p))
    except FileNotFoundError as exc:
        raise DataError(f"{p}: not a saved `datasets` directory ({exc}). Save one with Dataset.save_to_disk().") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{p}: no split {split!r}; it has {sorted(ds)}. Set data.hub_split to one of them.")
        ds = ds[split]
    return ds.to_list()


def _read_hub(path: str, split: str) -> Source:
    try:
        import datasets

        ds = datasets.load_dataset(path, split=split)
    except Exception as exc:  # offline, unknown id, missing split: all the same fix
        msg = str(exc).strip().split("\n")[0]
        raise DataError(
            f"data.path={path!r} is not a file under the data root {paths.data_root()} and could not be loaded as "
            f"a Hub data set (split {split!r}): {type(exc).__name__}: {msg}. Hub data sets need network access "
            "(HF_HUB_OFFLINE=1 turns it off). Fix: point data.path at a local file (relative paths are under "
            "$HARNESS_DATA), or download once with network: datasets.load_dataset(ID).save_to_disk(DIR), "
            "then set data.path=DIR."
        ) from None
    rows = ds.to_list()
    return Source(f"hub:{path}@{split}", "hub", too_long(list(enumerate(rows, 1))),
                   [{"path": f"hub:{path}@{split}", "sha256": str(getattr(ds, "_fingerprint", "")), "rows": len(rows)}])


def read_source(path: str, file_type: str = "auto", hub_split: str = "train") -> Source:
    if not path:
        raise DataError("data.path is empty; give a file, a saved dataset directory or a Hub data set id.")
    p = paths.resolve_data_path(path)
    if not p.exists():
        if paths.is_hub_data_id(path):
            return _read_hub(path, hub_split)
        raise DataError(
            f"data file not found: {p} (data.path={path!r}; relative paths are under the data root "
            f"{paths.data_root()}, set HARNESS_DATA to move it)."
        )
    kind = _file_type(p, file_type)
    if kind in ("arrow", "parquet"):
        if kind == "parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(p).to_pylist()
        else:
            rows = _read_arrow(p, hub_split)
        records: list[tuple[int, Any]] = list(enumerate(rows, 1))
    else:
        text = _decode(p.read_bytes())
        if kind == "json":
            kind, records = _parse_json(text, p)
        elif kind == "jsonl":
            records = _parse_jsonl(text)
        elif kind == "csv":
            records = _parse_csv(text, p)
        elif kind == "text":
            records = [(n, {"text": line}) for n, line in enumerate(_text_lines(text), 1)]
        else:
            raise DataError(f"data.file_type={kind!r}: use one of auto, json, jsonl, csv, parquet, text, arrow.")
    return Source(str(p), kind, too_long(records), [{"path": str(p), "sha256": _sha256(p), "rows": len(records)}])


def attach_parallel(src: Source, columns: list[str]) -> None:
    """Text sources: each named column other than `text` is a line-aligned file; add its lines."""
    if src.kind != "text":
        return
    for col in dict.fromkeys(columns):
        if col == "text" or not col:
            continue
        p = paths.resolve_data_path(col)
        if not p.is_file():
            raise DataError(
                f"{src.path} is a text file, so the field value {col!r} must name a line-aligned file "
                f"(relative to {paths.data_root()}), but {p} does not exist."
            )
        lines = _text_lines(_decode(p.read_bytes()))
        if len(lines) != len(src.records):
            raise DataError(f"parallel files differ in length: {src.path} has {len(src.records)} lines, "
                            f"{p} has {len(lines)}. They must be line-aligned (one segment a line).")
        for (_, rec), line in zip(src.records, lines):
            rec[col] = line
        src.files.append({"path": str(p), "sha256": _sha256(p), "rows": len(lines)})


def read_rows(path: str | Path, file_type: str = "auto", hub_split: str = "train") -> list[dict]:
    """Every record of a data file as a dict; raises DataError if any record cannot be parsed."""
    src = read_source(str(path), file_type, hub_split)
    broken = [f"row {n}: {r.reason}" for n, r in src.records if isinstance(r, Broken)]
    if broken:
        raise DataError(f"{src.path}: {len(broken)} unreadable record(s): " + "; ".join(broken[:10])
                        + ". Fix those lines (row numbers are 1-based lines of the file).")
    return [r for _, r in src.records]
