"""Preference rows (data.format=preference): one file record -> {"prompt": text | messages, "chosen", "rejected"}.

Two row shapes (column names mapped through data.fields):
  prompt / chosen / rejected      prompt: text, or a list of {role, content} messages ending with a user turn;
                                  chosen / rejected: text, an assistant message, or a one-message list (TRL's shape)
  ShareGPT (LLaMA-Factory)        conversations: [{from, value}] ending with a human turn (system and earlier turns
                                  allowed), chosen: {from: gpt, value}, rejected: {from: gpt, value}

normalise_preference() raises BadRow with the reason (missing prompt, an empty side, chosen == rejected, a
conversation that does not end with a user turn, ...). The row functions live here, apart from
harness/data/preference.py (tokenising pairs), so that harness/data/formats.py can register the format without an
import cycle: with train.objective=sft a preference file trains on its chosen answers (SFT before DPO on one file).
"""

from __future__ import annotations

import json
from typing import Any

from harness.config import DataConfig
from harness.data.read import UNDECODABLE, BadRow, Broken

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
         "model": "assistant", "system": "system"}


# ------------------------------------------------------------------------------------ rows
def _text(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise BadRow(f"{where} is {'null' if v is None else type(v).__name__}, not text")
    if UNDECODABLE.search(v):
        raise BadRow(f"{where} is not valid UTF-8 text")
    return v


def _answer(rec: dict, ours: str, fields: dict[str, str]) -> str:
    """chosen / rejected: text, a {from, value} or {role, content} message, or a one-message list."""
    col = fields.get(ours, ours)
    if col not in rec:
        raise BadRow(f"missing field {col!r}" + ("" if col == ours else f" (data.fields.{ours})"))
    v = rec[col]
    if isinstance(v, list):
        if len(v) != 1 or not isinstance(v[0], dict):
            raise BadRow(f"field {col!r} must be text, one message, or a list holding one message")
        v = v[0]
    if isinstance(v, dict):
        role = v.get("role", v.get("from"))
        if role is not None and ROLES.get(role) != "assistant":
            raise BadRow(f"{ours} answer has role {role!r}; it must be an assistant (gpt) turn")
        v = v.get("content", v.get("value"))
    text = _text(v, f"{ours} answer")
    if not text.strip():
        raise BadRow(f"empty {ours} answer")
    return text


def _conversation(raw: Any, col: str, system_prompt: str) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise BadRow(f"missing prompt: field {col!r} must be a non-empty list of messages")
    msgs = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise BadRow(f"{col}[{i}] is a {type(m).__name__}, not a message")
        role = ROLES.get(m.get("role", m.get("from")))
        if role is None:
            raise BadRow(f"{col}[{i}] has role {m.get('role', m.get('from'))!r}; use system, user (human) or assistant (gpt)")
        content = _text(m.get("content", m.get("value")), f"{col}[{i}] content")
        if not content.strip():
            raise BadRow(f"{col}[{i}] is empty")
        msgs.append({"role": role, "content": content})
    turns = [m for m in msgs if m["role"] != "system"]
    if not turns:
        raise BadRow(f"missing prompt: {col!r} has only system turns")
    if turns[0]["role"] != "user" or msgs[-1]["role"] != "user":
        raise BadRow(f"{col!r} must start with a user turn and end with the user turn the answers reply to")
    if system_prompt and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def normalise_preference(record: Any, data_cfg: DataConfig, fields: dict[str, str] | None = None) -> dict:
    """A file record -> {"prompt": text | messages, "chosen": text, "rejected": text}; raises BadRow with the reason."""
    if isinstance(record, Broken):
        raise BadRow(record.reason)
    fields = data_cfg.fields if fields is None else fields
    pcol, ccol = fields.get("prompt", "prompt"), fields.get("conversations", "conversations")
    if record.get(pcol) is not None:
        raw = record[pcol]
        if isinstance(raw, list):
            prompt: str | list[dict] = _conversation(raw, pcol, data_cfg.system_prompt)
        else:
            prompt = _text(raw, f"field {pcol!r}")
            if not prompt.strip():
                raise BadRow(f"missing prompt: field {pcol!r} is empty")
    elif ccol in record:
        prompt = _conversation(record[ccol], ccol, data_cfg.system_prompt)
    else:
        raise BadRow(f"missing prompt: no field {pcol!r} or {ccol!r}")
    chosen, rejected = _answer(record, "chosen", fields), _answer(record, "rejected", fields)
    if chosen.strip() == rejected.strip():
        raise BadRow("chosen == rejected: the pair prefers nothing")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def prompt_key(row: dict) -> str:
    """What the split groups by: pairs with the same prompt stay on the same side."""
    p = row["prompt"]
    return p if isinstance(p, str) else json.dumps(p, sort_keys=True)
