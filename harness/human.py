"""Human evaluation round trips: blinded rating sheets out, ratings back in, aggregates and Elo.

    harness human export RUN_DIR... --suite e2e --out human/e2e-r1 [--mode pointwise|pairwise]
        [--annotators 3 --overlap 1.0] [--criteria relevance,fluency,coherence,factual_accuracy]
        [--seed 0] [--limit N] [--formats csv,jsonl,labelstudio] [--show-references] [--force]
    harness human import human/e2e-r1/annotator-*.csv --key human/e2e-r1/key.json [--out FILE]
        [--allow-errors] [--orderings 1000] [--bootstrap 1000]
    harness human elo judgments.jsonl... [--k 32 --initial 1000 --orderings 10000 --seed 0] [--json PATH]

Export reads samples/<suite>.jsonl of each run directory (docs/run-record.md) and writes one sheet
per annotator (CSV, JSONL, Label Studio tasks + labeling config), rows shuffled, sides swapped at
random, ids blinded; key.json maps every blinded id back to (annotator, run, item id, side).
Import checks every row (unknown/duplicate ids, missing or out-of-range ratings: file and row named),
then writes human.json (shape in docs/human-eval.md). Statistics come from harness.ratings.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import random
import re
import sys
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from harness import atomic, paths, ratings, records

SCHEMA = 1
DEFAULT_CRITERIA = ("relevance", "fluency", "coherence", "factual_accuracy")
SCALE = (1, 5)
WINNERS = ("a", "b", "tie")
FORMATS = ("csv", "jsonl", "labelstudio")
_CRITERION = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class HumanEvalError(ValueError):
    """Bad input to export/import/elo; the message names the input and the fix."""


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
        for line_no, row in _jsonl_objects(path, problems):
            missing = [k for k in ("id", "prompt", "prediction") if k not in row]
            if missing:
                problems.append(f"{path}:{line_no}: missing field(s) {', '.join(missing)} (generation samples need id, prompt, prediction)")
                continue
            key = str(row["id"])
            if key in items:
                problems.append(f"{path}:{line_no}: duplicate id {row['id']!r}")
                continue
            items[key] = row
        summary = records.read_summary(rd) or {}
        label = f"{summary['name']}/{summary['run_id']}" if summary.get("name") and summary.get("run_id") else str(rd)
        runs.append({"label": label, "run_dir": str(rd), "items": items})
    labels = [r["label"] for r in runs]
    for lab in {x for x in labels if labels.count(x) > 1}:
        problems.append(f"run {lab} is given more than once; pass each run directory once")
    if problems:
        raise HumanEvalError("cannot export:\n" + "\n".join(f"  - {p}" for p in problems))
    return runs


def _jsonl_lines(path: Path):
    """(line number, object or the reason the line is not one) for each non-blank line of a JSONL file."""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, f"not JSON ({e.msg})"
            continue
        yield n, row if isinstance(row, dict) else "not a JSON object"


def _jsonl_objects(path: Path, problems: list[str]):
    """(line number, object) for each JSON object line of path; other lines go to problems with their number."""
    for n, row in _jsonl_lines(path):
        if isinstance(row, str):
            problems.append(f"{path}:{n}: {row}")
            continue
        yield n, row


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
    bad = [c for c in criteria if not _CRITERION.match(c)]
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
        "schema": SCHEMA, "kind": "harness-human-key", "mode": mode, "suite": suite, "created_at": records.now_iso(),
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
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["id"], lineterminator="\r\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: csv_safe(v) for k, v in r.items()})
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


# ------------------------------------------------------------------------------------ import
def _read_sheet(path: Path, mode: str, criteria: list[str]):
    """Yield (row_label, fields) with fields {"id", <criterion>|"winner", "comment"} as raw values,
    or (row_label, error message) for rows that cannot be read at all."""
    wanted = criteria if mode == "pointwise" else ["winner"]
    suffix = path.name.lower()
    if suffix.endswith(".csv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            missing = [c for c in ["id"] + wanted if c not in cols]
            if missing:
                yield "header", f"missing column(s) {', '.join(missing)} (this key is {mode}; expected id, {', '.join(wanted)})"
                return
            for n, row in enumerate(reader, 2):  # spreadsheet row numbers: the header is row 1
                if None in row:
                    yield f"row {n}", f"more cells than header columns: {row[None]!r}"
                    continue
                yield f"row {n}", {k: row.get(k) for k in ["id", *wanted, "comment"]}
    elif suffix.endswith(".jsonl"):
        for n, row in _jsonl_lines(path):
            yield f"line {n}", row if isinstance(row, str) else {k: row.get(k) for k in ["id", *wanted, "comment"]}
    elif suffix.endswith(".json"):
        try:
            tasks = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            yield "file", f"not JSON ({e.msg}); expected a Label Studio JSON export"
            return
        if not isinstance(tasks, list):
            yield "file", "expected a list of tasks (Label Studio: Export -> JSON)"
            return
        for n, task in enumerate(tasks, 1):
            yield from _labelstudio_task(n, task, wanted)
    else:
        yield "file", "unknown sheet format: use .csv, .jsonl or a Label Studio export .json"


def _labelstudio_task(n: int, task, wanted: list[str]):
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        yield f"task {n}", "no `data` object (use Label Studio's full JSON export, not JSON-MIN or CSV)"
        return
    anns = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not anns:
        yield f"task {n}", {"id": data.get("id"), **{w: None for w in wanted}, "comment": None}
        return
    for j, ann in enumerate(anns):
        fields = {"id": data.get("id"), **{w: None for w in wanted}, "comment": None}
        for res in ann.get("result") or []:
            name, value = res.get("from_name"), res.get("value") or {}
            if name in wanted:
                fields[name] = value.get("rating") if "rating" in value else (value.get("choices") or [None])[0]
            elif name == "comment":
                fields["comment"] = "\n".join(value.get("text") or [])
        yield (f"task {n}" if len(anns) == 1 else f"task {n} annotation {j + 1}"), fields


def _score(raw) -> int | None | str:
    """A 1-5 rating from a cell: int, or None if empty, or an error message."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        v = float(raw.strip().lstrip("'") if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        return f"not a number: {raw!r}"
    if not v.is_integer() or not SCALE[0] <= v <= SCALE[1]:
        return f"out of range: {raw!r} (whole numbers {SCALE[0]}-{SCALE[1]})"
    return int(v)


