"""Data stage: read a data set, check its rows, render prompts, tokenise, split, truncate or pack.

    harness train model=smollm2-135m data=e2e      # harness.train calls prepare()
    harness eval RUN_DIR                           # the evaluator calls load_eval_examples() and render_prompt()

Formats (data.format): alpaca (instruction, input, output), prompt_completion (prompt, completion),
chat (messages: [{role, content}]), text (a `text` column or a raw .txt/.raw file). data.fields maps
these names to the file's columns. Files: JSON list, JSONL, CSV/TSV, Parquet, plain text (one row a
line), a saved `datasets` directory, or a Hub data set id (needs network). For a text source, a field
mapped to anything other than `text` names a line-aligned parallel file (comma-separated for several
references): that is how wmt22-de-en pairs its source file with two reference files.

Training examples are {"input_ids", "labels" (-100 = no loss), "attention_mask"}. The prompt is the
exact string render_prompt() gives the model at generation time; it is tokenised on its own so the
prompt/completion boundary is exact. Malformed rows are counted with their 1-based row numbers
(line numbers for JSONL, CSV and text; record numbers for JSON, Parquet and datasets) and either
reported in stats or, above data.max_bad_share, raised as a DataError. Details: docs/data.md.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import paths
from harness.config import DataConfig

MAX_BAD_LISTED = 50  # bad rows kept in stats (the count is always complete)
EXT_TYPES = {
    ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv",
    ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow",
    ".txt": "text", ".raw": "text", ".text": "text", ".tokens": "text",
}
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (decoded with surrogateescape)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


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
class _Bad(Exception):
    """One malformed row; the message is its reason."""


@dataclass
class _Broken:
    reason: str  # a record that could not even be parsed (bad JSON line, wrong column count)


@dataclass
class _Source:
    path: str  # as recorded in stats
    kind: str  # json | jsonl | csv | parquet | text | arrow | hub
    records: list[tuple[int, Any]]  # (1-based row number, dict or _Broken)
    files: list[dict]

    def columns(self) -> list[str]:
        cols: dict[str, None] = {}
        for _, rec in self.records[:1000]:
            if isinstance(rec, dict):
                cols.update(dict.fromkeys(rec))
        return list(cols)


def _sha256(path: Path) -> str:
    from harness.records import sha256_file

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
            records.append((n, _Broken(f"invalid JSON: {exc.msg} at column {exc.colno}")))
            continue
        records.append((n, obj if isinstance(obj, dict) else _Broken(f"a JSON {type(obj).__name__}, not an object")))
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
    return "json", [(i, r if isinstance(r, dict) else _Broken(f"a JSON {type(r).__name__}, not an object"))
                    for i, r in enumerate(obj, 1)]


def _parse_csv(text: str, p: Path) -> list[tuple[int, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
    try:
        header = next(reader, None)
        if not header:
            raise DataError(f"{p}: empty CSV file (no header row).")
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise DataError(f"{p}: the CSV header repeats column(s) {dupes}; give every column a unique name.")
        records: list[tuple[int, Any]] = []
        start = reader.line_num + 1
        for values in reader:
            n, start = start, reader.line_num + 1
            if not values:
                continue  # a blank line is not a record
            if len(values) != len(header):
                records.append((n, _Broken(f"{len(values)} values but the header has {len(header)} columns "
                                           "(an unquoted comma or quote?)")))
            else:
                records.append((n, dict(zip(header, values))))
    except csv.Error as exc:
        raise DataError(f"{p}: unreadable CSV near line {reader.line_num}: {exc}. Fix the quoting there.") from None
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


def _read_hub(path: str, split: str) -> _Source:
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
    return _Source(f"hub:{path}@{split}", "hub", list(enumerate(rows, 1)),
                   [{"path": f"hub:{path}@{split}", "sha256": str(getattr(ds, "_fingerprint", "")), "rows": len(rows)}])


def _read_source(path: str, file_type: str = "auto", hub_split: str = "train") -> _Source:
    if not path:
        raise DataError("data.path is empty; give a file, a saved dataset directory or a Hub data set id.")
    p = paths.resolve_data_path(path)
    if not p.exists():
        if _HUB_ID.fullmatch(path) and Path(path).suffix.lower() not in EXT_TYPES:
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
    return _Source(str(p), kind, records, [{"path": str(p), "sha256": _sha256(p), "rows": len(records)}])


def _attach_parallel(src: _Source, columns: list[str]) -> None:
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
    src = _read_source(str(path), file_type, hub_split)
    broken = [f"row {n}: {r.reason}" for n, r in src.records if isinstance(r, _Broken)]
    if broken:
        raise DataError(f"{src.path}: {len(broken)} unreadable record(s): " + "; ".join(broken[:10])
                        + ". Fix those lines (row numbers are 1-based lines of the file).")
    return [r for _, r in src.records]


# ----------------------------------------------------------------------------- row checking
def _text_field(rec: dict, ours: str, fields: dict[str, str], required: bool = True) -> str:
    col = fields.get(ours, ours)
    if col not in rec:
        if not required:
            return ""
        raise _Bad(f"missing field {col!r}" + ("" if col == ours else f" (data.fields.{ours})"))
    v = rec[col]
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        raise _Bad(f"field {col!r} is {'null' if v is None else type(v).__name__}, not text")
    if _UNDECODABLE.search(v):
        raise _Bad(f"field {col!r} is not valid UTF-8 text")
    if required and not v.strip():
        raise _Bad(f"field {col!r} is empty")
    return v


def _messages(rec: dict, fields: dict[str, str], system_prompt: str) -> list[dict]:
    col = fields.get("messages", "messages")
    if col not in rec:
        raise _Bad(f"missing field {col!r}" + ("" if col == "messages" else " (data.fields.messages)"))
    raw = rec[col]
    if not isinstance(raw, list) or not raw:
        raise _Bad(f"field {col!r} must be a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise _Bad(f"{col}[{i}] is a {type(m).__name__}, not a message")
        role = ROLE_ALIASES.get(m.get("role", m.get("from")), m.get("role", m.get("from")))
        content = m.get("content", m.get("value"))
        if role not in ("system", "user", "assistant"):
            raise _Bad(f"{col}[{i}] has role {role!r}; use system, user or assistant")
        if not isinstance(content, str) or not content.strip():
            raise _Bad(f"{col}[{i}] has empty or non-text content")
        if _UNDECODABLE.search(content):
            raise _Bad(f"{col}[{i}] is not valid UTF-8 text")
        out.append({"role": role, "content": content})
    if system_prompt and out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


def _normalise(rec: Any, data: DataConfig, fields: dict[str, str], need_target: bool) -> dict:
    """A file record -> our field names for data.format; raises _Bad with the reason."""
    if isinstance(rec, _Broken):
        raise _Bad(rec.reason)
    fmt = data.format
    if fmt == "alpaca":
        row = {"instruction": _text_field(rec, "instruction", fields),
               "input": _text_field(rec, "input", fields, required=False)}
        if need_target:
            row["output"] = _text_field(rec, "output", fields)
        return row
    if fmt == "prompt_completion":
        row = {"prompt": _text_field(rec, "prompt", fields)}
        if need_target:
            row["completion"] = _text_field(rec, "completion", fields)
        return row
    if fmt == "chat":
        msgs = _messages(rec, fields, data.system_prompt)
        if not any(m["role"] == "assistant" for m in msgs) and need_target:
            raise _Bad("the conversation has no assistant turn to learn from")
        if msgs[0]["role"] == "assistant" or (msgs[0]["role"] == "system" and len(msgs) > 1 and msgs[1]["role"] == "assistant"):
            raise _Bad("the conversation starts with an assistant turn; it must start with a user turn")
        return {"messages": msgs}
    if fmt == "text":
        return {"text": _text_field(rec, "text", fields)}
    raise DataError(f"data.format={fmt!r}: use alpaca, prompt_completion, chat or text.")


def _check_columns(src: _Source, fields: dict[str, str], keys) -> None:
    """A column named explicitly in data.fields / data.eval_fields must exist in the file."""
    cols = src.columns()
    if not cols:
        return
    for key in keys:
        if key in fields:
            for col in (c.strip() for c in fields[key].split(",")):
                if col and col not in cols:
                    raise DataError(
                        f"data.fields.{key}={fields[key]!r} (or eval_fields): the file {src.path} has no column {col!r}. "
                        f"Its columns are: {', '.join(cols)}."
                    )


def _check_bad(where: str, rows: int, bad: list[dict], max_share: float, columns: list[str]) -> None:
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


# ------------------------------------------------------------------------------- prompts
def _alpaca_prompt(instruction: str, inp: str, preamble: str = "") -> str:
    if inp.strip():
        head = preamble or ("Below is a task instruction, paired with input that gives more context. "
                            "Write a response that completes the task.")
        return f"{head}\n\n### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n### Response:\n"
    head = preamble or "Below is a task instruction. Write a response that completes the task."
    return f"{head}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def _plain_chat(messages: list[dict], add_generation_prompt: bool, template: str) -> str:
    """Role-tagged conversation text for chat data when the chat template is not used."""
    heads = ({"user": "### User:\n", "assistant": "### Assistant:\n"} if template == "alpaca"
             else {"user": "User: ", "assistant": "Assistant: "})
    sep = "\n\n" if template == "alpaca" else "\n"
    out = "".join((m["content"] if m["role"] == "system" else heads[m["role"]] + m["content"]) + sep for m in messages)
    return out + (heads["assistant"] if add_generation_prompt else "")


def _prompt_messages(row: dict) -> list[dict]:
    """For chat rows: the conversation up to (not including) the last assistant turn."""
    msgs = row["messages"]
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))
    return msgs[:last]


def _prompt_parts(row: dict, data: DataConfig) -> tuple[list[dict], str]:
    """(chat messages, plain-text prompt) for one normalised row."""
    if "messages" in row:
        msgs = _prompt_messages(row)
        return msgs, _plain_chat(msgs, True, data.prompt_template)
    sys_ = data.system_prompt
    if "instruction" in row:
        instruction, inp = row["instruction"], row.get("input", "")
        user = instruction + (f"\n\n{inp}" if inp.strip() else "")
        plain = (_alpaca_prompt(instruction, inp, sys_) if data.prompt_template == "alpaca"
                 else (f"{sys_}\n\n" if sys_ else "") + user + "\n")
    else:
        user = row["prompt"]
        if data.prompt_template == "alpaca":  # a system prompt is the instruction, the row's prompt its input
            plain = _alpaca_prompt(sys_, user) if sys_ else _alpaca_prompt(user, "")
        else:
            plain = (f"{sys_}\n\n" if sys_ else "") + user + "\n"
    msgs = ([{"role": "system", "content": sys_}] if sys_ else []) + [{"role": "user", "content": user}]
    return msgs, plain


def _uses_chat_template(tokenizer, data: DataConfig) -> bool:
    return bool(data.use_chat_template and getattr(tokenizer, "chat_template", None))


def _apply_template(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as exc:
        # Templates without a system role (e.g. Gemma's) raise: fold the system text into the first user turn.
        if len(messages) > 1 and messages[0]["role"] == "system" and messages[1]["role"] == "user":
            merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
            return _apply_template(tokenizer, merged + messages[2:], add_generation_prompt)
        raise DataError(f"the tokenizer's chat template rejected the messages ({exc}); "
                        "set data.use_chat_template=false to use data.prompt_template instead.") from None


def _with_bos(text: str, tokenizer, add_bos: bool) -> str:
    if not add_bos:
        return text
    bos = getattr(tokenizer, "bos_token", None)
    if not bos:
        raise DataError("model.add_bos=true but the tokenizer has no bos_token; set model.add_bos=false.")
    return text if text.startswith(bos) else bos + text


def render_prompt(example_or_row: EvalExample | dict, tokenizer, data: DataConfig, add_bos: bool) -> str:
    """The exact prompt string the model sees for generation, identical to the prompt part used in
    training. Tokenise it with add_special_tokens=False (BOS, if wanted, is already in the string)."""
    if isinstance(example_or_row, EvalExample):
        messages, plain = example_or_row.messages, example_or_row.prompt
    else:
        row = example_or_row
        if not any(k in row for k in ("instruction", "prompt", "messages")):
            row = _normalise(row, data, data.fields, need_target=False)  # a file row: map its columns
        messages, plain = _prompt_parts(row, data)
    text = _apply_template(tokenizer, messages, True) if _uses_chat_template(tokenizer, data) else plain
    return _with_bos(text, tokenizer, add_bos)


# ---------------------------------------------------------------------------- tokenising
def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return list(tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"])


def _eos_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError("the tokenizer has no eos_token; completions must end with one. Set tokenizer.eos_token.")
    return int(eos)


def _n_loss(labels: list[int]) -> int:
    """Label positions that carry loss after the causal shift (position 0 is never predicted)."""
    return sum(1 for x in labels[1:] if x != -100)


def _example(ids: list[int], labels: list[int]) -> dict:
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


def _encode_single(rows: list[dict], tokenizer, data: DataConfig, add_bos: bool) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + EOS) for alpaca / prompt_completion rows. The prompt is tokenised on
    its own (what generation sees); the completion keeps the joint tokenisation when the prompt's tokens
    are a prefix of it, else it is tokenised on its own, so the boundary is exact either way."""
    prompts = [render_prompt(r, tokenizer, data, add_bos) for r in rows]
    outputs = [r["output"] if "output" in r else r["completion"] for r in rows]
    eos = _eos_id(tokenizer)
    p_ids = _ids(tokenizer, prompts)
    joint = _ids(tokenizer, [p + o for p, o in zip(prompts, outputs)])
    alone = _ids(tokenizer, outputs)
    out = []
    for p, j, o in zip(p_ids, joint, alone):
        comp = j[len(p):] if j[: len(p)] == p and len(j) > len(p) else o
        out.append((p, comp + [eos]))
    return out


