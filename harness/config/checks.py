"""Structure and type checks of a composed config tree against the schema dataclasses, and the
dict -> dataclass conversion; one "Did you mean ...?" for every unknown name.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

from harness.config.schema import RunConfig


# ------------------------------------------------------------------------ structure and types
def did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is typing.Union:
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    return True


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_structure(tree: dict, schema: type, prefix: str = "") -> list[str]:
    """Every unknown key and wrong type under `tree`, as messages naming key, value and fix."""
    errors: list[str] = []
    hints = typing.get_type_hints(schema)
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            errors.append(
                f"{dotted}: unknown key (value {value!r}).{did_you_mean(key, hints)}"
                f" Allowed keys under {prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(hints))}"
            )
            continue
        tp = hints[key]
        if not _type_ok(value, tp):
            errors.append(f"{dotted}={value!r}: expected {_type_name(tp)}, got {type(value).__name__}")
            continue
        sub = tp
        if typing.get_origin(tp) is typing.Union:
            sub = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
        if dataclasses.is_dataclass(sub) and isinstance(value, dict):
            errors.extend(check_structure(value, sub, dotted + "."))
        elif typing.get_origin(sub) is list and isinstance(value, (list, tuple)):
            (item_tp,) = typing.get_args(sub) or (Any,)
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item_tp):
                    if not isinstance(item, dict):
                        errors.append(f"{dotted}[{i}]: expected a mapping of {item_tp.__name__} fields")
                    else:
                        errors.extend(check_structure(item, item_tp, f"{dotted}[{i}]."))
                elif not _type_ok(item, item_tp):
                    errors.append(f"{dotted}[{i}]={item!r}: expected {_type_name(item_tp)}")
    for key, tp in hints.items():
        if key in tree and tree[key] == "???":
            errors.append(f"{prefix}{key}: required but not set")
    return errors


def _build(schema: type, tree: dict) -> Any:
    """Dict -> dataclass instance (after check_structure passed)."""
    hints = typing.get_type_hints(schema)
    kwargs = {}
    for key, value in tree.items():
        tp = hints[key]
        sub = tp
        if typing.get_origin(tp) is typing.Union:
            sub = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
        if dataclasses.is_dataclass(sub) and isinstance(value, dict):
            value = _build(sub, value)
        elif typing.get_origin(sub) is list and isinstance(value, (list, tuple)):
            (item_tp,) = typing.get_args(sub) or (Any,)
            if dataclasses.is_dataclass(item_tp):
                value = [_build(item_tp, v) for v in value]
            else:
                value = [float(v) if item_tp is float else v for v in value]
        elif sub is float and isinstance(value, int):
            value = float(value)
        kwargs[key] = value
    return schema(**kwargs)


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)
