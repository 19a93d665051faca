"""`harness report` (the stage is harness/report/): what won, by how much, at what cost, and how sure we are -- from run records only.

    harness report STUDY [--root DIR] [--runs-root runs] [--storage URL] [--out reports]
    harness report RUN_DIR [RUN_DIR ...] --name NAME

Reads run directories (docs/run-record.md, via harness.records readers; never torch, never
recomputes a metric) and writes reports/<name>/ (runs/, studies/ and reports/ default to the harness root:
--root DIR / $HARNESS_ROOT, else the current directory): report.md, report.html (one self-contained file),
results.csv and results.json (one row per run), figures/*.png|svg. Prints the report.html path.
Statistics live in harness.stats, figures in harness.figures, HTML in harness.report_html; this
module collects the records, aggregates them, runs the paired tests and writes the files.
Same records -> same bytes, except the one "Generated:" line (honours SOURCE_DATE_EPOCH).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness import atomic, paths
from harness.commands.common import add_root, use_root
from harness.report.build import build, run_rows
from harness.report.fmt import timestamp
from harness.report.markdown import to_csv, to_json, to_markdown
from harness.report.runs import ReportError, collect


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", metavar="STUDY|RUN_DIR", help="a study name, or one or more run directories")
    p.add_argument("--runs-root", default=None, help="where a study's run directories are (default: ROOT/runs)")
    p.add_argument("--storage", default="", help="Optuna storage URL (default: sqlite:///ROOT/studies/<study>.db if it exists)")
    p.add_argument("--studies-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="output root; the report goes to OUT/<name>/ (default: ROOT/reports)")
    p.add_argument("--name", default="", help="report name (required for run directories from no single study)")
    p.add_argument("--metric", default="", help="primary metric, a flat name like e2e.bleu (default: the study's, else a sensible one)")
    p.add_argument("--direction", choices=("max", "min"), default=None,
                   help="is higher or lower --metric better (default: the study's, else the runs' recorded metric_meta)")
    p.add_argument("--paired-test", choices=("bootstrap", "permutation"), default="bootstrap",
                   help="test for continuous per-item scores (accuracy always uses McNemar's exact test)")
    p.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples (default 1000)")
    p.add_argument("--permutations", type=int, default=10000, help="paired permutation samples (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed for bootstrap/permutation (default 0)")
    p.add_argument("--max-compare", type=int, default=20, help="configurations tested against the best, per metric (default 20)")
    p.add_argument("--baseline", action="append", metavar="RUN_DIR", help="add a base-model run directory (repeatable)")
    p.add_argument("--no-auto-baseline", action="store_true",
                   help="do not add the latest base-model evaluation (status baseline, no study) of the study's model(s)")
    p.add_argument("--references", default=None, help="published results JSON (default: references.json in the inputs)")
    p.add_argument("--human", action="append", metavar="FILE",
                   help="human.json from `harness human import` (repeatable; found automatically under --human-root)")
    p.add_argument("--human-root", default="human", help="where human.json files are searched for this report's runs (default: human)")
    p.add_argument("--no-svg", action="store_true", help="write PNG figures only (faster)")
    p.add_argument("--no-optuna", action="store_true", help="do not read the Optuna storage")
    add_root(p)


def run(args) -> int:
    from harness.report.html import render

    t0 = time.perf_counter()
    use_root(args)
    args.runs_root = args.runs_root or str(paths.runs_root())
    args.studies_dir = args.studies_dir or str(paths.studies_dir())
    args.out = args.out or str(paths.reports_dir())
    try:
        name, runs, inputs = collect(args)
        model, figs = build(name, runs, inputs, args)
        out = Path(args.out) / paths.check_name(name, "report name")
    except (ReportError, ValueError) as exc:
        print(f"harness report: error: {exc}", file=sys.stderr)
        return 2
    stamp = timestamp()
    header, rows = run_rows(runs)
    for f in figs:
        atomic.write_bytes(out / "figures" / f"{f.name}.png", f.png)
        if f.svg is not None:
            atomic.write_bytes(out / "figures" / f"{f.name}.svg", f.svg)
    atomic.write_text(out / "results.csv", to_csv(header, rows))
    atomic.write_json(out / "results.json", to_json(model, rows))
    atomic.write_text(out / "report.md", to_markdown(model, figs, stamp))
    atomic.write_text(out / "report.html", render(model, figs, stamp))
    print(f"report: {out / 'report.html'} ({len(runs)} runs, {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    print(out / "report.html")
    return 0
