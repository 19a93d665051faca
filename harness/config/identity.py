"""What a run is called and what it is: a model or data set given by path is named after that path, not
after the default group option it was composed into, and a model given by path takes its context length
and LoRA targets from itself.

    harness train model.source=hub model.path=~/models/my-llama data.path=~/data/recipes.jsonl data.format=alpaca
    # -> run my-llama-lora-recipes; context length from ~/models/my-llama/config.json; LoRA on all-linear

compose() applies this to the composed tree, knowing which keys the command line set (a key the user
set always wins: model.name=, data.name=, model.context_length=, model.lora_target_modules=, ...). It
reads at most one config.json (json, no torch); whether LoRA targets the user named are layers of such a
model needs the model's modules, so that check is in harness/model/preflight.py (`harness validate`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

from harness import paths
from harness.config.search import option_files

NAMED_GROUPS = ("model", "method", "data", "eval", "tracker")  # groups whose options carry a `name`

# config.json keys that hold a model's context length, most common first (GPT-2: n_positions)
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length", "max_seq_len")


def overridden(overrides: list[str] | tuple[str, ...]) -> set[str]:
    """The keys the command line sets (`+`/`++`/`~` prefixes dropped)."""
    return {ov.lstrip("+~").partition("=")[0] for ov in overrides if "=" in ov}


def safe_name(text: str, fallback: str) -> str:
    """A run-name-safe version of text (harness/paths.py check_name): other characters become '-'."""
    s = re.sub(r"[^A-Za-z0-9._+=-]+", "-", text)
    s = re.sub(r"\.{2,}", ".", s)
    s = re.sub(r"^[^A-Za-z0-9]+", "", s)[:100].rstrip(".-")
    return s or fallback


def is_local_path(path: str) -> bool:
    """A model.path meant as a directory on this machine (else a Hub id `owner/name`)."""
    return path.startswith(("/", "./", "../", "~")) or path.count("/") > 1 or Path(path).expanduser().exists()


def context_from_config(conf: dict) -> int | None:
    for section in (conf, conf.get("text_config") or {}):
        for key in CONTEXT_KEYS:
            if isinstance(section.get(key), int) and section[key] > 0:
                return section[key]
    return None


def model_config_json(path: str, revision: str = "") -> tuple[dict | None, str]:
    """A model's config.json as a dict, from a local directory or the Hugging Face cache (downloading
    the one small file when the Hub may be reached); (None, why not) when it cannot be read."""
    if is_local_path(path):
        p = Path(path).expanduser() / "config.json"
        if not p.parent.is_dir():
            return None, f"{p.parent} is not a directory"
        if not p.is_file():
            return None, f"{p.parent} has no config.json (a model directory holds config.json, weights and tokenizer files)"
        try:
            return json.loads(p.read_text(encoding="utf-8")), ""
        except (OSError, ValueError) as exc:
            return None, f"{p} cannot be read: {exc}"
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(path, "config.json", revision=revision or None)
    if not isinstance(cached, str):
        if constants.HF_HUB_OFFLINE:
            return None, "its config.json is not in the Hugging Face cache and HF_HUB_OFFLINE=1"
        try:
            cached = hf_hub_download(path, "config.json", revision=revision or None, etag_timeout=10)
        except Exception as exc:  # no network, unknown id, gated model: say what to set instead
            return None, f"its config.json could not be fetched from the Hub ({type(exc).__name__})"
    try:
        return json.loads(Path(cached).read_text(encoding="utf-8")), ""
    except (OSError, ValueError) as exc:
        return None, f"{cached} cannot be read: {exc}"


def _model_by_path(m: dict, keys: set[str]) -> list[str]:
    path = str(m.get("path") or "")
    if "model.path" not in keys:
        return []
    if m.get("source") != "hub":
        return [f"model.path={path} is set but model.source={m.get('source')} does not read it (model={m.get('name')}); "
                "add model.source=hub to load that Hub id or directory."]
    if "model.name" not in keys:
        m["name"] = safe_name(PurePosixPath(path.rstrip("/")).name, "model")
    # what the default option knew about ITS model says nothing about this one
    for key, value in (("linear_modules", []), ("lora_target_modules", ["all-linear"]), ("licence", ""),
                       ("tested_here", False)):
        if f"model.{key}" not in keys:
            m[key] = value
    local = is_local_path(path)
    if "model.context_length" in keys and not local:
        return []  # nothing else to learn from the Hub
    conf, why = model_config_json(path, str(m.get("revision") or ""))
    if conf is None and local:
        return [f"model.path={path}: {why}. Give a directory saved with save_pretrained(), or a Hub id owner/name."]
    if "model.context_length" in keys:
        return []
    length = context_from_config(conf) if conf else None
    if length is None:
        what = why or f"its config.json names no context length ({', '.join(CONTEXT_KEYS[:2])})"
        fetch = "" if local else f", or download its config once: huggingface-cli download {path} config.json"
        return [f"model.path={path}: the model's context length is unknown: {what}. Set model.context_length=N "
                f"(its max_position_embeddings){fetch}"]
    m["context_length"] = length
    return []


def data_name(path: str) -> str:
    """A data set's name from its path: the file's stem, a directory's or a Hub id's last component."""
    last = PurePosixPath(path.rstrip("/")).name
    local = paths.resolve_data_path(path)
    if Path(last).suffix.lower() in paths.DATA_FILE_TYPES or local.is_file():
        last = Path(last).stem
    return safe_name(last, "data")


def _names_match_choices(tree: dict, choices: dict, keys: set[str], renamed: set[str]) -> list[str]:
    """A group option whose YAML says another name (a copied file) would record its runs under that name."""
    errors = []
    for group in NAMED_GROUPS:
        choice = choices.get(group)
        name = (tree.get(group) or {}).get("name")
        if not choice or group in renamed or f"{group}.name" in keys or name in (None, choice):
            continue
        where = option_files(group).get(choice, f"{group}/{choice}.yaml")
        errors.append(f"{group}={choice}: {where} says name: {name}, so its runs would be recorded as {name}. "
                      f"Set name: {choice} in that file (or pass {group}.name={choice}).")
    return errors


def apply(tree: dict, overrides: list[str] | tuple[str, ...], choices: dict) -> list[str]:
    """Name (and size) a model or data set given by path; check that each chosen option is called by its
    own name. Changes tree in place; returns the problems, each with its fix."""
    keys = overridden(overrides)
    errors = _model_by_path(tree["model"], keys) if isinstance(tree.get("model"), dict) else []
    renamed = {g for g in ("model", "data") if f"{g}.path" in keys}
    data = tree.get("data")
    if isinstance(data, dict) and "data.path" in keys and "data.name" not in keys and data.get("path"):
        data["name"] = data_name(str(data["path"]))
    return errors + _names_match_choices(tree, choices, keys, renamed)
