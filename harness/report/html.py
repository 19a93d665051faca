"""report.html for `harness report`: one self-contained page (inline CSS and script, figures as base64 PNG
and interactive SVG drawn by the script).

`render(model, figs, stamp)` turns the model built by harness.report.build into HTML with the Jinja2
templates in templates/ (report.html.j2: the page; sections.html.j2: one macro per section;
macros.html.j2: tables and badges; report.css.j2: the inline style sheet; report.js.j2: the one script,
which sorts, filters and folds the leaderboard, draws the plots with hover and zoom and shows two
configurations item by item). The page loads nothing from outside. Its Content-Security-Policy allows
inline styles, data: images and exactly one script, named by its sha256 (`script_hash`), so a `<script>`
or an `onerror=` that reached the page any other way would not run. The template environment
autoescapes, so every string from a run record, a config or a model output is escaped by Jinja2; the data
the script reads is `tojson` (`<`, `>`, `&`, `'` as \\u escapes: no text can close its `<script>` block)
and the script writes it with textContent only. Nothing is marked safe: this module hands the templates
plain values (text, numbers, lists), never markup. Deterministic apart from the one "Generated:" line.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
from pathlib import Path

import jinja2

from harness.report.build import COST
from harness.report.explore import leaderboard
from harness.report.fmt import cell_text, fmt, fmt_metric

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _blank_none(value):
    """What `{{ x }}` prints: None as nothing (not "None"), as the report always showed it."""
    return "" if value is None else value


def png_data_uri(png: bytes) -> str:
    """A figure as a data: URI (the CSP allows data: images only). Plain text: base64 has nothing to escape."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _finite(obj):
    """The page's JSON data with non-finite floats as null (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def page_json(obj, **kwargs) -> str:
    """JSON for the page's data block (Jinja2's `tojson` then replaces <, >, & and ' with \\u escapes):
    compact, keys sorted, non-ASCII text as is, NaN as null."""
    return json.dumps(_finite(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=True)


@functools.lru_cache(maxsize=None)
def environment() -> jinja2.Environment:
    """The template environment: autoescape on for every template, undefined names are errors."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True, finalize=_blank_none)
    env.filters.update(fmt=fmt, fmt_metric=fmt_metric, png_data_uri=png_data_uri)
    env.globals.update(cell_text=cell_text)
    env.policies["json.dumps_function"] = page_json
    return env


@functools.lru_cache(maxsize=None)
def script_hash() -> str:
    """The CSP source that allows the page's one script: sha256 of report.js.j2 as the page includes it."""
    js = environment().get_template("report.js.j2").render()
    return "sha256-" + base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode("ascii")


_SCALAR = (str, int, float, bool, type(None))
_CI_KEYS = ("value", "mean", "score", "elo")


def _cellable(v) -> bool:
    """A value that fits in one table cell: a scalar, a short list of scalars, or {value|mean|score, ci95, ...}."""
    if isinstance(v, _SCALAR):
        return True
    if isinstance(v, list):
        return all(isinstance(x, _SCALAR) for x in v)
    if isinstance(v, dict):
        return any(k in v for k in _CI_KEYS) and all(_cellable(x) and not isinstance(x, dict) for x in v.values())
    return False


def _cell(v) -> str:
    if isinstance(v, float):
        return fmt(v)
    if isinstance(v, list):
        return "[" + ", ".join(fmt(x) if isinstance(x, float) else str(x) for x in v) + "]"
    if isinstance(v, dict):
        main = next(k for k in _CI_KEYS if k in v)
        extra = ", ".join(f"{k} {_cell(x)}" for k, x in sorted(v.items()) if k not in (main, "ci95"))
        return f"{_cell(v[main])}" + (f" {_cell(v['ci95'])}" if "ci95" in v else "") + (f" ({extra})" if extra else "")
    return "" if v is None else str(v)


def _table_block(head: list, rows: list[list]) -> dict:
    return {"kind": "table", "head": [str(h) for h in head], "rows": rows}