def read_ratings(sheets: list[str | Path], key: dict):
    """Check every row of every sheet against the key: (ratings, errors, rows_seen).

    ratings: [{"id", "annotator", "file", "row", <criterion>: int ... | "winner": a|b|tie, "comment"}]
    errors:  [{"file", "row", "id", "problem"}]; a row with any problem is not in ratings.
    """
    mode, criteria, rows = key["mode"], key["criteria"], key["rows"]
    seen: dict[str, str] = {}
    good, errors, n_rows = [], [], 0
    for sheet in sheets:
        path = Path(sheet)
        if not path.exists():
            errors.append({"file": str(path), "row": "file", "id": None, "problem": "file not found"})
            continue
        for where, fields in _read_sheet(path, mode, criteria):
            n_rows += 1
            if isinstance(fields, str):
                errors.append({"file": str(path), "row": where, "id": None, "problem": fields})
                continue
            blind = str(fields.get("id") or "").strip().lstrip("'")
            problems = []
            if not blind:
                problems.append("missing id")
            elif blind not in rows:
                problems.append(f"unknown id {blind!r} (not in this key: a sheet from another export, or an edited id)")
            elif blind in seen:
                problems.append(f"duplicate id {blind!r} (first seen at {seen[blind]})")
            rec = {"id": blind, "file": str(path), "row": where, "comment": fields.get("comment") or ""}
            if mode == "pointwise":
                for c in criteria:
                    v = _score(fields.get(c))
                    if v is None:
                        problems.append(f"missing rating for {c}")
                    elif isinstance(v, str):
                        problems.append(f"{c} {v}")
                    else:
                        rec[c] = v
            else:
                w = fields.get("winner")
                w = w.strip().lower() if isinstance(w, str) else w
                if w in (None, ""):
                    problems.append("missing rating for winner")
                elif w not in WINNERS:
                    problems.append(f"winner {fields.get('winner')!r} is not one of a, b, tie")
                else:
                    rec["winner"] = w
            if blind and blind in rows and blind not in seen:
                seen[blind] = f"{path}:{where}"
            if problems:
                errors.extend({"file": str(path), "row": where, "id": blind or None, "problem": p} for p in problems)
                continue
            rec["annotator"] = rows[blind]["annotator"]
            good.append(rec)
    return good, errors, n_rows