def _encode_chat(row: dict, tokenizer, data: DataConfig, add_bos: bool) -> tuple[list[int], list[int]]:
    """(ids, labels) of a conversation; assistant turns carry loss when completion_only_loss."""
    msgs = row["messages"]
    if _uses_chat_template(tokenizer, data):
        def render(m: list[dict], gen: bool) -> str:
            return _apply_template(tokenizer, m, gen)
    else:
        def render(m: list[dict], gen: bool) -> str:
            return _plain_chat(m, gen, data.prompt_template)
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before, upto = render(msgs[:i], True), render(msgs[: i + 1], False)
        if not before.startswith(done) or not upto.startswith(before):
            raise _Bad("the chat template does not render this conversation turn by turn (earlier text changes "
                       "when a turn is added); set data.use_chat_template=false")
        segments += [(before[len(done):], False), (upto[len(before):], True)]
        done = upto
    full = render(msgs, False)
    if full.startswith(done) and len(full) > len(done):
        segments.append((full[len(done):], False))
    if add_bos:
        segments[0] = (_with_bos(segments[0][0], tokenizer, True), segments[0][1])
    ids: list[int] = []
    labels: list[int] = []
    for (text, loss), seg_ids in zip(segments, _ids(tokenizer, [s for s, _ in segments])):
        ids += seg_ids
        labels += seg_ids if (loss or not data.completion_only_loss) else [-100] * len(seg_ids)
    eos = _eos_id(tokenizer)
    if not ids or ids[-1] != eos:
        ends_with_answer = msgs[-1]["role"] == "assistant"
        ids.append(eos)
        labels.append(eos if (ends_with_answer or not data.completion_only_loss) else -100)
    return ids, labels