def _json_blocks(obj, depth: int = 0) -> list[dict]:
    """Generic layout of a JSON document whose exact shape the report does not fix (human.json,
    docs/human-eval.md): scalars as a key/value table, lists of records and mappings of records as
    tables (values like {"mean", "ci95"} in one cell), anything else as sub-sections or JSON text.
    Blocks of plain text for macros.html.j2's json_blocks: {"kind": "table"|"heading"|"pre"|"none", ...}."""
    if isinstance(obj, list) and obj and all(isinstance(x, dict) and all(_cellable(v) for v in x.values()) for x in obj):
        keys = list(dict.fromkeys(k for x in obj for k in x))
        return [_table_block(keys, [[_cell(x.get(k)) for k in keys] for x in obj])]
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) and v and all(_cellable(x) for x in v.values())
                                             for v in obj.values()) and not all(_cellable(v) for v in obj.values()):
        keys = list(dict.fromkeys(k for v in obj.values() for k in v))
        return [_table_block([""] + keys, [[str(r)] + [_cell(v.get(k)) for k in keys] for r, v in sorted(obj.items())])]
    if isinstance(obj, dict) and depth < 4:
        flat = [(k, v) for k, v in obj.items() if _cellable(v)]
        out = [_table_block(["key", "value"], [[str(k), _cell(v)] for k, v in flat])] if flat else []
        for k, v in obj.items():
            if not _cellable(v):
                out += [{"kind": "heading", "text": str(k)}] + _json_blocks(v, depth + 1)
        return out
    if isinstance(obj, list) and not obj:
        return [{"kind": "none"}]
    return [{"kind": "pre", "text": json.dumps(obj, indent=2, sort_keys=True, default=str)}]


def _cards(m: dict) -> list[tuple[str, object]]:
    """The summary cards: (label, value)."""
    counts = m["status_counts"]
    not_ok = sum(v for k, v in counts.items() if k not in ("completed", "baseline"))
    top = next((c for c in m["configs"] if not c.baseline), None)
    top_cell = top.cells.get(m["primary"]) if top else None
    scale = m["scales"].get(m["primary"])
    return [("runs", fmt(m["n_runs"])), ("completed", fmt(counts.get("completed", 0))), ("did not complete", fmt(not_ok)),
            ("configurations", fmt(sum(1 for c in m["configs"] if not c.baseline))),
            ("best configuration", m["best"] or m["verdict"]["status"]),
            (f"top {m['primary']}", cell_text(top_cell, len(top.runs), scale) if top_cell else "—")]


def _verdict_groups(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Comparisons grouped by suite, metric and test, in the order they come."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(f"{r['suite']} · {r['metric']} — {r['test']}", []).append(r)
    return list(groups.items())


def _comparison_row(r: dict) -> list[str]:
    """One row of the "All numbers" table, as text."""
    ci = "—" if not math.isfinite(r["ci"][0]) else f"[{fmt(r['ci'][0])}, {fmt(r['ci'][1])}]"
    return [r["suite"], r["metric"], r["a"], r["kind"].replace("vs ", ""), r["b"], r["test"], fmt(r["delta"]), ci,
            fmt(r["p"], 3), fmt(r.get("p_holm"), 3), r["n_items"], r["run_pairs"], r["unmatched"]]


def _context(m: dict, figs: list, stamp: str) -> dict:
    """What report.html.j2 renders: the model as it is plus the few values shaped here."""
    plot_ids: dict[str, list[str]] = {}
    for p in m["explore"]["plots"]:
        plot_ids.setdefault(p["fig"], []).append(p["id"])
    return {
        "m": m, "stamp": stamp, "figs": figs, "cards": _cards(m), "script_hash": script_hash(),
        "lb": leaderboard(m, m["varying"], dict(COST)), "plot_ids": plot_ids,
        "contamination_rows": [[t["suite"], r["config"], r["train_data"], f"{fmt(100 * r['share'], 3)}%",
                                f"{r['contaminated']} / {r['items']}", r["too_short"]]
                               for t in m["contamination"] for r in t["rows"]],
        "verdict_groups": _verdict_groups(m["comparisons"]),
        "comparison_rows": [_comparison_row(r) for r in m["comparisons"]],
        "human_blocks": [(p, _json_blocks(d)) for p, d in m["human"]],
    }


def render(m: dict, figs: list, stamp: str) -> str:
    return environment().get_template("report.html.j2").render(_context(m, figs, stamp))
