"""Preference pairs (data.format=preference): read, check, split and tokenise prompt / chosen / rejected rows.

    harness train data=dpo-en-demo train.objective=dpo method=lora     # the objective calls prepare_preference()
    harness eval RUN_DIR eval=preference                              # the preference suite calls load_preference_eval()

Rows are normalised by harness/data/pairs.py (the two row shapes, and why a row is bad). Bad rows are
counted and listed like every other format's (DataError above data.max_bad_share). The split keeps pairs that share
a prompt on the same side (harness/data/split.py). Tokenisation renders the prompt exactly as SFT training and
generation do (harness/data/tokenize.py: chat template or data.prompt_template, BOS once when model.add_bos) and
ends each answer with EOS. A pair longer than max_length is cut, never dropped (fit_pair: the prompt from the left,
keeping its end, to at most half of max_length, then the answers from the right; counted in stats).
Tokenised pairs are {"prompt_ids", "chosen_ids", "rejected_ids"}, the shape TRL's DPO collator takes.
"""

from __future__ import annotations

import json

from harness import atomic
from harness.config import DataConfig
from harness.data.badrows import check_bad
from harness.data.formats import FORMATS, check_columns, data_format
from harness.data.pairs import normalise_preference, prompt_key
from harness.data.read import MAX_BAD_LISTED, BadRow, DataError, Prepared, read_source
from harness.data.split import val_indices
from harness.data.tokenize import encode_prompt_completion, render


# ------------------------------------------------------------------------------------ reading
def _read_pairs(data: DataConfig, path: str, fields: dict[str, str]) -> tuple[list[dict], dict, str, list[str]]:
    """(normalised rows with their 1-based `row`, stats with every bad row, where, the file's columns)."""
    src = read_source(path, data.file_type, data.hub_split)
    check_columns(src, fields, [k for k in fields if k in ("prompt", "chosen", "rejected", "conversations")])
    records = src.records[: data.max_rows] if data.max_rows > 0 else src.records
    where = f"data={data.name} ({src.path})"
    if not records:
        raise DataError(f"{where}: no rows (empty file?).")
    good: list[dict] = []
    bad: list[dict] = []
    for n, rec in records:
        try:
            good.append({**normalise_preference(rec, data, fields), "row": n})
        except BadRow as exc:
            bad.append({"row": n, "reason": str(exc)})
    check_bad(where, len(records), bad, data.max_bad_share, src.columns())
    stats = {"format": "preference", "rows": len(records), "n_bad": len(bad), "bad_rows": bad, "files": src.files,
             "row_numbers": "line" if src.kind in ("jsonl", "csv", "text") else "record"}
    return good, stats, where, src.columns()


def _split(data: DataConfig, seed: int) -> tuple[list[dict], list[dict], dict, str, list[str]]:
    rows, stats, where, columns = _read_pairs(data, data.path, data.fields)
    val = val_indices([prompt_key(r) for r in rows], data.val_size, seed, where)
    train = [r for i, r in enumerate(rows) if i not in val]
    held = [r for i, r in enumerate(rows) if i in val]
    stats.update(train_rows=len(train), val_rows=len(held))
    return train, held, stats, where, columns


def load_preference_rows(data_cfg: DataConfig, seed: int) -> tuple[list[dict], list[dict], dict]:
    """(train rows, validation rows, stats) of data.path: every row normalised (bad rows counted and listed in
    stats n_bad / bad_rows, DataError above data.max_bad_share), then split by prompt with data.val_size and
    `seed`. Rows carry their 1-based `row` number (line for JSONL/CSV, record for JSON)."""
    train, held, stats, _, _ = _split(data_cfg, seed)
    return train, held, {**stats, "bad_rows": stats["bad_rows"][:MAX_BAD_LISTED]}


