"""Blinded rating sheets out: samples of several runs on the same items, shuffled and keyed, as CSV, JSONL
and a Label Studio project, with the key that maps them back.

    harness human export RUN_DIR... --suite e2e --out human/e2e-r1 [--mode pointwise|pairwise]
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
from pathlib import Path
from xml.sax.saxutils import quoteattr

from harness import atomic, paths
from harness.human.sheets import (
    CRITERION,
    DEFAULT_CRITERIA,
    FORMATS,
    SCALE,
    SCHEMA,
    WINNERS,
    HumanEvalError,
    jsonl_objects,
    sheet_id,
)
from harness.run.record import now_iso, read_summary

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value):
    """Neutralise spreadsheet formulas: a string starting with = + - @ tab or CR gets a leading quote."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


# ------------------------------------------------------------------------------------ export
def load_run_samples(run_dirs: list[str], suite: str) -> list[dict]:
    """[{label, run_dir, items: {str(id): sample}}] for each run; every problem raises with its file and line."""
    try:
        paths.check_name(suite, "--suite")
    except ValueError as e:
        raise HumanEvalError(str(e)) from None
    runs, problems = [], []
    for rd in run_dirs:
        path = Path(rd) / "samples" / f"{suite}.jsonl"
        if not path.exists():
            have = sorted(p.stem for p in (Path(rd) / "samples").glob("*.jsonl"))
            problems.append(f"{path}: not found; suites with samples in this run: {', '.join(have) or 'none'} "
                            f"(run `harness eval {rd}` with a generation suite first, or pick --suite from that list)")
            continue
        items: dict[str, dict] = {}
        for line_no, row in jsonl_objects(path, problems):
            missing = [k for k in ("id", "prompt", "prediction") if k not in row]
            if missing:
                problems.append(f"{path}:{line_no}: missing field(s) {', '.join(missing)} (generation samples need id, prompt, prediction)")
                continue
            key = str(row["id"])
            if key in items:
                problems.append(f"{path}:{line_no}: duplicate id {row['id']!r}")
                continue
            items[key] = row
        summary = read_summary(rd) or {}
        label = f"{summary['name']}/{summary['run_id']}" if summary.get("name") and summary.get("run_id") else str(rd)
        runs.append({"label": label, "run_dir": str(rd), "items": items})
    labels = [r["label"] for r in runs]
    for lab in {x for x in labels if labels.count(x) > 1}:
        problems.append(f"run {lab} is given more than once; pass each run directory once")
    if problems:
        raise HumanEvalError("cannot export:\n" + "\n".join(f"  - {p}" for p in problems))
    return runs


def _token(rng: random.Random, used: set) -> str:
    while True:
        tok = f"{rng.getrandbits(64):016x}"
        if tok not in used:
            used.add(tok)
            return tok


def _references(sample: dict) -> str:
    refs = sample.get("references") or []
    return "\n---\n".join(str(r) for r in refs) if isinstance(refs, list) else str(refs)


def build_sheets(runs: list[dict], mode: str = "pointwise", annotators: int = 3, overlap: float = 1.0,
                 criteria=DEFAULT_CRITERIA, seed: int = 0, limit: int = 0, show_references: bool = False,
                 suite: str = ""):
    """Plan the sheets (pure): ({annotator: [row]}, key). Items are those present in every run."""
    if mode not in ("pointwise", "pairwise"):
        raise HumanEvalError(f"--mode {mode!r}: use pointwise or pairwise")
    if annotators < 1:
        raise HumanEvalError(f"--annotators {annotators}: need at least 1")
    if not 0.0 <= overlap <= 1.0:
        raise HumanEvalError(f"--overlap {overlap}: a share between 0 and 1 (1.0 = every annotator sees every item)")
    bad = [c for c in criteria if not CRITERION.match(c)]
    if mode == "pointwise" and (bad or not criteria):
        raise HumanEvalError(f"--criteria {','.join(criteria)!r}: names must be lower-case identifiers "
                             "(letters, digits, _), e.g. relevance,fluency")
    if mode == "pairwise" and len(runs) < 2:
        raise HumanEvalError("--mode pairwise needs at least two run directories")
    rng = random.Random(seed)
    common = set.intersection(*(set(r["items"]) for r in runs))
    excluded = {r["label"]: sorted(set(r["items"]) - common) for r in runs if set(r["items"]) - common}
    items = sorted(common, key=lambda s: (len(s), s))
    if not items:
        raise HumanEvalError("no item id is present in the samples of every run; export needs shared item ids")
    if limit and limit < len(items):
        items = sorted(rng.sample(items, limit), key=lambda s: (len(s), s))
    if mode == "pointwise":
        units = [(item, (ri,)) for item in items for ri in range(len(runs))]
    else:
        units = [(item, pair) for item in items for pair in itertools.combinations(range(len(runs)), 2)]
    # overlap is decided per item: an annotator who gets an item rates all of its units (every run's
    # output, or every pair), so annotator harshness affects all runs alike
    units_of: dict[str, list[int]] = {}
    for u, (item, _) in enumerate(units):
        units_of.setdefault(item, []).append(u)
    item_order = list(items)
    rng.shuffle(item_order)
    n_shared = round(overlap * len(item_order))
    names = [f"annotator-{i + 1}" for i in range(annotators)]
    assigned = {n: [u for it in item_order[:n_shared] for u in units_of[it]] for n in names}
    for j, it in enumerate(item_order[n_shared:]):
        assigned[names[j % annotators]].extend(units_of[it])
    used: set = set()
    sheets, key_rows = {}, {}
    for name in names:
        rows = []
        unit_ids = assigned[name]
        rng.shuffle(unit_ids)
        for u in unit_ids:
            item, members = units[u]
            sample = runs[members[0]]["items"][item]
            blind = _token(rng, used)
            row = {"id": blind, "prompt": str(sample.get("prompt", ""))}
            if show_references:
                row["reference"] = _references(sample)
            unit_name = f"u{u}"  # the same unit in every annotator's sheet
            if mode == "pointwise":
                row["output"] = str(sample["prediction"])
                row.update({c: "" for c in criteria})
                key_rows[blind] = {"annotator": name, "unit": unit_name, "item_id": sample["id"], "run": runs[members[0]]["label"]}
            else:
                i, j = members if rng.random() < 0.5 else members[::-1]
                row["output_a"] = str(runs[i]["items"][item]["prediction"])
                row["output_b"] = str(runs[j]["items"][item]["prediction"])
                row["winner"] = ""
                key_rows[blind] = {"annotator": name, "unit": unit_name, "item_id": sample["id"],
                                   "run_a": runs[i]["label"], "run_b": runs[j]["label"],
                                   "pair": [runs[m]["label"] for m in members]}
            row["comment"] = ""
            rows.append(row)
        sheets[name] = rows
    key = {
        "schema": SCHEMA, "kind": "harness-human-key", "mode": mode, "suite": suite, "created_at": now_iso(),
        "criteria": list(criteria) if mode == "pointwise" else [], "scale": list(SCALE), "winners": list(WINNERS),
        "seed": seed, "overlap": overlap, "annotators": names, "shared_items": n_shared,
        "shared_units": sum(len(units_of[it]) for it in item_order[:n_shared]), "units": len(units),
        "runs": [{"label": r["label"], "run_dir": r["run_dir"], "items": len(r["items"])} for r in runs],
        "items": [runs[0]["items"][i]["id"] for i in items], "excluded_items": excluded, "rows": key_rows,
    }
    return sheets, key


