"""Tests for harness.human: sheet export, filled-sheet import (CSV, JSONL, Label Studio), errors, Elo CLI.

    python -m pytest tests/test_human.py -x -q
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from harness.cli import main as cli
from harness.human.export import csv_safe
from harness.human.ratings import wilson_interval
from harness.human.sheets import ID_PREFIX

QUALITY = {"run-good": 5, "run-mid": 3, "run-bad": 1}  # the score a faithful annotator gives each run


def make_run_dirs(root: Path) -> list[Path]:
    """Three run directories with generation samples; run-bad lacks item 5 and has an extra item 9."""
    dirs = []
    for name in QUALITY:
        d = root / "runs" / name / "20261121-000000-abcdef"
        (d / "samples").mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"name": name, "run_id": "20261121-000000-abcdef", "status": "completed"}))
        ids = [0, 1, 2, 3, 4, 5] if name != "run-bad" else [0, 1, 2, 3, 4, 9]
        rows = [{"id": f"e2e-{i:04d}", "prompt": f"=SUM(A1) name[{i}]", "prediction": f"-{name} answer {i}",
                 "references": [f"ref {i}"]} for i in ids]
        (d / "samples" / "e2e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        dirs.append(d)
    return dirs


@pytest.fixture
def run_dirs(tmp_path) -> list[Path]:
    return make_run_dirs(tmp_path)


def _export(run_dirs, out, *extra) -> dict:
    rc = cli(["human", "export", *map(str, run_dirs), "--suite", "e2e", "--out", str(out), *extra])
    assert rc == 0
    return json.loads((out / "key.json").read_text())


def _run_of(key, row_id):
    return key["rows"][row_id]["run"].split("/")[0]


def _fill_pointwise(key, annotator, row_id, criterion):
    # faithful ratings, except annotator-2 is one point harsher on run-mid's fluency (agreement < 1 there)
    v = QUALITY[_run_of(key, row_id)]
    if annotator == "annotator-2" and criterion == "fluency" and v == 3:
        v = 2
    return v


def _winner(key, row_id):
    r = key["rows"][row_id]
    qa, qb = QUALITY[r["run_a"].split("/")[0]], QUALITY[r["run_b"].split("/")[0]]
    if r["item_id"] == "e2e-0000" and min(qa, qb) == 1 and max(qa, qb) == 3:
        return "tie"  # everyone calls run-mid vs run-bad on item 0 a tie
    return "a" if qa > qb else "b" if qb > qa else "tie"


def _import(sheets, key_path, out, *extra) -> int:
    return cli(["human", "import", *map(str, sheets), "--key", str(key_path), "--out", str(out),
                "--orderings", "50", "--bootstrap", "50", *extra])


# ------------------------------------------------------------------------------------- csv_safe


@pytest.mark.parametrize("value,expected", [
    ("=1+1", "'=1+1"), ("+cmd", "'+cmd"), ("-2", "'-2"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("plain", "plain"), ("", ""), ("a=b", "a=b"), (3, 3), (None, None),
])
def test_csv_safe(value, expected):
    assert csv_safe(value) == expected


# --------------------------------------------------------------------------------------- export


def test_export_writes_blinded_sheets_and_key(run_dirs, tmp_path, capsys):
    out = tmp_path / "round"
    key = _export(run_dirs, out, "--annotators", "2", "--overlap", "1.0")
    assert "not in every run" in capsys.readouterr().out  # the excluded items are reported, not silently dropped
    assert key["excluded_items"] == {"run-good/20261121-000000-abcdef": ["e2e-0005"],
                                     "run-mid/20261121-000000-abcdef": ["e2e-0005"],
                                     "run-bad/20261121-000000-abcdef": ["e2e-0009"]}
    assert len(key["items"]) == 5 and key["units"] == 15
    for name in ("annotator-1", "annotator-2"):
        for ext in ("csv", "jsonl", "labelstudio.json"):
            assert (out / f"{name}.{ext}").exists()
    assert (out / "labelstudio-config.xml").read_text().count("<Rating ") == 4
    rows1 = [json.loads(x) for x in (out / "annotator-1.jsonl").read_text().splitlines()]
    rows2 = [json.loads(x) for x in (out / "annotator-2.jsonl").read_text().splitlines()]
    assert len(rows1) == len(rows2) == 15  # overlap 1.0: everyone rates every unit
    ids = [r["id"] for r in rows1 + rows2]
    assert len(set(ids)) == 30 and set(ids) == set(key["rows"])  # one blinded id per row, all in the key
    assert not any("run-" in r["id"] for r in rows1)
    assert {key["rows"][r["id"]]["unit"] for r in rows1} == {key["rows"][r["id"]]["unit"] for r in rows2}
    assert [key["rows"][r["id"]]["unit"] for r in rows1] != [key["rows"][r["id"]]["unit"] for r in rows2]  # own order
    # CSV cells that look like formulas are neutralised; the JSONL keeps the text as it is
    with open(out / "annotator-1.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert all(r["prompt"].startswith("'=SUM") and r["output"].startswith("'-run") for r in csv_rows)
    assert rows1[0]["prompt"].startswith("=SUM")
    # same seed, same plan
    key2 = _export(run_dirs, tmp_path / "again", "--annotators", "2", "--overlap", "1.0")
    assert key2["rows"] == key["rows"]


def test_export_overlap_and_pairwise_sides(run_dirs, tmp_path):
    key = _export(run_dirs, tmp_path / "pw", "--mode", "pairwise", "--annotators", "3", "--overlap", "0.4")
    assert key["units"] == 5 * 3  # 5 shared items x 3 pairs of runs
    assert key["shared_items"] == round(0.4 * 5) == 2 and key["shared_units"] == 2 * 3
    per_annotator, items_of = {}, {}
    for r in key["rows"].values():
        per_annotator.setdefault(r["annotator"], set()).add(r["unit"])
        items_of.setdefault(r["annotator"], set()).add(r["item_id"])
    common = set.intersection(*per_annotator.values())
    assert len(common) == 6 and len(set.intersection(*items_of.values())) == 2
    assert set.union(*per_annotator.values()) == {f"u{i}" for i in range(15)}  # every unit assigned at least once
    assert sum(len(v) for v in per_annotator.values()) == 3 * 6 + (15 - 6)
    # an annotator who gets an item gets every pair for it
    for name, units in per_annotator.items():
        assert len(units) == 3 * len(items_of[name])
    # left/right is randomised: each run appears both as A and as B
    assert {r["run_a"] for r in key["rows"].values()} == {r["run_b"] for r in key["rows"].values()}
    assert any(r["run_a"] != r["pair"][0] for r in key["rows"].values())
    assert any(r["run_a"] == r["pair"][0] for r in key["rows"].values())


def test_export_limit_and_errors(run_dirs, tmp_path, capsys):
    key = _export(run_dirs[:2], tmp_path / "lim", "--limit", "2", "--annotators", "1")
    assert len(key["items"]) == 2 and key["units"] == 4
    assert cli(["human", "export", str(run_dirs[0]), "--suite", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "samples/nope.jsonl: not found; suites with samples in this run: e2e" in capsys.readouterr().err
    assert cli(["human", "export", *map(str, run_dirs[:2]), "--suite", "e2e", "--out", str(tmp_path / "lim")]) == 2
    assert "exists" in capsys.readouterr().err  # a round is never overwritten without --force
    assert cli(["human", "export", str(run_dirs[0]), "--suite", "e2e", "--out", str(tmp_path / "y"),
                "--mode", "pairwise"]) == 2
    assert cli(["human", "export", str(run_dirs[0]), "--suite", "e2e", "--out", str(tmp_path / "z"),
                "--criteria", "Bad Name"]) == 2


# ------------------------------------------------------------------------------ round trips


def _fill_csv(path: Path, key: dict, annotator: str):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    for r in rows:
        assert r["id"].startswith(ID_PREFIX)  # CSV ids carry a prefix that keeps them text in a spreadsheet
        kid = r["id"][len(ID_PREFIX):]
        if key["mode"] == "pointwise":
            for c in key["criteria"]:
                r[c] = str(_fill_pointwise(key, annotator, kid, c))
        else:
            r["winner"] = _winner(key, kid).upper()  # case does not matter
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _fill_jsonl(path: Path, key: dict, annotator: str):
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for r in rows:
        if key["mode"] == "pointwise":
            for c in key["criteria"]:
                r[c] = _fill_pointwise(key, annotator, r["id"], c)
        else:
            r["winner"] = _winner(key, r["id"])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _labelstudio_export(path: Path, key: dict, annotator: str) -> Path:
    """What Label Studio's JSON export looks like for the imported tasks, filled programmatically."""
    tasks = json.loads(path.read_text())
    exported = []
    for n, t in enumerate(tasks, 1):
        bid = t["data"]["id"]
        if key["mode"] == "pointwise":
            result = [{"from_name": c, "to_name": "output", "type": "rating",
                       "value": {"rating": _fill_pointwise(key, annotator, bid, c)}} for c in key["criteria"]]
        else:
            choice = {"a": "A", "b": "B", "tie": "Tie"}[_winner(key, bid)]
            result = [{"from_name": "winner", "to_name": "output_a", "type": "choices", "value": {"choices": [choice]}}]
        result.append({"from_name": "comment", "to_name": "output", "type": "textarea", "value": {"text": ["ok"]}})
        exported.append({"id": 1000 + n, "data": t["data"], "annotations": [{"id": n, "completed_by": 1, "result": result,
                                                                              "was_cancelled": False}]})
    out = path.with_name(path.name.replace(".labelstudio.json", ".ls-export.json"))
    out.write_text(json.dumps(exported))
    return out


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "labelstudio"])
def test_pointwise_round_trip(run_dirs, tmp_path, fmt):
    out = tmp_path / "round"
    key = _export(run_dirs, out, "--annotators", "2", "--overlap", "1.0")
    sheets = []
    for a in key["annotators"]:
        if fmt == "csv":
            _fill_csv(out / f"{a}.csv", key, a)
            sheets.append(out / f"{a}.csv")
        elif fmt == "jsonl":
            _fill_jsonl(out / f"{a}.jsonl", key, a)
            sheets.append(out / f"{a}.jsonl")
        else:
            sheets.append(_labelstudio_export(out / f"{a}.labelstudio.json", key, a))
    assert _import(sheets, out / "key.json", out / "human.json") == 0
    res = json.loads((out / "human.json").read_text())
    assert res["rows_used"] == 30 and res["skipped_rows"] == 0 and res["not_returned"] == 0 and res["errors"] == []
    good = res["scores"]["run-good/20261121-000000-abcdef"]
    assert good["relevance"]["mean"] == 5 and good["relevance"]["n_items"] == 5 and good["relevance"]["n_ratings"] == 10
    mid = res["scores"]["run-mid/20261121-000000-abcdef"]
    assert mid["fluency"]["mean"] == pytest.approx(2.5) and mid["relevance"]["mean"] == 3
    # perfect agreement on relevance, imperfect on fluency; two annotators -> Cohen's kappa too
    assert res["agreement"]["relevance"]["krippendorff_alpha"] == pytest.approx(1.0)
    assert res["agreement"]["relevance"]["cohen_kappa"] == pytest.approx(1.0)
    assert 0 < res["agreement"]["fluency"]["krippendorff_alpha"] < 1
    assert res["agreement"]["fluency"]["units_multi_rated"] == 15


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "labelstudio"])
def test_pairwise_round_trip(run_dirs, tmp_path, fmt):
    out = tmp_path / "pw"
    key = _export(run_dirs, out, "--mode", "pairwise", "--annotators", "3", "--overlap", "1.0")
    sheets = []
    for a in key["annotators"]:
        if fmt == "csv":
            _fill_csv(out / f"{a}.csv", key, a)
            sheets.append(out / f"{a}.csv")
        elif fmt == "jsonl":
            _fill_jsonl(out / f"{a}.jsonl", key, a)
            sheets.append(out / f"{a}.jsonl")
        else:
            sheets.append(_labelstudio_export(out / f"{a}.labelstudio.json", key, a))
    assert _import(sheets, out / "key.json", out) == 0  # a directory: human.json inside it
    res = json.loads((out / "human.json").read_text())
    assert res["rows_used"] == 45
    pair = next(p for p in res["pairs"] if {p["model_a"], p["model_b"]} == {"run-good/20261121-000000-abcdef",
                                                                          "run-bad/20261121-000000-abcdef"})
    winner_rate = pair["win_rate_a"] if pair["model_a"].startswith("run-good") else pair["win_rate_b"]
    assert pair["n"] == 15 and winner_rate["value"] == 1.0
    assert winner_rate["ci95"][0] == pytest.approx(wilson_interval(15, 15)[0])
    order = [r["model"].split("/")[0] for r in res["elo"]["ranking"]]
    assert order == ["run-good", "run-mid", "run-bad"]
    bt = res["bradley_terry"]["models"]
    assert bt["run-good/20261121-000000-abcdef"]["score"] > bt["run-mid/20261121-000000-abcdef"]["score"] \
        > bt["run-bad/20261121-000000-abcdef"]["score"]
    assert res["bradley_terry"]["mle_exists"] is False  # run-good never lost: the prior keeps it finite
    assert res["agreement"]["winner"]["krippendorff_alpha"] == pytest.approx(1.0)
    assert res["agreement"]["winner"]["annotators"] == 3
    # the judgments it wrote feed `harness human elo`
    assert cli(["human", "elo", str(out / "human.judgments.jsonl"), "--orderings", "20", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["ranking"][0]["model"].startswith("run-good")


# --------------------------------------------------------------------------------- malformed


def test_malformed_csv_reports_every_problem_with_its_row(run_dirs, tmp_path, capsys):
    out = tmp_path / "bad"
    key = _export(run_dirs, out, "--annotators", "1", "--criteria", "relevance,fluency")
    path = out / "annotator-1.csv"
    _fill_csv(path, key, "annotator-1")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    rows[0]["relevance"] = "7"            # spreadsheet row 2: out of range
    rows[1]["fluency"] = ""               # row 3: missing rating
    rows[2]["id"] = "deadbeefdeadbeef"    # row 4: unknown id
    rows[3]["relevance"] = "good"         # row 5: not a number
    rows[4]["fluency"] = "4.5"            # row 6: not a whole number
    rows.append(dict(rows[5]))            # row 17: duplicate of row 7
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    assert _import([path], out / "key.json", out / "human.json") == 1
    err = capsys.readouterr().err
    for where, what in [("row 2", "relevance out of range: '7'"), ("row 3", "missing rating for fluency"),
                        ("row 4", "unknown id 'deadbeefdeadbeef'"), ("row 5", "relevance not a number: 'good'"),
                        ("row 6", "fluency out of range: '4.5'"), ("row 17", "duplicate id")]:
        assert f"{path}:{where}: {what}" in err
    assert not (out / "human.json").exists()  # nothing written without --allow-errors
    assert _import([path], out / "key.json", out / "human.json", "--allow-errors") == 0
    res = json.loads((out / "human.json").read_text())
    assert res["skipped_rows"] == 6 and res["rows_read"] == 16 and res["rows_used"] == 10
    assert res["not_returned"] == 5  # the 5 rows with bad ratings/ids were assigned but not usably returned
    assert {e["row"] for e in res["errors"]} == {"row 2", "row 3", "row 4", "row 5", "row 6", "row 17"}


def test_malformed_jsonl_and_labelstudio(run_dirs, tmp_path, capsys):
    out = tmp_path / "bad"
    key = _export(run_dirs, out, "--mode", "pairwise", "--annotators", "1")
    jl = out / "annotator-1.jsonl"
    _fill_jsonl(jl, key, "annotator-1")
    lines = jl.read_text().splitlines()
    lines[0] = lines[0].replace('"winner": "', '"winner": "x')  # line 1: invalid winner
    lines[1] = "{not json"                                        # line 2
    lines[2] = json.dumps({**json.loads(lines[2]), "winner": ""})  # line 3: missing
    jl.write_text("\n".join(lines) + "\n")
    ls = _labelstudio_export(out / "annotator-1.labelstudio.json", key, "annotator-1")
    tasks = json.loads(ls.read_text())
    tasks[0]["annotations"][0]["was_cancelled"] = True    # task 1: skipped in Label Studio -> missing rating
    tasks[1]["data"]["id"] = "0000000000000000"           # task 2: unknown id
    ls.write_text(json.dumps(tasks))
    assert _import([jl, ls], out / "key.json", out / "h.json") == 1
    err = capsys.readouterr().err
    assert f"{jl}:line 1: winner" in err and "is not one of a, b, tie" in err
    assert f"{jl}:line 2: not JSON" in err
    assert f"{jl}:line 3: missing rating for winner" in err
    assert f"{ls}:task 1: missing rating for winner" in err
    assert f"{ls}:task 2: unknown id '0000000000000000'" in err
    assert f"{ls}:task 3: duplicate id" in err  # the same rows came back in both sheets
    # a sheet of the wrong kind is a file-level error
    csv_path = tmp_path / "wrong.csv"
    csv_path.write_text("id,relevance\nabc,3\n")
    assert _import([csv_path], out / "key.json", out / "h.json") == 2  # a sheet that cannot be read: exit 2
    assert "missing column(s) winner" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ elo


def test_elo_cli_reports_bad_lines_and_writes_json(tmp_path, capsys):
    good = [{"item_id": i, "model_a": "x", "model_b": "y", "winner": "a" if i % 4 else "tie"} for i in range(20)]
    good += [{"item_id": i, "model_a": "z", "model_b": "x", "winner": "b", "judge": "gpt-4"} for i in range(20)]
    f = tmp_path / "j.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in good)
                 + json.dumps({"item_id": 1, "model_a": "x", "model_b": "x", "winner": "a"}) + "\n"
                 + json.dumps({"item_id": 2, "model_a": "x", "model_b": "y", "winner": "left"}) + "\n"
                 + json.dumps({"model_a": "x", "model_b": "y", "winner": "a"}) + "\n")
    assert cli(["human", "elo", str(f), "--orderings", "100"]) == 1
    err = capsys.readouterr().err
    assert f"{f}:41: model_a and model_b are the same" in err
    assert f"{f}:42: winner 'left'" in err and f"{f}:43: missing item_id" in err
    out = tmp_path / "elo.json"
    assert cli(["human", "elo", str(f), "--orderings", "100", "--allow-errors", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["model"] for r in res["ranking"]] == ["x", "y", "z"]
    assert res["matches"] == 40 and res["skipped_lines"] == 3 and res["orderings"] == 100
    x = res["ranking"][0]
    assert (x["wins"], x["ties"], x["losses"]) == (35, 5, 0)
    assert x["interval95"][0] <= x["elo"] <= x["interval95"][1]
    assert sum(r["elo"] for r in res["ranking"]) == pytest.approx(3000.0)
    assert "x" in capsys.readouterr().out
