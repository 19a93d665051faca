"""report.md, results.csv and results.json from the report model (harness/report/build.py).
"""

from __future__ import annotations

import csv
import io

from harness.report.build import COST, tolerance_basis
from harness.report.fmt import cell_text, csv_safe, fmt, fmt_metric
from harness.report.fmt import md_escape as e  # every value below that is not a fixed string goes through e()


def to_csv(header: list[str], rows: list[dict]) -> str:
    """results.csv: numbers as numbers, every other cell through csv_safe (no formulas). RFC 4180 line ends:
    with them the writer also quotes a cell holding a lone CR, which would otherwise end the row."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow([csv_safe(h) for h in header])
    for row in rows:
        w.writerow([csv_safe(row.get(h)) for h in header])
    return buf.getvalue()


def to_markdown(m: dict, figs: list, stamp: str) -> str:
    L = [f"# Report: {e(m['name'])}", "", f"Generated: {e(stamp)}", ""]
    counts = ", ".join(f"{e(v)} {e(k)}" for k, v in m["status_counts"].items())
    better = {"max": "higher is better", "min": "lower is better"}.get(m["direction"], "direction unknown")
    L += [f"{e(m['n_runs'])} runs ({counts}). Primary metric: {e(m['primary'])} ({better})."
          + (f" Best configuration: **{e(m['best'])}**." if m["best"] else ""), ""]
    L += [f"**Verdict:** {e(m['verdict']['text'])}", ""]
    if m["findings"]:
        L += ["## Key findings", ""] + [f"- {e(f)}" for f in m["findings"]] + [""]
    if m["warnings"]:
        L += ["## Warnings", ""] + [f"- ⚠ {e(w)}" for w in m["warnings"]] + [""]

    def table(cols: list[tuple[str, str]]):
        out = ["| configuration | n | " + " | ".join(e(h) for _, h in cols) + " |",
               "|---|---:|" + "---:|" * len(cols)]
        for c in m["configs"]:
            n = len(c.runs)
            cells = []
            for key, _ in cols:
                t = e(cell_text(c.cells.get(key), n, m["scales"].get(key)))
                if key in m["best_marks"] and c.cells.get(key, {}).get("mean") == m["best_marks"][key] and not c.baseline:
                    t = f"**{t}** ★"
                cells.append(t)
            out.append(f"| {e(c.label)}{' (reference)' if c.baseline else ''} | {n} | " + " | ".join(cells) + " |")
        return out

    L += ["## Leaderboard", "", "Mean ± 95% CI half-width (t-distribution) over seeds; ★ best per column (in the primary "
          "column only a best configuration the verdict names; ties are not starred).", ""]
    L += table([(q, q) for q in m["quality"]]) + [""]
    L += ["## Cost", ""] + table([(k, h) for k, h in COST if k in m["cost"]]) + [""]
    L += ["## Paired significance", "",
          f"Paired on evaluation item ids; Holm correction over all {len(m['comparisons'])} comparisons. "
          "Metrics with binary per-item values (accuracy, exact match): McNemar's exact test; others: the mean of "
          "per-item scores (sentence-level BLEU, not corpus BLEU). Points: 0-1 metrics × 100.", ""]
    L += [f"- {e(r['verdict'])}" for r in m["comparisons"]] + [""]
    L += ["## Figures", ""] + [f"![{e(f.title)}](figures/{f.name}.png)\n\n{e(f.caption)}\n" for f in figs]
    if m["samples"]:
        L += ["## Sample outputs", ""]
        for s in m["samples"]:
            L += [f"**{e(s['suite'])} {e(s['id'])}**: {e(s['prompt'])}", "",
                  f"- reference: {e(s['reference'])}"] + [f"- {e(lbl)}: {e(o)}" for lbl, o in s["outputs"]] + [""]
    if m["references"]:
        L += ["## Published results", "", "| metric | configuration | measured | published | tolerance | status | source | note |",
              "|---|---|---:|---:|---:|---|---|---|"]
        for r in m["references"]:
            scale = m["scales"].get(r["metric"])
            L += [f"| {e(r['metric'])} | {e(r['config'])} | {e(fmt_metric(r['measured'], scale))} | "
                  f"{e(fmt_metric(r['published'], scale))} | {e(fmt_metric(r['tolerance'], scale))}{e(tolerance_basis(r))} | {e(r['status'])} | "
                  f"{e(r['source'])} | {e(r['note'])} |"]
        L += [""]
    if m["contamination"]:
        L += ["## Contamination", "", "Share of each eval set's items that share a long word sequence with the configuration's "
              "training data (eval.json `contamination`; mean over the configuration's runs).", "",
              "| eval set | configuration | training data | share | contaminated / items | too short |",
              "|---|---|---|---:|---:|---:|"]
        L += [f"| {e(t['suite'])} | {e(r['config'])} | {e(r['train_data'])} | {e(fmt(100 * r['share'], 3))}% | "
              f"{e(r['contaminated'])} / {e(r['items'])} | {e(r['too_short'])} |" for t in m["contamination"] for r in t["rows"]] + [""]
    if m["human"]:
        L += ["## Human evaluation", ""] + [f"- {e(p)} (tables in report.html)" for p, _ in m["human"]] + [""]
    L += ["## Runs that did not complete", ""]
    if m["failed"]:
        L += ["| run | status | reason | pruned at step |", "|---|---|---|---:|"]
        L += [f"| {e(r.path)} | {e(r.status)} | {e(r.error or r.summary.get('reason', ''))} | {e(fmt(r.summary.get('pruned_at_step')))} |"
              for r in m["failed"]]
    else:
        L += ["None: every run completed."]
    L += ["", "## Provenance", ""]
    for k, v in m["provenance"].items():
        if k == "packages":
            L += ["- packages: " + "; ".join(f"{e(p)} {e(', '.join(map(str, vs)))}" for p, vs in v.items())]
        else:
            L += [f"- {e(k)}: {e(', '.join(map(str, v))) or '—'}"]
    return "\n".join(L) + "\n"


def to_json(m: dict, rows: list[dict]) -> dict:
    return {
        "schema": 1, "report": m["name"], "primary_metric": m["primary"], "direction": m["direction"],
        "verdict": m["verdict"], "metric_meta": m["metric_meta"],
        "runs": rows,
        "leaderboard": [{"label": c.label, "axes": c.axes, "baseline": c.baseline, "n": len(c.runs),
                         "run_dirs": [str(r.path) for r in c.runs], "metrics": c.cells} for c in m["configs"]],
        "comparisons": m["comparisons"], "references": m["references"], "contamination": m["contamination"],
        "warnings": m["warnings"],
        "provenance": m["provenance"],
    }
