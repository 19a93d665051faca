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


# ------------------------------------------------------------------------------- numbers
def sci(v: float, sig: int = 3) -> str:
    """Compact scientific notation with `sig` significant digits: 1522704342 -> "1.52e9", 1.2e-05 -> "1.2e-5"."""
    mant, exp = f"{v:.{max(sig, 1) - 1}e}".split("e")
    if "." in mant:
        mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def fmt(v, digits: int = 4) -> str:
    """A number for a reader: `digits` significant digits; thousands grouped from 1,000 to below a million;
    a million and above, or below 0.001, in compact scientific notation (1.52e9, 3.1e-5), never a
    ten-digit integer. None is "—"; nan and inf are spelled out; anything else is its text."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—" if v is None else str(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    a = abs(v)
    if a >= 1e6:
        return sci(v, min(digits, 3))
    if a >= 1e4 or (a >= 1000 and float(v).is_integer()) or a >= 10 ** digits:  # (123.4 at 2 digits: 123)
        return f"{v:,.0f}"
    if a >= 1000:
        return f"{v:,.1f}"
    if 0 < a < 1e-3:
        return sci(v, min(digits, 3))
    s = f"{v:.{digits}g}"
    return f"{v:,.0f}" if "e" in s else s  # 99.9 at 2 digits rounds up to 100, not "1e+02"


DECIMALS = {"binary": 3, "fraction": 3, "percent": 2}  # metric scale -> decimals shown; "raw" and unknown: fmt()


def fmt_metric(v, scale: str | None, digits: int = 4) -> str:
    """A metric value formatted for its scale (harness/run/metric_meta.py SCALES): 0-1 values (binary,
    fraction) with 3 decimals (0.412), 0-100 values (percent: BLEU, chrF) with 2 (35.21), anything else
    (raw: perplexity, loss, seconds, bytes, counts) by fmt(): 4 significant digits, 1.52e9 for the huge.
    A value too small for the fixed decimals keeps 2 significant digits (0.0041 rather than 0.004)."""
    d = DECIMALS.get(scale or "")
    if d is None or not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return fmt(v, digits)
    if v != 0 and abs(v) < 10 ** (1 - d):
        return fmt(v, 2)
    if abs(v) >= 1e6:
        return fmt(v, digits)
    return f"{v:,.{d}f}"


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


def half_width(cell: dict, scale: str | None) -> str:
    """The 95% CI half-width of a leaderboard cell, formatted like its mean ("" without an interval)."""
    if not (math.isfinite(cell.get("lo", math.nan)) and cell["hi"] > cell["lo"]):
        return ""
    hw = (cell["hi"] - cell["lo"]) / 2
    return fmt_metric(hw, scale) if scale in DECIMALS else fmt(hw, 2)


def cell_text(cell: dict | None, row_n: int, scale: str | None = None) -> str:
    """A leaderboard cell: mean ± 95% CI half-width, formatted for the metric's scale, and (n=k) when only
    k of the configuration's row_n runs have the metric."""
    if not cell:
        return "—"
    s = fmt_metric(cell["mean"], scale)
    hw = half_width(cell, scale)
    if hw:
        s += f" ± {hw}"
    if cell["n"] != row_n:
        s += f" (n={cell['n']})"
    return s