# ------------------------------------------------------------------------------- tokenising
def fit_pair(p: list[int], c: list[int], r: list[int], max_length: int, keep_first: bool):
    """Cut a pair to max_length: the prompt loses tokens from the left (its end, where the answers attach, stays;
    a leading BOS stays when keep_first) down to at most half of max_length, then the answers are cut from the right
    to the room left (TRL's keep_start for answers). Returns (prompt, chosen, rejected, prompt cut?, answer cut?)."""
    longest = max(len(c), len(r))
    if len(p) + longest <= max_length:
        return p, c, r, False, False
    budget = max(max_length // 2, max_length - longest)
    prompt_cut = len(p) > budget
    if prompt_cut:
        p = p[:1] + p[len(p) - (budget - 1):] if keep_first else p[len(p) - budget:]
    room = max_length - len(p)
    return p, c[:room], r[:room], prompt_cut, longest > room


def encode_pairs(rows: list[dict], tokenizer, data: DataConfig, *, add_bos: bool,
                 max_length: int) -> tuple[list[dict], dict]:
    """Tokenise pairs -> ([{"prompt_ids", "chosen_ids", "rejected_ids"}], {"truncated_prompts", "truncated_answers"}).
    The prompt is rendered and tokenised as SFT does (the same string generation sees); each
    answer ends with EOS; over-long pairs are cut by fit_pair (counted, never dropped)."""
    if max_length < 8:
        raise DataError(f"max_length={max_length}: too short for a prompt and two answers; use train.max_length >= 8.")
    counts = {"truncated_pairs": 0, "truncated_prompts": 0, "truncated_answers": 0}
    if not rows:
        return [], counts
    parts = FORMATS["preference"].prompt
    prompts = [render(*parts(r, data), tokenizer, data, add_bos) for r in rows]
    chosen = encode_prompt_completion(prompts, [r["chosen"] for r in rows], tokenizer)
    rejected = encode_prompt_completion(prompts, [r["rejected"] for r in rows], tokenizer)
    out = []
    for (p, c), (_, rj) in zip(chosen, rejected):
        p, c, rj, p_cut, a_cut = fit_pair(p, c, rj, max_length, keep_first=add_bos)
        counts["truncated_pairs"] += p_cut or a_cut
        counts["truncated_prompts"] += p_cut
        counts["truncated_answers"] += a_cut
        out.append({"prompt_ids": p, "chosen_ids": c, "rejected_ids": rj})
    return out, counts


def prepare_preference(data: DataConfig, tokenizer, *, max_length: int, seed: int, add_bos: bool,
                       use_cache: bool = True) -> Prepared:
    """Training pairs for DPO / ORPO: read, check, split, tokenise; cached like SFT data (harness/data/cache.py)."""
    from harness.data.cache import cache_dir, cache_key

    params = {"objective": "preference", "max_length": max_length, "seed": seed, "add_bos": add_bos}
    key = cache_key(data, tokenizer, **params) if use_cache else None
    entry = cache_dir() / f"{key}.json" if key else None
    if entry is not None and entry.is_file():
        try:
            blob = json.loads(entry.read_text(encoding="utf-8"))
            return Prepared(train=blob["train"], val=blob["val"], stats={**blob["stats"], "cache": "hit"})
        except (OSError, ValueError, KeyError):
            pass  # unreadable entry: prepare again and overwrite it
    train_rows, val_rows, stats, _, _ = _split(data, seed)
    train, cut_t = encode_pairs(train_rows, tokenizer, data, add_bos=add_bos, max_length=max_length)
    val, cut_v = encode_pairs(val_rows, tokenizer, data, add_bos=add_bos, max_length=max_length)
    stats.update(bad_rows=stats["bad_rows"][:MAX_BAD_LISTED], max_length=max_length, packed=False,
                 truncated_rows=cut_t["truncated_pairs"] + cut_v["truncated_pairs"],
                 truncated_prompts=cut_t["truncated_prompts"] + cut_v["truncated_prompts"],
                 truncated_answers=cut_t["truncated_answers"] + cut_v["truncated_answers"],
                 train_examples=len(train), val_examples=len(val),
                 train_tokens=sum(len(e["prompt_ids"]) * 2 + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in train),
                 loss_tokens=sum(len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in train))
    prepared = Prepared(train=train, val=val, stats=stats)
    if entry is None:
        stats["cache"] = "off"
        return prepared
    atomic.write_text(entry, json.dumps({"train": train, "val": val, "stats": stats}, separators=(",", ":"), default=str))
    stats["cache"] = "miss"
    return prepared


# ------------------------------------------------------------------------------ evaluation
def load_preference_eval(data: DataConfig, tokenizer, *, seed: int, add_bos: bool, max_length: int,
                         limit: int = 0) -> tuple[list[dict], dict]:
    """Held-out pairs for the preference suite: data.eval_path (eval_fields over fields), else the validation split
    of data.path (split by `seed`, as in training). Items: {"id", "prompt", "chosen", "rejected", "prompt_ids",
    "chosen_ids", "rejected_ids"}; ids are "<data name>-<row>" (stable across runs, for paired tests)."""
    if not data_format(data).pairs:
        raise DataError(f"data={data.name} has data.format={data.format}; a preference suite needs a data config "
                        "with preference pairs (data.format=preference, e.g. data=dpo-en-demo).")
    if data.eval_path:
        rows, stats, _, _ = _read_pairs(data, data.eval_path, {**data.fields, **data.eval_fields})
        source = "eval_path"
    else:
        if data.val_size <= 0:
            raise DataError(f"data={data.name} has no eval_path and data.val_size=0, so no pairs are held out. "
                            "Set data.eval_path, or data.val_size > 0.")
        _, rows, stats, _, _ = _split(data, seed)
        source = f"val split of path (seed {seed})"
    if limit > 0:
        rows = rows[:limit]
    encoded, cuts = encode_pairs(rows, tokenizer, data, add_bos=add_bos, max_length=max_length)
    items = [{"id": f"{data.name}-{r['row']:04d}", "prompt": r["prompt"], "chosen": r["chosen"],
              "rejected": r["rejected"], **e} for r, e in zip(rows, encoded)]
    out = {"rows": stats["rows"], "n_bad": stats["n_bad"], "bad_rows": stats["bad_rows"][:MAX_BAD_LISTED],
           "files": stats["files"], "pairs": len(items), **cuts, "max_length": max_length, "source": source}
    return items, out