def _chunks(examples: list[dict], max_length: int, eos_id: int, sep_label: int) -> tuple[list[dict], dict]:
    """Concatenate examples (EOS between, unless one already ends with it) and cut max_length blocks.
    Blocks with no loss-bearing label are dropped and counted."""
    ids: list[int] = []
    labels: list[int] = []
    for ex in examples:
        ids += ex["input_ids"]
        labels += ex["labels"]
        if ex["input_ids"] and ex["input_ids"][-1] != eos_id:
            ids.append(eos_id)
            labels.append(sep_label)
    blocks, dropped, dropped_tokens = [], 0, 0
    for s in range(0, len(ids), max_length):
        b_ids, b_labels = ids[s: s + max_length], labels[s: s + max_length]
        if _n_loss(b_labels) == 0:
            dropped += 1
            dropped_tokens += len(b_ids)
            continue
        blocks.append(_example(b_ids, b_labels))
    return blocks, {"stream_tokens": len(ids), "blocks_without_loss": dropped, "tokens_without_loss": dropped_tokens}


# -------------------------------------------------------------------------------- splitting
def _split_key(row: dict) -> str:
    if "messages" in row:
        return json.dumps(_prompt_messages(row), sort_keys=True)
    if "instruction" in row:
        return row["instruction"] + "\0" + row.get("input", "")
    return row.get("prompt", row.get("text", ""))


