"""Data formats (data.format): how a raw record becomes the harness's normalised row.

  alpaca             instruction, input, output
  prompt_completion  prompt, completion
  chat               a list of {role, content} messages
  text               plain text documents (language modelling)

Column names are mapped through data.fields; a record that does not fit its format raises a bad-row reason.
"""

from __future__ import annotations

from typing import Any

from harness.config import DataConfig
from harness.data.read import UNDECODABLE, BadRow, Broken, DataError, Source

ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}


# ----------------------------------------------------------------------------- row checking
def text_field(rec: dict, ours: str, fields: dict[str, str], required: bool = True) -> str:
    col = fields.get(ours, ours)
    if col not in rec:
        if not required:
            return ""
        raise BadRow(f"missing field {col!r}" + ("" if col == ours else f" (data.fields.{ours})"))
    v = rec[col]
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        raise BadRow(f"field {col!r} is {'null' if v is None else type(v).__name__}, not text")
    if UNDECODABLE.search(v):
        raise BadRow(f"field {col!r} is not valid UTF-8 text")
    if required and not v.strip():
        raise BadRow(f"field {col!r} is empty")
    return v


def _messages(rec: dict, fields: dict[str, str], system_prompt: str) -> list[dict]:
    col = fields.get("messages", "messages")
    if col not in rec:
        raise BadRow(f"missing field {col!r}" + ("" if col == "messages" else " (data.fields.messages)"))
    raw = rec[col]
    if not isinstance(raw, list) or not raw:
        raise BadRow(f"field {col!r} must be a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise BadRow(f"{col}[{i}] is a {type(m).__name__}, not a message")
        role = ROLE_ALIASES.get(m.get("role", m.get("from")), m.get("role", m.get("from")))
        content = m.get("content", m.get("value"))
        if role not in ("system", "user", "assistant"):
            raise BadRow(f"{col}[{i}] has role {role!r}; use system, user or assistant")
        if not isinstance(content, str) or not content.strip():
            raise BadRow(f"{col}[{i}] has empty or non-text content")
        if UNDECODABLE.search(content):
            raise BadRow(f"{col}[{i}] is not valid UTF-8 text")
        out.append({"role": role, "content": content})
    if system_prompt and out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


def normalise(rec: Any, data: DataConfig, fields: dict[str, str], need_target: bool) -> dict:
    """A file record -> our field names for data.format; raises BadRow with the reason."""
    if isinstance(rec, Broken):
        raise BadRow(rec.reason)
    fmt = data.format
    if fmt == "alpaca":
        row = {"instruction": text_field(rec, "instruction", fields),
               "input": text_field(rec, "input", fields, required=False)}
        if need_target:
            row["output"] = text_field(rec, "output", fields)
        return row
    if fmt == "prompt_completion":
        row = {"prompt": text_field(rec, "prompt", fields)}
        if need_target:
            row["completion"] = text_field(rec, "completion", fields)
        return row
    if fmt == "chat":
        msgs = _messages(rec, fields, data.system_prompt)
        if not any(m["role"] == "assistant" for m in msgs) and need_target:
            raise BadRow("the conversation has no assistant turn to learn from")
        if msgs[0]["role"] == "assistant" or (msgs[0]["role"] == "system" and len(msgs) > 1 and msgs[1]["role"] == "assistant"):
            raise BadRow("the conversation starts with an assistant turn; it must start with a user turn")
        return {"messages": msgs}
    if fmt == "text":
        return {"text": text_field(rec, "text", fields)}
    raise DataError(f"data.format={fmt!r}: use alpaca, prompt_completion, chat or text.")


def check_columns(src: Source, fields: dict[str, str], keys) -> None:
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
