"""Data stage entry points: prepare() for training, load_eval_set() / load_eval_examples() for evaluation.

    harness train model=smollm2-135m data=e2e      # the pipeline calls prepare() (through harness.data.cache)
    harness eval RUN_DIR                           # the evaluator calls load_eval_examples() and render_prompt()

read (harness/data/read.py) -> normalise (formats.py) -> split (split.py) -> tokenise, truncate or pack (tokenize.py).
What differs between data formats comes from their FORMATS entry (formats.py); nothing here names a format.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from harness.config import DataConfig
from harness.data.badrows import check_bad, describe_bad_rows
from harness.data.formats import check_columns, data_format, normalise, text_field
from harness.data.read import (
    MAX_BAD_LISTED,
    BadRow,
    DataError,
    EvalExample,
    EvalSet,
    Prepared,
    Source,
    attach_parallel,
    read_source,
)
from harness.data.split import val_indices
from harness.data.tokenize import eos_token_id, make_example, n_loss, pack_chunks


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
def _row_numbers(src: Source) -> str:
    """What a bad row's number counts: lines of the file, or records (JSON lists, Parquet, datasets)."""
    return "line" if src.kind in ("jsonl", "csv", "text") else "record"


@dataclass
class NormalisedRows:
    """A training data set read, normalised and split, before tokenisation."""

    source: Source
    where: str  # "data=NAME (path)", for messages
    n_records: int
    good: list[tuple[int, dict]]  # (row number, normalised row)
    bad: list[dict]  # {"row", "reason"}
    val_idx: set[int]  # indices into `good` held out for validation


def read_normalised(data: DataConfig) -> NormalisedRows:
    """Read data.path, map its columns, normalise every row (bad rows recorded, DataError above
    data.max_bad_share) and choose the validation rows (by data.split_seed); the first half of prepare()."""
    fmt = data_format(data)
    src = read_source(data.path, data.file_type, data.hub_split)
    attach_parallel(src, [c for v in data.fields.values() for c in v.split(",")])
    check_columns(src, data.fields, list(data.fields))
    records = src.records
    if fmt.documents and src.kind == "text":
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
            good.append((n, normalise(rec, data, data.fields, need_target=True)))
        except BadRow as exc:
            bad.append({"row": n, "reason": str(exc)})
    check_bad(where, len(records), bad, data.max_bad_share, src.columns())
    val_idx = val_indices([fmt.split_key(r) for _, r in good], data.val_size, data.split_seed, where)
    return NormalisedRows(src, where, len(records), good, bad, val_idx)


def training_rows(data: DataConfig) -> list[dict]:
    """The normalised rows prepare(data, ...) trains on, before tokenisation (the contamination check indexes
    these). It keeps the few rows prepare drops later for a prompt longer than max_length."""
    rows = read_normalised(data)
    return [r for i, (_, r) in enumerate(rows.good) if i not in rows.val_idx]


def prepare(data: DataConfig, tokenizer, *, max_length: int, packing: bool, add_bos: bool) -> Prepared:
    """Read, check, split, tokenise and truncate/pack data.path for training (see the module docstring). The
    split depends only on the data and data.split_seed, not on the training seed: every seed of a sweep trains
    and validates on the same rows."""
    if max_length < 2:
        raise DataError(f"max_length={max_length}: too short; use train.max_length >= 8.")
    rows = read_normalised(data)
    src, where, good, bad, val_idx, n_records = rows.source, rows.where, rows.good, rows.bad, rows.val_idx, rows.n_records

    fmt = data_format(data)
    eos = eos_token_id(tokenizer)
    truncated = 0
    encoded: list[tuple[int, dict] | None] = []
    for (n, _), pair in zip(good, fmt.encode([r for _, r in good], tokenizer, data, add_bos)):
        if isinstance(pair, BadRow):
            bad.append({"row": n, "reason": str(pair)})
            encoded.append(None)
            continue
        ids, labels = pair
        if len(ids) > max_length and not fmt.documents:  # documents are cut into blocks below, not truncated
            ids, labels = ids[:max_length], labels[:max_length]
            if data.completion_only_loss and n_loss(labels) == 0:
                prompt_len = next((i for i, x in enumerate(pair[1]) if x != -100), len(pair[1]))
                bad.append({"row": n, "reason": f"prompt longer than max_length ({prompt_len} prompt tokens, "
                                                f"max_length {max_length}): no room for the completion"})
                encoded.append(None)
                continue
            truncated += 1
        encoded.append((n, make_example(ids, labels)))
    bad.sort(key=lambda b: b["row"])
    check_bad(where, n_records, bad, data.max_bad_share, src.columns())

    train_ex = [e for i, e in enumerate(encoded) if e is not None and i not in val_idx]
    val_ex = [e for i, e in enumerate(encoded) if e is not None and i in val_idx]
    stats: dict[str, Any] = {
        "format": data.format, "rows": n_records, "n_bad": len(bad), "bad_rows": bad[:MAX_BAD_LISTED],
        "train_rows": len(train_ex), "val_rows": len(val_ex), "split_seed": data.split_seed,
        "truncated_rows": truncated, "max_length": max_length, "files": src.files, "row_numbers": _row_numbers(src),
    }
    train = [e for _, e in train_ex]
    val = [e for _, e in val_ex]
    packed = packing or fmt.documents
    if packed:
        sep = eos if (fmt.documents or not data.completion_only_loss) else -100
        train, pack_stats = pack_chunks(train, max_length, eos, sep)
        stats.update(pack_stats)
    if fmt.documents:  # long documents: blocks within each document, never across
        per_doc = [pack_chunks([e], max_length, eos, eos) for e in val]
        val = [b for blocks, _ in per_doc for b in blocks]
        stats["val_tokens_without_loss"] = sum(st["tokens_without_loss"] for _, st in per_doc)
    stats.update(
        packed=packed, train_examples=len(train), val_examples=len(val),
        train_tokens=sum(len(e["input_ids"]) for e in train), loss_tokens=sum(n_loss(e["labels"]) for e in train),
        val_tokens=sum(len(e["input_ids"]) for e in val),
    )
    return Prepared(train=train, val=val, stats=stats)