def _val_indices(keys: list[str], val_size: float, seed: int, where: str) -> set[int]:
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


def _text_documents(records: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Lines of a raw text file -> documents (row = first line number). Split on top-level wikitext
    headings (' = Title = ') when the file has them, else on blank lines."""
    def is_heading(line: str) -> bool:
        s = line.strip()
        return s.startswith("= ") and s.endswith(" =") and not s.startswith("= =")

    lines = [(n, r["text"]) for n, r in records]
    by_heading = any(is_heading(line) for _, line in lines)
    docs: list[tuple[int, Any]] = []
    cur: list[str] = []
    start = 0

    def flush() -> None:
        if cur and any(x.strip() for x in cur):
            docs.append((start, {"text": "\n".join(cur) + "\n"}))
        cur.clear()

    for n, line in lines:
        if (by_heading and is_heading(line)) or (not by_heading and not line.strip()):
            flush()
            if not by_heading:
                continue
        if not cur:
            start = n
        cur.append(line)
    flush()
    return docs


# ------------------------------------------------------------------------------------ prepare
def prepare(data: DataConfig, tokenizer, *, max_length: int, seed: int, packing: bool, add_bos: bool) -> Prepared:
    """Read, check, split, tokenise and truncate/pack data.path for training (see the module docstring)."""
    if max_length < 2:
        raise DataError(f"max_length={max_length}: too short; use train.max_length >= 8.")
    src = _read_source(data.path, data.file_type, data.hub_split)
    _attach_parallel(src, [c for v in data.fields.values() for c in v.split(",")])
    _check_columns(src, data.fields, list(data.fields))
    records = src.records
    if data.format == "text" and src.kind == "text":
        records = _text_documents(records)
    if data.max_rows > 0:
        records = records[: data.max_rows]
    where = f"data={data.name} ({src.path})"
    if not records:
        raise DataError(f"{where}: no rows to train on (empty file?).")
    bad: list[dict] = []
    good: list[tuple[int, dict]] = []
    for n, rec in records:
        try:
            good.append((n, _normalise(rec, data, data.fields, need_target=True)))
        except _Bad as exc:
            bad.append({"row": n, "reason": str(exc)})
    _check_bad(where, len(records), bad, data.max_bad_share, src.columns())
    val_idx = _val_indices([_split_key(r) for _, r in good], data.val_size, seed, where)

    eos = _eos_id(tokenizer)
    truncated = 0
    encoded: list[tuple[int, dict] | None] = []
    if data.format == "text":
        bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
        if add_bos and not bos:
            raise DataError("model.add_bos=true but the tokenizer has no bos_token; set model.add_bos=false.")
        for (n, _), ids in zip(good, _ids(tokenizer, [r["text"] for _, r in good])):
            full = bos + ids + [eos]
            encoded.append((n, _example(full, list(full))))
    else:
        if data.format == "chat":
            pairs = []
            for n, r in good:
                try:
                    pairs.append(_encode_chat(r, tokenizer, data, add_bos))
                except _Bad as exc:
                    bad.append({"row": n, "reason": str(exc)})
                    pairs.append(None)
        else:
            pairs = [(p + c, ([-100] * len(p) if data.completion_only_loss else list(p)) + c)
                     for p, c in _encode_single([r for _, r in good], tokenizer, data, add_bos)]
        for (n, _), pair in zip(good, pairs):
            if pair is None:
                encoded.append(None)
                continue
            ids, labels = pair
            if len(ids) > max_length:
                ids, labels = ids[:max_length], labels[:max_length]
                if data.completion_only_loss and _n_loss(labels) == 0:
                    prompt_len = next((i for i, x in enumerate(pair[1]) if x != -100), len(pair[1]))
                    bad.append({"row": n, "reason": f"prompt longer than max_length ({prompt_len} prompt tokens, "
                                                    f"max_length {max_length}): no room for the completion"})
                    encoded.append(None)
                    continue
                truncated += 1
            encoded.append((n, _example(ids, labels)))
    bad.sort(key=lambda b: b["row"])
    _check_bad(where, len(records), bad, data.max_bad_share, src.columns())

    train_ex = [e for i, e in enumerate(encoded) if e is not None and i not in val_idx]
    val_ex = [e for i, e in enumerate(encoded) if e is not None and i in val_idx]
    stats: dict[str, Any] = {
        "format": data.format, "rows": len(records), "n_bad": len(bad), "bad_rows": bad[:MAX_BAD_LISTED],
        "train_rows": len(train_ex), "val_rows": len(val_ex), "truncated_rows": truncated,
        "max_length": max_length, "files": src.files, "row_numbers": "line" if src.kind in ("jsonl", "csv", "text") else "record",
    }
    train = [e for _, e in train_ex]
    val = [e for _, e in val_ex]
    packed = packing or data.format == "text"
    if packed:
        sep = eos if (data.format == "text" or not data.completion_only_loss) else -100
        train, pack_stats = _chunks(train, max_length, eos, sep)
        stats.update(pack_stats)
    if data.format == "text":  # long documents: blocks within each document, never across
        per_doc = [_chunks([e], max_length, eos, eos) for e in val]
        val = [b for blocks, _ in per_doc for b in blocks]
        stats["val_tokens_without_loss"] = sum(st["tokens_without_loss"] for _, st in per_doc)
    stats.update(
        packed=packed, train_examples=len(train), val_examples=len(val),
        train_tokens=sum(len(e["input_ids"]) for e in train), loss_tokens=sum(_n_loss(e["labels"]) for e in train),
        val_tokens=sum(len(e["input_ids"]) for e in val),
    )
    return Prepared(train=train, val=val, stats=stats)


# ------------------------------------------------------------------------------ evaluation
def load_eval_set(data: DataConfig, limit: int = 0, *, seed: int = 0) -> EvalSet:
    """Eval examples and their stats, from data.eval_path (eval_fields over fields), or from the
    validation split of data.path (split by seed, as in training) when eval_path is empty. Rows with
    the same prompt are one example with all their references when references come from a single
    column (E2E: 4,693 rows -> 630 MRs); with several reference columns each row is one example."""
    if data.format == "text":
        raise DataError(f"data={data.name} is plain text (format text): it has no prompts or references. "
                        "Use its file in an eval.perplexity suite instead of a generation suite.")
    fields = {**data.fields, **data.eval_fields}
    target = {"alpaca": "output", "prompt_completion": "completion", "chat": ""}[data.format]
    if "references" in fields:
        ref_cols = [c.strip() for c in fields["references"].split(",") if c.strip()]
    else:
        ref_cols = [fields.get(target, target)] if target else []
    src = _read_source(data.eval_path or data.path, data.file_type, data.hub_split)
    _attach_parallel(src, [c for k, v in fields.items() if k != "id" for c in v.split(",")])
    _check_columns(src, fields, [k for k in fields if k in data.eval_fields or k in ("prompt", "instruction", "input", "messages")])
    if "references" not in fields and ref_cols and ref_cols[0] not in src.columns():
        ref_cols = []  # a prompt-only set (e.g. vicuna-questions): no references
    where = f"data={data.name} eval ({src.path})"
    records = src.records
    if not records:
        raise DataError(f"{where}: no rows.")
    bad: list[dict] = []
    good: list[tuple[int, dict, list[str], str]] = []
    for n, rec in records:
        try:
            row = _normalise(rec, data, fields, need_target=False)
            if data.format == "chat":
                msgs = row["messages"]
                refs = [msgs[-1]["content"]] if msgs[-1]["role"] == "assistant" else []
            else:
                refs = [_text_field(rec, c, {}) for c in ref_cols]
            ident = rec.get(fields["id"]) if "id" in fields else None
            if "id" in fields and not isinstance(ident, (str, int)):
                raise _Bad(f"id field {fields['id']!r} is missing or not a string/integer")
            good.append((n, row, refs, "" if ident is None else str(ident)))
        except _Bad as exc:
            bad.append({"row": n, "reason": str(exc)})
    _check_bad(where, len(records), bad, data.max_bad_share, src.columns())
    if not data.eval_path:
        if data.val_size <= 0:
            raise DataError(f"data={data.name} has no eval_path and data.val_size=0, so no rows are held out: "
                            "every row is trained on. Set data.eval_path, or data.val_size > 0.")
        val = _val_indices([_split_key(r) for _, r, _, _ in good], data.val_size, seed, where)
        good = [g for i, g in enumerate(good) if i in val]
    # One reference column = one reference per row (E2E): rows sharing a prompt become one example.
    # Several reference columns/files (DialogSum, WMT) or none (Vicuna): each row is its own example.
    grouped = data.format != "chat" and len(ref_cols) == 1
    groups: dict[str, list] = {}
    for i, (n, row, refs, ident) in enumerate(good):
        key = _split_key(row) if grouped else str(i)
        if key in groups:
            groups[key][2].extend(refs)
        else:
            groups[key] = [n, row, list(refs), ident]
    examples, seen = [], set()
    for gi, (n, row, refs, ident) in enumerate(groups.values()):
        ex_id = f"{data.name}-{ident}" if ident else f"{data.name}-{(gi if data.eval_path else n):04d}"
        if ex_id in seen:
            raise DataError(f"{where}: example id {ex_id!r} occurs twice (row {n}); the id column must be unique.")
        seen.add(ex_id)
        messages, prompt = _prompt_parts(row, data)
        examples.append(EvalExample(id=ex_id, messages=messages, prompt=prompt, references=refs))
    if limit > 0:
        examples = examples[:limit]
    stats = {"rows": len(records), "n_bad": len(bad), "bad_rows": bad[:MAX_BAD_LISTED], "files": src.files,
             "examples": len(examples), "source": "eval_path" if data.eval_path else f"val split of path (seed {seed})"}
    return EvalSet(examples, stats)


def load_eval_examples(data: DataConfig, limit: int = 0, *, seed: int = 0) -> list[EvalExample]:
    """The eval examples of load_eval_set(); malformed rows (under max_bad_share) are named on stderr."""
    es = load_eval_set(data, limit, seed=seed)
    if es.stats["n_bad"]:
        rows = ", ".join(str(b["row"]) for b in es.stats["bad_rows"][:10])
        print(f"[harness] warning: data={data.name}: {es.stats['n_bad']} malformed eval rows skipped (rows {rows}"
              f"{' ...' if es.stats['n_bad'] > 10 else ''}); use load_eval_set() for the reasons", file=sys.stderr)
    return es.examples

