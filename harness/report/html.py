"""report.html for `harness report`: one self-contained page (inline CSS, figures as base64 PNG).

`render(model, figs, stamp)` turns the model built by harness.report.build into HTML. The page
loads nothing from outside and runs no script: a Content-Security-Policy allows only inline
styles and data: images, and every string from a run record, a config or a model output goes
through html.escape, so a generated `<script>` shows as text. Deterministic apart from the one
"Generated:" line.
"""

from __future__ import annotations

import base64
import json
import math
from html import escape

from harness.report.build import COST
from harness.report.fmt import cell_text, fmt, metric_direction

CSS = """
:root{--fg:#1d2433;--muted:#5b6475;--line:#e3e7ee;--bg:#f6f8fb;--card:#fff;--accent:#2456c9;--good:#137a3a;
--goodbg:#e3f5e9;--bad:#a3261b;--badbg:#fbe6e3;--warnbg:#fff5d6;--warn:#7a5600}
*{box-sizing:border-box}body{margin:0;font:14px/1.5 -apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;
color:var(--fg);background:var(--bg)}
header{background:linear-gradient(135deg,#1d2f6f,#2456c9);color:#fff;padding:28px 40px 22px}
header h1{margin:0 0 4px;font-size:26px;font-weight:650}header p{margin:2px 0;opacity:.88}
nav{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line);padding:8px 40px;
display:flex;flex-wrap:wrap;gap:4px 16px;font-size:13px}nav a{color:var(--accent);text-decoration:none}
main{padding:8px 40px 60px;max-width:1500px}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 22px;margin:18px 0;
box-shadow:0 1px 2px rgba(20,30,60,.04)}
h2{margin:0 0 10px;font-size:18px}h3{font-size:15px;margin:16px 0 6px}
.note{color:var(--muted);font-size:12.5px;margin:4px 0 10px}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{flex:1 1 170px;background:var(--bg);border:1px solid var(--line);
border-radius:8px;padding:10px 14px}.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:20px;font-weight:650;overflow-wrap:anywhere}.card.long .v{font-size:15px}
td.cfg{white-space:nowrap;position:sticky;left:0;background:#fff;z-index:1}tr.baseline td.cfg{background:#f7f4ff}
.tablewrap{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:5px 9px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#f0f3f8;font-weight:600;position:sticky;top:0;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.baseline td{background:#f7f4ff;font-style:italic}tr:hover td{background:#f3f7ff}
td.best{background:var(--goodbg);font-weight:700;color:var(--good)}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;white-space:nowrap}
.b-better{background:var(--goodbg);color:var(--good)}.b-worse{background:var(--badbg);color:var(--bad)}
.b-ns{background:#eceff4;color:var(--muted)}.b-warn{background:var(--warnbg);color:var(--warn)}
ul.verdicts{list-style:none;padding:0;margin:0}ul.verdicts li{padding:4px 0;border-bottom:1px dashed var(--line)}
.warn{background:var(--warnbg);border-color:#f0d98a}.warn li{margin:3px 0}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:18px}
figure.wide{grid-column:1/-1}figure{margin:0;border:1px solid var(--line);border-radius:8px;padding:10px;background:#fff}
figure img{max-width:100%;height:auto;display:block;margin:auto}figcaption{color:var(--muted);font-size:12.5px;margin-top:6px}
pre,code,.mono{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px}
pre{white-space:pre-wrap;word-break:break-word;background:var(--bg);padding:8px;border-radius:6px;margin:0}
ul.findings{margin:12px 0 0;padding-left:20px;font-size:14.5px}ul.findings li{margin:3px 0}
details summary{cursor:pointer;color:var(--accent)}.status{font-weight:600}
.s-failed,.s-diverged,.s-unreadable{color:var(--bad)}.s-pruned,.s-interrupted,.s-running{color:var(--warn)}
"""


def e(s) -> str:
    return escape("" if s is None else str(s), quote=True)