def _agreement(units: dict, annotators: list[str], level: str, weights: str | None) -> dict:
    """units: {unit: {annotator: value}} -> Krippendorff's alpha (+ Cohen's kappa with two annotators)."""
    multi = {u: v for u, v in units.items() if len(v) >= 2}
    out = {"annotators": len({a for v in units.values() for a in v}), "units_multi_rated": len(multi),
           "krippendorff_alpha": ratings.krippendorff_alpha([[v.get(a) for a in annotators] for v in multi.values()], level),
           "level": level}
    if level == "ordinal":
        out["krippendorff_alpha_interval"] = ratings.krippendorff_alpha(
            [[v.get(a) for a in annotators] for v in multi.values()], "interval")
    raters = sorted({a for v in multi.values() for a in v})
    if len(raters) == 2:
        both = [v for v in multi.values() if raters[0] in v and raters[1] in v]
        xa, xb = [v[raters[0]] for v in both], [v[raters[1]] for v in both]
        out["cohen_kappa"] = ratings.cohen_kappa(xa, xb)
        if weights:
            out[f"cohen_kappa_{weights}"] = ratings.cohen_kappa(xa, xb, weights=weights, labels=list(range(SCALE[0], SCALE[1] + 1)))
    return out


def aggregate(good: list[dict], key: dict, orderings: int = 1000, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Means with CIs, win rates with Wilson intervals, Bradley-Terry, Elo, agreement (pure)."""
    rows, labels = key["rows"], [r["label"] for r in key["runs"]]
    out: dict = {"mode": key["mode"], "runs": labels}
    if key["mode"] == "pointwise":
        scores, agree = {}, {}
        for c in key["criteria"]:
            per_unit: dict[str, dict] = {}
            unit_run: dict[str, str] = {}
            for r in good:
                per_unit.setdefault(rows[r["id"]]["unit"], {})[r["annotator"]] = r[c]
                unit_run[rows[r["id"]]["unit"]] = rows[r["id"]]["run"]
            agree[c] = _agreement(per_unit, key["annotators"], "ordinal", "quadratic")
            for lab in labels:
                mine = [v for u, v in per_unit.items() if unit_run[u] == lab]
                unit_means = [float(np.mean(list(v.values()))) for v in mine]  # annotators averaged per item first
                mean, lo, hi = ratings.mean_ci(unit_means)
                n_ratings = sum(len(v) for v in mine)
                scores.setdefault(lab, {})[c] = {"mean": mean, "ci95": [lo, hi], "n_items": len(unit_means), "n_ratings": n_ratings}
        out.update({"criteria": key["criteria"], "scores": scores, "agreement": agree})
        return out
    judgments = [{"item_id": rows[r["id"]]["item_id"], "model_a": rows[r["id"]]["run_a"], "model_b": rows[r["id"]]["run_b"],
                  "winner": r["winner"], "judge": r["annotator"], "unit": rows[r["id"]]["unit"],
                  "first": rows[r["id"]]["pair"][0]} for r in good]
    out["pairs"] = pair_table(judgments, labels)
    idx = {lab: i for i, lab in enumerate(labels)}
    a = np.array([idx[j["model_a"]] for j in judgments], dtype=np.int64)
    b = np.array([idx[j["model_b"]] for j in judgments], dtype=np.int64)
    s = np.array([{"a": 1.0, "tie": 0.5, "b": 0.0}[j["winner"]] for j in judgments])
    if len(judgments):
        prior = 1.0
        point = ratings.bt_to_elo_scale(ratings.bradley_terry(ratings.win_matrix(a, b, s, len(labels)), prior=prior))
        boot = ratings.bt_to_elo_scale(ratings.bradley_terry_bootstrap(a, b, s, len(labels), bootstrap, seed, prior))
        q = np.quantile(boot, [0.025, 0.975], axis=0)
        out["bradley_terry"] = {
            "scale": "elo (400 log10 strength + 1000)", "prior_ties_per_pair": prior, "bootstrap": bootstrap,
            "mle_exists": ratings.bt_mle_exists(ratings.win_matrix(a, b, s, len(labels))),
            "models": {lab: {"score": float(point[i]), "ci95": [float(q[0, i]), float(q[1, i])]} for i, lab in enumerate(labels)},
        }
        out["elo"] = rank_elo(judgments, orderings=orderings, seed=seed)
    # agreement on the outcome in a fixed orientation (the key's run order), whatever side each row showed
    per_unit: dict[str, dict] = {}
    for j in judgments:
        outcome = "tie" if j["winner"] == "tie" else ("first" if (j["winner"] == "a") == (j["model_a"] == j["first"]) else "second")
        per_unit.setdefault(j["unit"], {})[j["judge"]] = outcome
    out["agreement"] = {"winner": _agreement(per_unit, key["annotators"], "nominal", None)}
    out["judgments"] = [{k: v for k, v in j.items() if k not in ("unit", "first")} for j in judgments]
    return out


def pair_table(judgments: list[dict], labels: list[str]) -> list[dict]:
    """Win/tie/loss counts and rates (Wilson 95% intervals) per pair of models, in label order."""
    out = []
    for x, y in itertools.combinations(labels, 2):
        w = t = l = 0
        for j in judgments:
            if {j["model_a"], j["model_b"]} != {x, y}:
                continue
            if j["winner"] == "tie":
                t += 1
            elif (j["winner"] == "a") == (j["model_a"] == x):
                w += 1
            else:
                l += 1
        n = w + t + l
        if not n:
            continue
        rate = lambda k: {"value": k / n, "ci95": list(ratings.wilson_interval(k, n))}  # noqa: E731
        out.append({"model_a": x, "model_b": y, "n": n, "wins_a": w, "ties": t, "wins_b": l,
                    "win_rate_a": rate(w), "tie_rate": rate(t), "win_rate_b": rate(l),
                    "score_a": rate(w + 0.5 * t)})
    return out


# ------------------------------------------------------------------------------------- Elo
def read_judgments(files: list[str | Path]):
    """Pairwise judgments from JSONL files: (judgments, errors). Each line: item_id, model_a, model_b,
    winner ("a", "b" or "tie"), optional judge. Errors name file and line."""
    good, errors = [], []
    for f in files:
        path = Path(f)
        if not path.exists():
            errors.append(f"{path}: file not found")
            continue
        for n, row in _jsonl_objects(path, errors):
            problems = [f"missing {k}" for k in ("item_id", "model_a", "model_b", "winner") if row.get(k) in (None, "")]
            w = str(row.get("winner", "")).strip().lower()
            if row.get("winner") not in (None, "") and w not in WINNERS:
                problems.append(f"winner {row['winner']!r} is not one of a, b, tie")
            if not problems and str(row["model_a"]) == str(row["model_b"]):
                problems.append(f"model_a and model_b are the same ({row['model_a']!r})")
            if problems:
                errors.extend(f"{path}:{n}: {p}" for p in problems)
                continue
            good.append({"item_id": row["item_id"], "model_a": str(row["model_a"]), "model_b": str(row["model_b"]),
                         "winner": w, "judge": row.get("judge")})
    return good, errors


def rank_elo(judgments: list[dict], k: float = 32.0, initial: float = 1000.0, orderings: int = 10_000,
             seed: int = 0) -> dict:
    """Elo averaged over random orderings of the matches, ranked by mean rating (pure)."""
    if not judgments:
        raise HumanEvalError("no judgments to rank")
    models = sorted({j["model_a"] for j in judgments} | {j["model_b"] for j in judgments})
    idx = {m: i for i, m in enumerate(models)}
    a = np.array([idx[j["model_a"]] for j in judgments], dtype=np.int64)
    b = np.array([idx[j["model_b"]] for j in judgments], dtype=np.int64)
    s = np.array([{"a": 1.0, "tie": 0.5, "b": 0.0}[j["winner"]] for j in judgments])
    t0, c0 = time.perf_counter(), time.process_time()
    final = ratings.elo_orderings(a, b, s, len(models), k=k, initial=initial, orderings=orderings, seed=seed)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    st = ratings.summarize_samples(final)
    wins = np.bincount(a, weights=(s == 1), minlength=len(models)) + np.bincount(b, weights=(s == 0), minlength=len(models))
    ties = np.bincount(a, weights=(s == 0.5), minlength=len(models)) + np.bincount(b, weights=(s == 0.5), minlength=len(models))
    games = np.bincount(a, minlength=len(models)) + np.bincount(b, minlength=len(models))
    order = np.argsort(-st["mean"], kind="stable")
    rows = []
    for rank, i in enumerate(order, 1):
        rows.append({"rank": rank, "model": models[i], "elo": float(st["mean"][i]),
                     "mean_ci95_half": float(st["mean_ci_half"][i]), "sd": float(st["sd"][i]),
                     "interval95": [float(st["lo"][i]), float(st["hi"][i])],
                     "matches": int(games[i]), "wins": int(wins[i]), "ties": int(ties[i]),
                     "losses": int(games[i] - wins[i] - ties[i])})
    return {"k": k, "initial": initial, "orderings": orderings, "seed": seed, "matches": int(a.size),
            "elapsed_s": round(elapsed, 3), "cpu_s": round(cpu, 3), "ranking": rows,
            "note": "elo = mean over orderings; mean_ci95_half = 1.96 sd / sqrt(orderings) (the paper's ±); "
                    "interval95 = 2.5-97.5 percentiles of the final rating over orderings"}


def format_elo_table(result: dict) -> str:
    lines = [f"{'rank':>4}  {'model':<40} {'elo':>8} {'±':>5}  {'95% over orderings':>20}  {'W/T/L':>14}"]
    for r in result["ranking"]:
        lo, hi = r["interval95"]
        lines.append(f"{r['rank']:>4}  {r['model']:<40} {r['elo']:>8.1f} {r['mean_ci95_half']:>5.1f}  "
                     f"{f'[{lo:.0f}, {hi:.0f}]':>20}  {r['wins']:>4}/{r['ties']}/{r['losses']}")
    lines.append(f"{result['matches']} matches, {result['orderings']} orderings, K={result['k']:g}, "
                 f"start {result['initial']:g}, {result['elapsed_s']:.2f} s ({result['cpu_s']:.2f} s CPU)")
    return "\n".join(lines)


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
    try:
        key = atomic.read_json(args.key)
    except (OSError, json.JSONDecodeError) as e:
        return _fail(f"--key {args.key}: cannot read ({e}); pass the key.json written by `harness human export`")
    if not isinstance(key, dict) or key.get("kind") != "harness-human-key":
        return _fail(f"--key {args.key}: not a key.json written by `harness human export`")
    good, errors, n_rows = read_ratings(args.sheets, key)
    for e in errors:
        print(f"{e['file']}:{e['row']}: {e['problem']}", file=sys.stderr)
    bad_rows = len({(e["file"], e["row"]) for e in errors})
    if errors and not args.allow_errors:
        print(f"error: {len(errors)} problem(s) in {bad_rows} row(s); fix the sheets, or pass --allow-errors "
              "to skip those rows", file=sys.stderr)
        return 1
    rated = {r["id"] for r in good}
    not_returned = sorted(b for b in key["rows"] if b not in rated)
    result = {"schema": SCHEMA, "created_at": records.now_iso(), "key": str(args.key), "sheets": [str(s) for s in args.sheets],
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