# ------------------------------------------------------------------------------ evaluation
def load_eval_set(data: DataConfig, limit: int = 0) -> EvalSet:
    """Eval examples and their stats, from data.eval_path (eval_fields over fields), or from the
    validation split of data.path (by data.split_seed, as in training) when eval_path is empty. Rows with
    the same prompt are one example with all their references when references come from a single
    column (E2E: 4,693 rows -> 630 MRs); with several reference columns each row is one example."""
    fmt = data_format(data)
    if fmt.prompt is None:
        raise DataError(f"data={data.name} (format {fmt.name}) has no prompts or references: "
                        "use its file in an eval.perplexity suite instead of a generation suite.")
    fields = {**data.fields, **data.eval_fields}
    if "references" in fields:
        ref_cols = [c.strip() for c in fields["references"].split(",") if c.strip()]
    else:
        ref_cols = [fields.get(fmt.target, fmt.target)] if fmt.target else []
    src = read_source(data.eval_path or data.path, data.file_type, data.hub_split)
    attach_parallel(src, [c for k, v in fields.items() if k != "id" for c in v.split(",")])
    check_columns(src, fields, [k for k in fields if k in data.eval_fields or k in fmt.prompt_fields])
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
            row = normalise(rec, data, fields, need_target=False)
            refs = fmt.references(row) if fmt.references else [text_field(rec, c, {}) for c in ref_cols]
            ident = rec.get(fields["id"]) if "id" in fields else None
            if "id" in fields and not isinstance(ident, (str, int)):
                raise BadRow(f"id field {fields['id']!r} is missing or not a string/integer")
            good.append((n, row, refs, "" if ident is None else str(ident)))
        except BadRow as exc:
            bad.append({"row": n, "reason": str(exc)})
    check_bad(where, len(records), bad, data.max_bad_share, src.columns())
    if not data.eval_path:
        if data.val_size <= 0:
            raise DataError(f"data={data.name} has no eval_path and data.val_size=0, so no rows are held out: "
                            "every row is trained on. Set data.eval_path, or data.val_size > 0.")
        val = val_indices([fmt.split_key(r) for _, r, _, _ in good], data.val_size, data.split_seed, where)
        good = [g for i, g in enumerate(good) if i in val]
    # One reference column = one reference per row (E2E): rows sharing a prompt become one example.
    # Several reference columns/files (DialogSum, WMT) or none (Vicuna): each row is its own example.
    grouped = fmt.references is None and len(ref_cols) == 1
    groups: dict[str, list] = {}
    for i, (n, row, refs, ident) in enumerate(good):
        key = fmt.split_key(row) if grouped else str(i)
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
        messages, prompt = fmt.prompt(row, data)
        examples.append(EvalExample(id=ex_id, messages=messages, prompt=prompt, references=refs))
    if limit > 0:
        examples = examples[:limit]
    stats = {"rows": len(records), "n_bad": len(bad), "bad_rows": bad[:MAX_BAD_LISTED], "files": src.files,
             "row_numbers": _row_numbers(src),
             "examples": len(examples),
             "source": "eval_path" if data.eval_path else f"val split of path (split_seed {data.split_seed})"}
    return EvalSet(examples, stats)


def load_eval_examples(data: DataConfig, limit: int = 0) -> list[EvalExample]:
    """The eval examples of load_eval_set(); malformed rows (under max_bad_share) are named on stderr."""
    es = load_eval_set(data, limit)
    if es.stats["n_bad"]:
        print(f"[harness] warning: data={data.name} eval: {describe_bad_rows(es.stats)}", file=sys.stderr)
    return es.examples
