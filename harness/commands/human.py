"""`harness human export|import|elo`: human-evaluation round trips (the stage is harness/human/).

    harness human export RUN_DIR... --suite e2e --out human/e2e-r1 [--mode pointwise|pairwise]
        [--annotators 3 --overlap 1.0] [--criteria relevance,fluency,coherence,factual_accuracy]
        [--seed 0] [--limit N] [--formats csv,jsonl,labelstudio] [--show-references] [--force]
    harness human import human/e2e-r1/annotator-*.csv --key human/e2e-r1/key.json [--out FILE]
        [--allow-errors] [--orderings 1000] [--bootstrap 1000]
    harness human elo judgments.jsonl... [--k 32 --initial 1000 --orderings 10000 --seed 0] [--json PATH]

Export reads samples/<suite>.jsonl of each run directory (docs/run-record.md) and writes one sheet
per annotator (CSV, JSONL, Label Studio tasks + labeling config), rows shuffled, sides swapped at
random, ids blinded; key.json maps every blinded id back to (annotator, run, item id, side).
Import checks key.json and every sheet (a key that is not one, or a sheet that cannot be read at all:
exit 2; unknown/duplicate ids, missing or out-of-range ratings: file and row named, exit 1), then
writes human.json (shape in docs/human-eval.md). Statistics come from harness.ratings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import atomic
from harness.human.aggregate import aggregate, format_elo_table, rank_elo
from harness.human.collect import read_judgments, read_ratings
from harness.human.export import build_sheets, load_run_samples, write_export
from harness.human.sheets import DEFAULT_CRITERIA, FORMATS, SCHEMA, HumanEvalError, read_key
from harness.run.record import now_iso


# ------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ex = sub.add_parser("export", help="write blinded rating sheets and key.json from run directories")
    ex.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    ex.add_argument("--suite", required=True, help="generation suite whose samples/<suite>.jsonl to rate")
    ex.add_argument("--out", required=True, help="directory for the sheets and key.json")
    ex.add_argument("--mode", choices=("pointwise", "pairwise"), default="pointwise")
    ex.add_argument("--annotators", type=int, default=3)
    ex.add_argument("--overlap", type=float, default=1.0,
                    help="share of items every annotator sees; the other items are dealt out, one annotator each")
    ex.add_argument("--criteria", default=",".join(DEFAULT_CRITERIA), help="pointwise criteria, comma-separated")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--limit", type=int, default=0, help="rate a seeded random sample of N items (0 = all)")
    ex.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: csv,jsonl,labelstudio")
    ex.add_argument("--show-references", action="store_true", help="show the references to annotators")
    ex.add_argument("--force", action="store_true", help="replace an existing export in --out")
    im = sub.add_parser("import", help="check filled sheets against key.json and write human.json")
    im.add_argument("sheets", nargs="+", metavar="SHEET")
    im.add_argument("--key", required=True, help="key.json written by export")
    im.add_argument("--out", default="", help="human.json path or directory (default: beside key.json)")
    im.add_argument("--allow-errors", action="store_true", help="report bad rows, skip them, and go on")
    im.add_argument("--orderings", type=int, default=1000, help="Elo orderings (pairwise)")
    im.add_argument("--bootstrap", type=int, default=1000, help="Bradley-Terry bootstrap resamples (pairwise)")
    im.add_argument("--seed", type=int, default=0)
    el = sub.add_parser("elo", help="Elo ranking from pairwise-judgment JSONL files")
    el.add_argument("files", nargs="+", metavar="FILE")
    el.add_argument("--k", type=float, default=32.0)
    el.add_argument("--initial", type=float, default=1000.0)
    el.add_argument("--orderings", type=int, default=10_000)
    el.add_argument("--seed", type=int, default=0)
    el.add_argument("--json", default="", help="also write the ranking here")
    el.add_argument("--allow-errors", action="store_true", help="report bad lines, skip them, and go on")


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    try:
        return {"export": _run_export, "import": _run_import, "elo": _run_elo}[args.action](args)
    except HumanEvalError as e:
        return _fail(str(e))
    except OSError as e:  # e.g. --out in a directory that cannot be written
        return _fail(f"{e.filename or ''}: {e.strerror or e}")


def _run_export(args) -> int:
    criteria = tuple(c.strip() for c in args.criteria.split(",") if c.strip())
    runs = load_run_samples(args.run_dirs, args.suite)
    sheets, key = build_sheets(runs, args.mode, args.annotators, args.overlap, criteria, args.seed, args.limit,
                               args.show_references, args.suite)
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    write_export(args.out, sheets, key, formats, args.show_references, args.force)
    for lab, ids in key["excluded_items"].items():
        print(f"note: {len(ids)} item(s) of {lab} are not in every run and were left out: {ids[:10]}"
              f"{' ...' if len(ids) > 10 else ''} (listed in key.json excluded_items)")
    print(f"{key['mode']} sheets for {len(sheets)} annotator(s), {key['units']} units "
          f"({key['shared_units']} seen by everyone) -> {args.out} (key: {Path(args.out) / 'key.json'})")
    return 0


def _run_import(args) -> int:
    key = read_key(args.key)
    good, errors, n_rows, unreadable, notes = read_ratings(args.sheets, key)
    for n in notes:
        print(f"note: {n}")
    for e in errors:
        print(f"{e['file']}:{e['row']}: {e['problem']}", file=sys.stderr)
    bad_rows = len({(e["file"], e["row"]) for e in errors})
    if unreadable:
        for u in unreadable:
            print(f"error: {u['file']}: {u['problem']}", file=sys.stderr)
        return _fail(f"{len(unreadable)} sheet(s) could not be read; fix them, or leave them off the command line "
                     "(--allow-errors skips bad rows, not whole sheets)")
    if errors and not args.allow_errors:
        print(f"error: {len(errors)} problem(s) in {bad_rows} row(s); fix the sheets, or pass --allow-errors "
              "to skip those rows", file=sys.stderr)
        return 1
    rated = {r["id"] for r in good}
    not_returned = sorted(b for b in key["rows"] if b not in rated)
    result = {"schema": SCHEMA, "created_at": now_iso(), "key": str(args.key), "sheets": [str(s) for s in args.sheets],
              "suite": key.get("suite", ""), "rows_read": n_rows, "rows_used": len(good), "skipped_rows": bad_rows,
              "errors": errors, "assigned": len(key["rows"]), "not_returned": len(not_returned),
              **aggregate(good, key, args.orderings, args.bootstrap, args.seed)}
    out = Path(args.out) if args.out else Path(args.key).parent / "human.json"
    if out.is_dir() or (args.out and args.out.endswith("/")):
        out = out / "human.json"
    judgments = result.pop("judgments", None)
    atomic.write_json(out, result)
    if judgments is not None:
        atomic.write_jsonl(out.with_name(out.stem + ".judgments.jsonl"), judgments)
    print(f"{len(good)} rating row(s) used, {bad_rows} skipped, {len(not_returned)} assigned row(s) not returned -> {out}")
    return 0


def _run_elo(args) -> int:
    judgments, errors = read_judgments(args.files)
    for e in errors:
        print(e, file=sys.stderr)
    if errors and not args.allow_errors:
        print(f"error: {len(errors)} bad line(s); fix them or pass --allow-errors to skip them", file=sys.stderr)
        return 1
    result = rank_elo(judgments, args.k, args.initial, args.orderings, args.seed)
    result["files"] = [str(f) for f in args.files]
    result["skipped_lines"] = len(errors)
    print(format_elo_table(result))
    if args.json:
        atomic.write_json(args.json, result)
        print(f"-> {args.json}")
    return 0