def _table(head: list[str], rows: list[list[str]], cls: str = "", tid: str = "", num_from: int = 99) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = []
    for r in rows:
        row_cls, cells = (r[0], r[1:]) if r and isinstance(r[0], tuple) else ("", r)
        if isinstance(row_cls, tuple):
            row_cls = row_cls[0]
        tds = "".join(c if c.startswith("<td") else f"<td{' class=num' if i >= num_from else ''}>{c}</td>"
                      for i, c in enumerate(cells))
        body.append(f"<tr{f' class={row_cls}' if row_cls else ''}>{tds}</tr>")
    idattr = f' id="{tid}"' if tid else ""
    return f'<div class="tablewrap"><table{idattr} class="{cls}"><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _config_table(m: dict, cols: list[tuple[str, str]], tid: str) -> str:
    rows = []
    for c in m["configs"]:
        n = len(c.runs)
        ref = ' <span class="badge b-ns">reference</span>' if c.baseline else ""
        cells = [f"<td class=cfg>{e(c.label)}{ref}</td>", f"<td class=num>{n}</td>"]
        for key, _ in cols:
            cell = c.cells.get(key)
            best = (not c.baseline and key in m["best_marks"] and cell and cell["mean"] == m["best_marks"][key])
            cells.append(f"<td class=\"num{' best' if best else ''}\">{e(cell_text(cell, n))}{' ★' if best else ''}</td>")
        rows.append([("baseline",) if c.baseline else ("",)] + cells)
    head = ["configuration", "n"] + [f"{e(h)} {_arrow(k)}" for k, h in cols]
    return _table(head, rows, tid=tid)


def _arrow(metric: str) -> str:
    d = metric_direction(metric)
    return {"max": "<span title='higher is better'>↑</span>", "min": "<span title='lower is better'>↓</span>"}.get(d, "")


def _badge(row: dict) -> str:
    v = row["verdict"]
    if ", significant" in v:
        cls = "b-better" if "better, significant" in v else "b-worse"
        return f'<span class="badge {cls}">{"better" if cls == "b-better" else "worse"}</span>'
    if "not tested" in v:
        return '<span class="badge b-warn">not tested</span>'
    return '<span class="badge b-ns">n.s.</span>'


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


def _json_block(obj, depth: int = 0) -> str:
    """Generic rendering of a JSON document whose exact shape the report does not fix (human.json,
    docs/human-eval.md): scalars as a key/value table, lists of records and mappings of records as
    tables (values like {"mean", "ci95"} in one cell), anything else as sub-sections or escaped JSON."""
    if isinstance(obj, list) and obj and all(isinstance(x, dict) and all(_cellable(v) for v in x.values()) for x in obj):
        keys = list(dict.fromkeys(k for x in obj for k in x))
        return _table([e(k) for k in keys], [[e(_cell(x.get(k))) for k in keys] for x in obj])
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) and v and all(_cellable(x) for x in v.values())
                                             for v in obj.values()) and not all(_cellable(v) for v in obj.values()):
        keys = list(dict.fromkeys(k for v in obj.values() for k in v))
        return _table([""] + [e(k) for k in keys], [[e(r)] + [e(_cell(v.get(k))) for k in keys] for r, v in sorted(obj.items())])
    if isinstance(obj, dict) and depth < 4:
        flat = [(k, v) for k, v in obj.items() if _cellable(v)]
        out = _table(["key", "value"], [[e(k), e(_cell(v))] for k, v in flat]) if flat else ""
        for k, v in obj.items():
            if not _cellable(v):
                out += f"<h3>{e(k)}</h3>{_json_block(v, depth + 1)}"
        return out
    if isinstance(obj, list) and not obj:
        return "<p>(none)</p>"
    return f"<pre>{e(json.dumps(obj, indent=2, sort_keys=True, default=str))}</pre>"


