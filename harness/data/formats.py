"""Data formats (data.format): the FORMATS registry, one entry per format holding everything that differs.

  alpaca             instruction, input (optional), output; loss on the output
  prompt_completion  prompt, completion; loss on the completion
  chat               messages: [{role, content}] (ShareGPT from/value accepted); loss on the assistant turns
  text               text: language-model documents; no prompt, loss on every token, always packed
  preference         prompt / chosen / rejected pairs (harness/data/pairs.py); DPO and ORPO train on the pairs
                     (harness/data/preference.py), SFT on the prompt and its chosen answer

An entry (DataFormat) names the format's fields (the keys of data.fields) and the field it learns, and holds its
functions: normalise (a file record -> a row of our field names, or BadRow with the reason), split_key (rows that
must stay on one side of the train/val split), prompt (a row as chat messages and as plain text), encode (rows ->
token ids and labels), references (eval references taken from the row itself) and texts (the row's content, for
the contamination check). read.py, split.py, tokenize.py, prepare.py and the stages that call them read these and
never branch on a format's name, so a new format is one FORMATS entry and its functions (here, or in one new module
imported here), plus its name in ALLOWED["data.format"] of harness/config/schema.py (the config layer does not
import the data stage; tests/test_architecture.py keeps the two equal). docs/data.md has a worked example.

    fmt = data_format(cfg.data)       # FORMATS[cfg.data.format], or a DataError naming the formats there are
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from harness.config import DataConfig
from harness.data.pairs import normalise_preference, prompt_key
from harness.data.read import UNDECODABLE, BadRow, Broken, DataError, EvalExample, Source
from harness.data.tokenize import (
    alpaca_prompt,
    encode_conversation,
    encode_prompt_completion,
    eos_token_id,
    plain_chat,
    plain_prompt,
    prompt_messages,
    render,
    single_turn,
    token_ids,
)

ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}

Encoded = tuple[list[int], list[int]]  # (input ids, labels); -100 = no loss


@dataclass(frozen=True)
class DataFormat:
    name: str
    fields: tuple[str, ...]  # our field names (the keys of data.fields); fields[0] is required and only this format's
    target: str  # the learned field, the default reference column of eval sets ("": references() or none)
    normalise: Callable[[dict, DataConfig, dict[str, str], bool], dict]  # (record, data, fields, need_target) -> row
    split_key: Callable[[dict], str]  # rows with the same key (the same prompt) land on the same side of the split
    encode: Callable[[list[dict], Any, DataConfig, bool], list[Encoded | BadRow]]  # (rows, tokenizer, data, add_bos)
    texts: Callable[[dict], list[str]]  # the row's content without system text (harness.eval.contamination)
    prompt: Callable[[dict, DataConfig], tuple[list[dict], str]] | None = None  # (messages, plain); None: no prompts
    references: Callable[[dict], list[str]] | None = None  # eval references from the row itself, not from a column
    pairs: bool = False  # rows are preference pairs (chosen / rejected): train.objective=dpo|orpo and the preference
    #                      suite read them (harness/data/preference.py); PAIR_FORMATS in harness/config/schema.py
    documents: bool = False  # rows are documents: a raw text file's lines are grouped into documents, training rows
    #                          are always packed (the EOS between documents carries loss) and never truncated, and
    #                          validation is cut into blocks within each document

    @property
    def prompt_fields(self) -> tuple[str, ...]:
        return tuple(f for f in self.fields if f != self.target)


def data_format(data: DataConfig) -> DataFormat:
    fmt = FORMATS.get(data.format)
    if fmt is None:
        raise DataError(f"data.format={data.format!r}: use one of {', '.join(FORMATS)}.")
    return fmt


def normalise(rec: Any, data: DataConfig, fields: dict[str, str], need_target: bool) -> dict:
    """A file record -> our field names for data.format; raises BadRow with the reason."""
    if isinstance(rec, Broken):
        raise BadRow(rec.reason)
    return data_format(data).normalise(rec, data, fields, need_target)


def row_format(row: dict) -> DataFormat | None:
    """The format a normalised row belongs to: told by its first field (each format's own); where two formats'
    first fields are present (a preference row also has a prompt), the one with more of its fields in the row."""
    found = [f for f in FORMATS.values() if f.fields[0] in row]
    return max(found, key=lambda f: sum(k in row for k in f.fields), default=None)


def render_prompt(example_or_row: EvalExample | dict, tokenizer, data: DataConfig, add_bos: bool) -> str:
    """The exact prompt string the model sees for generation, identical to the prompt part used in training,
    for an EvalExample, a normalised row or a file row (its columns mapped by data.fields). Tokenise it with
    add_special_tokens=False (BOS, if wanted, is already in the string)."""
    if isinstance(example_or_row, EvalExample):
        return render(example_or_row.messages, example_or_row.prompt, tokenizer, data, add_bos)
    fmt = data_format(data)
    if fmt.prompt is None:
        raise DataError(f"data={data.name} (format {fmt.name}) has no prompts to render.")
    row = example_or_row
    if fmt.fields[0] not in row or not isinstance(row.get(fmt.target, ""), str):  # a file row: map its columns
        row = normalise(row, data, data.fields, need_target=False)
    return render(*fmt.prompt(row, data), tokenizer, data, add_bos)


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


def _strings(row: dict, names: tuple[str, ...]) -> list[str]:
    return [row[f] for f in names if isinstance(row.get(f), str) and row[f]]


# ---------------------------------------------------------------- alpaca and prompt_completion
def _normalise_alpaca(rec: dict, data: DataConfig, fields: dict[str, str], need_target: bool) -> dict:
    row = {"instruction": text_field(rec, "instruction", fields),
           "input": text_field(rec, "input", fields, required=False)}
    if need_target:
        row["output"] = text_field(rec, "output", fields)
    return row


def _alpaca_parts(row: dict, data: DataConfig) -> tuple[list[dict], str]:
    sys_, instruction, inp = data.system_prompt, row["instruction"], row.get("input", "")
    user = instruction + (f"\n\n{inp}" if inp.strip() else "")
    plain = alpaca_prompt(instruction, inp, sys_) if data.prompt_template == "alpaca" else plain_prompt(sys_, user)
    return single_turn(sys_, user), plain


def _normalise_prompt_completion(rec: dict, data: DataConfig, fields: dict[str, str], need_target: bool) -> dict:
    row = {"prompt": text_field(rec, "prompt", fields)}
    if need_target:
        row["completion"] = text_field(rec, "completion", fields)
    return row


def _prompt_completion_parts(row: dict, data: DataConfig) -> tuple[list[dict], str]:
    sys_, user = data.system_prompt, row["prompt"]
    if data.prompt_template == "alpaca":  # a system prompt is the instruction, the row's prompt its input
        plain = alpaca_prompt(sys_, user) if sys_ else alpaca_prompt(user, "")
    else:
        plain = plain_prompt(sys_, user)
    return single_turn(sys_, user), plain


def encode_completion(rows: list[dict], tokenizer, data: DataConfig, add_bos: bool) -> list[Encoded | BadRow]:
    """For any format with a prompt and a target field: the rendered prompt, then the target + EOS; the prompt's
    labels are -100 when completion_only_loss."""
    fmt = data_format(data)
    prompts = [render(*fmt.prompt(r, data), tokenizer, data, add_bos) for r in rows]
    pairs = encode_prompt_completion(prompts, [r[fmt.target] for r in rows], tokenizer)
    return [(p + c, ([-100] * len(p) if data.completion_only_loss else list(p)) + c) for p, c in pairs]


# -------------------------------------------------------------------------------------- chat
def _normalise_chat(rec: dict, data: DataConfig, fields: dict[str, str], need_target: bool) -> dict:
    msgs = _messages(rec, fields, data.system_prompt)
    if not any(m["role"] == "assistant" for m in msgs) and need_target:
        raise BadRow("the conversation has no assistant turn to learn from")
    if msgs[0]["role"] == "assistant" or (msgs[0]["role"] == "system" and len(msgs) > 1 and msgs[1]["role"] == "assistant"):
        raise BadRow("the conversation starts with an assistant turn; it must start with a user turn")
    return {"messages": msgs}


def _chat_parts(row: dict, data: DataConfig) -> tuple[list[dict], str]:
    msgs = prompt_messages(row["messages"])
    return msgs, plain_chat(msgs, True, data.prompt_template)


def _encode_chat(rows: list[dict], tokenizer, data: DataConfig, add_bos: bool) -> list[Encoded | BadRow]:
    out: list[Encoded | BadRow] = []
    for r in rows:
        try:
            out.append(encode_conversation(r["messages"], tokenizer, data, add_bos))
        except BadRow as exc:
            out.append(exc)
    return out


def _chat_references(row: dict) -> list[str]:
    """The last assistant turn, when the conversation ends with one."""
    msgs = row["messages"]
    return [msgs[-1]["content"]] if msgs[-1]["role"] == "assistant" else []


# -------------------------------------------------------------------------------------- text
def _normalise_text(rec: dict, data: DataConfig, fields: dict[str, str], need_target: bool) -> dict:
    return {"text": text_field(rec, "text", fields)}


def _encode_text(rows: list[dict], tokenizer, data: DataConfig, add_bos: bool) -> list[Encoded | BadRow]:
    """BOS (if add_bos) + the document + EOS, every token carrying loss (completion_only_loss does not apply)."""
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    if add_bos and not bos:
        raise DataError("model.add_bos=true but the tokenizer has no bos_token; set model.add_bos=false.")
    eos = eos_token_id(tokenizer)
    docs = [bos + ids + [eos] for ids in token_ids(tokenizer, [r["text"] for r in rows])]
    return [(ids, list(ids)) for ids in docs]


# -------------------------------------------------------------------------------- preference
def _normalise_preference(rec: dict, data: DataConfig, fields: dict[str, str], need_target: bool) -> dict:
    return normalise_preference(rec, data, fields)  # both answers are always required: they are the pair


def _preference_parts(row: dict, data: DataConfig) -> tuple[list[dict], str]:
    """The prompt as SFT and generation render it: text like prompt_completion's, messages like chat's."""
    if isinstance(row["prompt"], str):
        return _prompt_completion_parts(row, data)
    return row["prompt"], plain_chat(row["prompt"], True, data.prompt_template)


def _preference_texts(row: dict) -> list[str]:
    p = row["prompt"]
    prompt = [p] if isinstance(p, str) else [m["content"] for m in p if m["role"] != "system"]
    return prompt + [row["chosen"], row["rejected"]]


# ---------------------------------------------------------------------------------- registry
FORMATS: dict[str, DataFormat] = {f.name: f for f in [
    DataFormat(
        "alpaca", fields=("instruction", "input", "output"), target="output", normalise=_normalise_alpaca,
        split_key=lambda r: r["instruction"] + "\0" + r.get("input", ""), prompt=_alpaca_parts,
        encode=encode_completion, texts=lambda r: _strings(r, ("instruction", "input", "output"))),
    DataFormat(
        "prompt_completion", fields=("prompt", "completion"), target="completion",
        normalise=_normalise_prompt_completion, split_key=lambda r: r["prompt"], prompt=_prompt_completion_parts,
        encode=encode_completion, texts=lambda r: _strings(r, ("prompt", "completion"))),
    DataFormat(
        "chat", fields=("messages",), target="", normalise=_normalise_chat,
        split_key=lambda r: json.dumps(prompt_messages(r["messages"]), sort_keys=True), prompt=_chat_parts,
        encode=_encode_chat, references=_chat_references,
        texts=lambda r: [m["content"] for m in r["messages"] if m["role"] != "system"]),
    DataFormat(
        "text", fields=("text",), target="", normalise=_normalise_text, split_key=lambda r: r["text"],
        encode=_encode_text, texts=lambda r: _strings(r, ("text",)), documents=True),
    DataFormat(  # SFT learns the chosen answer; train.objective=dpo|orpo reads the pairs (harness/data/preference.py)
        "preference", fields=("chosen", "rejected", "prompt", "conversations"), target="chosen",
        normalise=_normalise_preference, split_key=prompt_key, prompt=_preference_parts, encode=encode_completion,
        references=lambda r: [r["chosen"]], texts=_preference_texts, pairs=True),
]}


# ------------------------------------------------------------------------------- columns
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