def labelstudio_config(mode: str, criteria, show_references: bool = False) -> str:
    """Label Studio labeling config (XML) matching the task data fields of the exported sheets."""
    parts = ['<View>', '  <Header value="Prompt"/>', '  <Text name="prompt" value="$prompt"/>']
    if show_references:
        parts += ['  <Header value="Reference"/>', '  <Text name="reference" value="$reference"/>']
    if mode == "pointwise":
        parts += ['  <Header value="Output"/>', '  <Text name="output" value="$output"/>']
        for c in criteria:
            parts += [f'  <Header value={quoteattr(f"{c} ({SCALE[0]}-{SCALE[1]})")}/>',
                      f'  <Rating name={quoteattr(c)} toName="output" maxRating="{SCALE[1]}" required="true"/>']
        target = "output"
    else:
        parts += ['  <Header value="Output A"/>', '  <Text name="output_a" value="$output_a"/>',
                  '  <Header value="Output B"/>', '  <Text name="output_b" value="$output_b"/>',
                  '  <Header value="Which output is better?"/>',
                  '  <Choices name="winner" toName="output_a" choice="single" required="true">',
                  '    <Choice value="A"/>', '    <Choice value="B"/>', '    <Choice value="Tie"/>', '  </Choices>']
        target = "output_a"
    parts += [f'  <TextArea name="comment" toName="{target}" placeholder={quoteattr("optional comment")}/>', '</View>']
    return "\n".join(parts) + "\n"


def _csv_text(rows: list[dict]) -> str:
    """A sheet as CSV: ids as sheet_id writes them (text to a spreadsheet), formulas neutralised."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["id"], lineterminator="\r\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: sheet_id(v) if k == "id" else csv_safe(v) for k, v in r.items()})
    return buf.getvalue()


INSTRUCTIONS = {
    "pointwise": "Rate each output on each criterion from {lo} (very poor) to {hi} (excellent), whole numbers only:\n"
                 "{crit}.\nLeave `comment` empty or add a note. Do not edit the `id` column or reorder columns.\n",
    "pairwise": "For each prompt, pick the better output: write `a`, `b` or `tie` in the `winner` column\n"
                "(Label Studio: choose A, B or Tie). Do not edit the `id` column.\n",
}


def write_export(out: str | Path, sheets: dict, key: dict, formats=FORMATS, show_references: bool = False,
                 force: bool = False) -> list[Path]:
    """Write the sheets, key.json, the Label Studio config and instructions.md (all atomic)."""
    out = Path(out)
    if (out / "key.json").exists() and not force:
        raise HumanEvalError(f"{out / 'key.json'} exists: a round is already exported there. "
                             "Pick another --out, or pass --force to replace it (ratings for the old key become unreadable)")
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise HumanEvalError(f"--formats {','.join(bad)}: choose from {','.join(FORMATS)}")
    written = []
    for name, rows in sheets.items():
        if "csv" in formats:
            written.append(atomic.write_text(out / f"{name}.csv", _csv_text(rows)))
        if "jsonl" in formats:
            written.append(atomic.write_text(out / f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)))
        if "labelstudio" in formats:
            tasks = [{"data": {k: v for k, v in r.items() if k not in key["criteria"] + ["winner", "comment"]}} for r in rows]
            written.append(atomic.write_json(out / f"{name}.labelstudio.json", tasks))
    if "labelstudio" in formats:
        written.append(atomic.write_text(out / "labelstudio-config.xml",
                                         labelstudio_config(key["mode"], key["criteria"], show_references)))
    text = INSTRUCTIONS[key["mode"]].format(lo=SCALE[0], hi=SCALE[1], crit=", ".join(key["criteria"]))
    written.append(atomic.write_text(out / "instructions.md", f"# Rating instructions\n\n{text}"))
    written.append(atomic.write_json(out / "key.json", key))
    return written