def render(m: dict, figs: list, stamp: str) -> str:
    sections: list[tuple[str, str, str]] = []  # (id, title, html)
    counts = m["status_counts"]
    not_ok = sum(v for k, v in counts.items() if k not in ("completed", "baseline"))
    best = next((c for c in m["configs"] if not c.baseline), None)
    best_cell = best.cells.get(m["primary"]) if best else None
    cards = [("runs", m["n_runs"]), ("completed", counts.get("completed", 0)), ("did not complete", not_ok),
             ("configurations", sum(1 for c in m["configs"] if not c.baseline)),
             ("best configuration", m["best"] or "—"),
             (f"best {m['primary']}", cell_text(best_cell, len(best.runs)) if best_cell else "—")]
    summary = '<div class="cards">' + "".join(
        f'<div class="card{" long" if len(str(v)) > 14 else ""}"><div class="k">{e(k)}</div><div class="v">{e(v)}</div></div>'
        for k, v in cards) + "</div>"
    summary += (f'<p class="note">Primary metric <code>{e(m["primary"])}</code> ({"higher" if m["direction"] == "max" else "lower"} is better). '
                f'Statuses: {e(", ".join(f"{v} {k}" for k, v in counts.items()))}.</p>')
    if m["findings"]:
        summary += '<ul class="findings">' + "".join(f"<li>{e(f)}</li>" for f in m["findings"]) + "</ul>"
    sections.append(("summary", "Summary", summary))
    if m["warnings"]:
        sections.append(("warnings", "⚠ Warnings", "<ul>" + "".join(f"<li>{e(w)}</li>" for w in m["warnings"]) + "</ul>"))
    sections.append(("leaderboard", "Leaderboard",
                     '<p class="note">One row per configuration (axes without the seed). Mean ± 95% CI half-width '
                     "(t-distribution) over seeds; n = runs. ★ best trained configuration per column; the base model is a reference row.</p>"
                     + _config_table(m, [(q, q) for q in m["quality"]], "leaderboard-table")))
    sections.append(("cost", "Cost", '<p class="note">What each configuration costs: trainable parameters, peak memory, '
                     "training wall time, throughput and adapter size on disk (mean ± 95% CI over seeds).</p>"
                     + _config_table(m, [(k, h) for k, h in COST if k in m["cost"]], "cost-table")))
    cmp_rows = m["comparisons"]
    sig = ('<p class="note">Each configuration against the best one on the same metric, and against the base model, '
           f"paired on evaluation item ids. Accuracy: McNemar's exact test; BLEU/chrF/ROUGE: paired {e(m['paired_test'])} of "
           "per-item (sentence-level) scores, so corpus BLEU is approximated by the mean sentence BLEU. "
           f"p-values Holm-corrected over all {len(cmp_rows)} comparisons shown; significant at 0.05. Points = metric units "
           "(accuracy and ROUGE × 100).</p>")
    if cmp_rows:
        groups: dict[str, list[dict]] = {}
        for r in cmp_rows:
            groups.setdefault(f"{r['suite']} · {r['metric']} — {r['test']}", []).append(r)
        for title, rows_ in groups.items():
            sig += f"<h3>{e(title)}</h3>" + '<ul class="verdicts">' + "".join(f"<li>{_badge(r)} {e(r['verdict'])}</li>" for r in rows_) + "</ul>"
        detail = [[e(r["suite"]), e(r["metric"]), e(r["a"]), e(r["kind"].replace("vs ", "")), e(r["b"]), e(r["test"]),
                   e(fmt(r["delta"])), e("—" if not math.isfinite(r["ci"][0]) else f"[{fmt(r['ci'][0])}, {fmt(r['ci'][1])}]"),
                   e(fmt(r["p"], 3)), e(fmt(r.get("p_holm"), 3)), e(r["n_items"]), e(r["run_pairs"]), e(r["unmatched"])]
                  for r in cmp_rows]
        sig += ("<details><summary>All numbers</summary>" + _table(
            ["suite", "metric", "configuration", "against", "reference", "test", "Δ", "95% CI", "p", "p (Holm)", "items",
             "run pairs", "unpaired items"], detail, tid="comparisons-table", num_from=6) + "</details>")
    else:
        sig += "<p>No per-item samples to pair (no samples/&lt;suite&gt;.jsonl in the compared runs).</p>"
    sections.append(("significance", "Is the difference real?", sig))
    if figs:
        fh = '<div class="figs">'
        for f in figs:
            b64 = base64.b64encode(f.png).decode("ascii")
            fh += (f'<figure id="fig-{e(f.name)}"{" class=wide" if f.wide else ""}><img alt="{e(f.title)}" src="data:image/png;base64,{b64}">'
                   f"<figcaption><b>{e(f.title)}.</b> {e(f.caption)}</figcaption></figure>")
        sections.append(("figures", "Figures", fh + "</div>"))
    if m["samples"]:
        labels = [lbl for lbl, _ in m["samples"][0]["outputs"]]
        rows = [[e(s["suite"]), f"<td class=mono>{e(s['id'])}</td>", e(s["prompt"]), e(s["reference"])] + [e(o) for _, o in s["outputs"]]
                for s in m["samples"]]
        sections.append(("samples", "Sample outputs", '<p class="note">First items of each generation suite: the best '
                         "configuration and the base model (lowest-seed run). Shown as text.</p>"
                         + _table(["suite", "id", "prompt", "reference"] + [e(x) for x in labels], rows, tid="samples-table")))
    if m["references"]:
        rows = []
        for r in m["references"]:
            cls = {"within tolerance": "b-better", "outside tolerance": "b-worse"}.get(r["status"], "b-ns")
            rows.append([e(r["metric"]), e(r["config"]), f"<td class=num>{e(fmt(r['measured']))}</td>",
                         f"<td class=num>{e(fmt(r['published']))}</td>", f"<td class=num>{e(fmt(r['tolerance']))}</td>",
                         f'<span class="badge {cls}">{e(r["status"])}</span>', e(r["source"]), e(r["note"])])
        sections.append(("references", "Published results", '<p class="note">Measured (mean over seeds) against published '
                         "numbers; “reference only” when no tolerance is given.</p>"
                         + _table(["metric", "configuration", "measured", "published", "tolerance", "status", "source", "note"], rows)))
    if m["human"]:
        sections.append(("human", "Human evaluation", "".join(f'<p class="note">From <code>{e(p)}</code></p>{_json_block(d)}' for p, d in m["human"])))
    if m["failed"]:
        rows = [[f"<td class=mono>{e(r.path)}</td>", f'<span class="status s-{e(r.status)}">{e(r.status)}</span>',
                 e(r.summary.get("trial", "")), e(r.error or r.summary.get("reason", "")), e(fmt(r.summary.get("pruned_at_step")))]
                for r in m["failed"]]
        fl = _table(["run", "status", "trial", "reason", "pruned at step"], rows, tid="failed-table")
    else:
        fl = "<p>None: every run completed.</p>"
    sections.append(("failed", f"Runs that did not complete ({len(m['failed'])})", fl))
    prov = m["provenance"]
    prow = [[e(k), e(", ".join(v)) or "—"] for k, v in prov.items() if k != "packages"]
    prow += [[e(f"package {k}"), e(", ".join(v)) + (' <span class="badge b-warn">differs between runs</span>' if len(v) > 1 else "")]
             for k, v in prov["packages"].items()]
    sections.append(("provenance", "Provenance", _table(["what", "value"], prow)))

    nav = "".join(f'<a href="#{i}">{e(t)}</a>' for i, t, _ in sections)
    body = "".join(f'<section id="{i}"{" class=warn" if i == "warnings" else ""}><h2>{e(t)}</h2>{h}</section>' for i, t, h in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>Report: {e(m['name'])}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>Report: {e(m['name'])}</h1><p>What won, by how much, at what cost, and how sure we are.</p>\n"
        f"<p class=\"stamp\">Generated: {e(stamp)}</p>\n</header>\n<nav>{nav}</nav>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
