"""How the report writes numbers and strings: significant digits, p-values, CSV cells that a spreadsheet will
not run as formulas, and Markdown that a viewer will not render as HTML. (What a metric means, its
direction and scale, comes from the run records: harness/report/meta.py.)
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re


# ------------------------------------------------------------------------------- small helpers
def fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—" if v is None else str(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if abs(v) >= 1e4 or (abs(v) >= 1000 and float(v).is_integer()) or abs(v) >= 10 ** digits:
        return f"{v:,.0f}"
    if abs(v) >= 1000:
        return f"{v:,.1f}"
    return f"{v:.{digits}g}"


def fmt_p(p: float) -> str:
    if not isinstance(p, (int, float)) or not math.isfinite(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"= {p:.3f}" if p < 0.1 else f"= {p:.2f}"


def _num(v) -> float:
    """Record value -> float (non-finite floats are stored as the strings nan/inf by harness.atomic)."""
    if isinstance(v, bool) or v is None:
        return math.nan
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(v)
    return math.nan


def csv_safe(v) -> str:
    """A CSV cell a spreadsheet will not run as a formula. A finite int or float in the data is written as a
    number (-0.25 stays a number); any other value is text, and text that starts with = + - @ tab or CR
    (a formula to Excel and LibreOffice, "-0.25" and "-2+3" included) gets a leading quote."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return str(v)
    s = "" if v is None else (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v))
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


def axis_label(axes: dict, varying: list[str]) -> str:
    """Short name of a configuration: the values of the axes that vary between configurations."""
    parts = []
    for k in varying:
        if k in axes:
            v = axes[k]
            parts.append(str(v) if "." not in k else f"{k.split('.')[-1]}={fmt(v) if isinstance(v, float) else v}")
    return " ".join(parts) or ", ".join(f"{k}={v}" for k, v in sorted(axes.items())) or "(no axes)"


def timestamp() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch else _dt.datetime.now(_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


_MD_TAG = re.compile(r"<(?=[A-Za-z/!?])")  # what can open an HTML tag, comment or autolink (CommonMark)


_MD_ENTITY = re.compile(r"&(?=[#A-Za-z0-9])")  # what can start an entity reference


_MD_SPECIAL = re.compile(r"[\\`*\[\]|~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")  # an intraword _ is no emphasis


def md_escape(s) -> str:
    """Any string from a run record, a config or a model output as inert Markdown text, in a table cell or
    not: no raw HTML (a `<` that could open a tag becomes &lt;, an `&` that could start an entity &amp;,
    every `>` &gt;), Markdown's \\ ` * [ ] | ~ and a non-intraword _ behind a backslash (no code, emphasis,
    links, strikethrough or table breaks), newlines as spaces; `p < 0.001` and `best_val_loss` stay as
    they are. Never put the result inside a `code span` (escapes show literally there). None is "—"."""
    if s is None:
        return "—"
    s = _MD_TAG.sub("&lt;", _MD_ENTITY.sub("&amp;", str(s))).replace(">", "&gt;")
    s = _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), s)
    return s.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def cell_text(cell: dict | None, row_n: int) -> str:
    if not cell:
        return "—"
    s = fmt(cell["mean"])
    if math.isfinite(cell.get("lo", math.nan)) and cell["hi"] > cell["lo"]:
        s += f" ± {fmt((cell['hi'] - cell['lo']) / 2, 2)}"
    if cell["n"] != row_n:
        s += f" (n={cell['n']})"
    return s
