"""report.md, results.csv and results.json from the report model (harness/report/build.py).
"""

from __future__ import annotations

import csv
import io

from harness.report.build import COST
from harness.report.fmt import cell_text, csv_safe, fmt, fmt_metric, md_escape


def to_csv(header: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([csv_safe(h) for h in header])
    for row in rows:
        w.writerow([csv_safe(row.get(h)) for h in header])
    return buf.getvalue()


def to_markdown(m: dict, figs: list, stamp: str) -> str:
    L = [f"# Report: {md_escape(m['name'])}", "", f"Generated: {stamp}", ""]
    counts = ", ".join(f"{v} {k}" for k, v in m["status_counts"].items())
    better = {"max": "higher is better", "min": "lower is better"}.get(m["direction"], "direction unknown")
    L += [f"{m['n_runs']} runs ({counts}). Primary metric: `{md_escape(m['primary'])}` ({better})."
          + (f" Best configuration: **{md_escape(m['best'])}**." if m["best"] else ""), ""]
    L += [f"**Verdict:** {md_escape(m['verdict']['text'])}", ""]
    if m["findings"]:
        L += ["## Key findings", ""] + [f"- {md_escape(f)}" for f in m["findings"]] + [""]
    if m["warnings"]:
        L += ["## Warnings", ""] + [f"- ⚠ {md_escape(w)}" for w in m["warnings"]] + [""]

    def table(cols: list[tuple[str, str]]):
        out = ["| configuration | n | " + " | ".join(md_escape(h) for _, h in cols) + " |",
               "|---|---:|" + "---:|" * len(cols)]
        for c in m["configs"]:
            n = len(c.runs)
            cells = []
            for key, _ in cols:
                t = md_escape(cell_text(c.cells.get(key), n, m["scales"].get(key)))
                if key in m["best_marks"] and c.cells.get(key, {}).get("mean") == m["best_marks"][key] and not c.baseline:
                    t = f"**{t}** ★"
                cells.append(t)
            out.append(f"| {md_escape(c.label)}{' (reference)' if c.baseline else ''} | {n} | " + " | ".join(cells) + " |")
        return out

    L += ["## Leaderboard", "", "Mean ± 95% CI half-width (t-distribution) over seeds; ★ best per column (in the primary "
          "column only a best configuration the verdict names; ties are not starred).", ""]
    L += table([(q, q) for q in m["quality"]]) + [""]
    L += ["## Cost", ""] + table([(k, h) for k, h in COST if k in m["cost"]]) + [""]
    L += ["## Paired significance", "",
          f"Paired on evaluation item ids; Holm correction over all {len(m['comparisons'])} comparisons. "
          "Metrics with binary per-item values (accuracy, exact match): McNemar's exact test; others: the mean of "
          "per-item scores (sentence-level BLEU, not corpus BLEU). Points: 0-1 metrics × 100.", ""]
    L += [f"- {md_escape(r['verdict'])}" for r in m["comparisons"]] + [""]
    L += ["## Figures", ""] + [f"![{md_escape(f.title)}](figures/{f.name}.png)\n\n{md_escape(f.caption)}\n" for f in figs]
    if m["samples"]:
        L += ["## Sample outputs", ""]
        for s in m["samples"]:
            L += [f"**{md_escape(s['suite'])} {md_escape(s['id'])}**: {md_escape(s['prompt'])}", "",
                  f"- reference: {md_escape(s['reference'])}"] + [f"- {md_escape(lbl)}: {md_escape(o)}" for lbl, o in s["outputs"]] + [""]
    if m["references"]:
        L += ["## Published results", "", "| metric | configuration | measured | published | tolerance | status | source | note |",
              "|---|---|---:|---:|---:|---|---|---|"]
        for r in m["references"]:
            scale = m["scales"].get(r["metric"])
            L += [f"| {md_escape(r['metric'])} | {md_escape(r['config'])} | {fmt_metric(r['measured'], scale)} | "
                  f"{fmt_metric(r['published'], scale)} | {fmt_metric(r['tolerance'], scale)} | {r['status']} | "
                  f"{md_escape(r['source'])} | {md_escape(r['note'])} |"]
        L += [""]
    if m["contamination"]:
        L += ["## Contamination", "", "Share of each eval set's items that share a long word sequence with the configuration's "
              "training data (eval.json `contamination`; mean over the configuration's runs).", "",
              "| eval set | configuration | training data | share | contaminated / items | too short |",
              "|---|---|---|---:|---:|---:|"]
        L += [f"| {md_escape(t['suite'])} | {md_escape(r['config'])} | {md_escape(r['train_data'])} | {fmt(100 * r['share'], 3)}% | "
              f"{r['contaminated']} / {r['items']} | {r['too_short']} |" for t in m["contamination"] for r in t["rows"]] + [""]
    if m["human"]:
        L += ["## Human evaluation", ""] + [f"- `{md_escape(p)}` (tables in report.html)" for p, _ in m["human"]] + [""]
    L += ["## Runs that did not complete", ""]
    if m["failed"]:
        L += ["| run | status | reason | pruned at step |", "|---|---|---|---:|"]
        L += [f"| {md_escape(r.path)} | {r.status} | {md_escape(r.error or r.summary.get('reason', ''))} | {fmt(r.summary.get('pruned_at_step'))} |"
              for r in m["failed"]]
    else:
        L += ["None: every run completed."]
    L += ["", "## Provenance", ""]
    for k, v in m["provenance"].items():
        if k == "packages":
            L += ["- packages: " + "; ".join(f"{md_escape(p)} {md_escape(', '.join(vs))}" for p, vs in v.items())]
        else:
            L += [f"- {k}: {md_escape(', '.join(v)) or '—'}"]
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
