"""Tests for what `harness human import` does with input it did not write: sheets saved by Excel on Windows
(cp1252), ids a spreadsheet turned into numbers, malformed Label Studio exports and damaged key.json files.
Each ends in rows read or in one clear message with exit code 2, never a traceback.

    python -m pytest tests/test_human_input.py -q
"""

from __future__ import annotations

import csv
import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from harness.cli import main as cli
from harness.human import export
from harness.human.collect import read_ratings
from harness.human.sheets import ID_PREFIX, numeric_ids, resolve_id
from tests.test_human import _export, _fill_csv, _import, _labelstudio_export, make_run_dirs


@pytest.fixture
def run_dirs(tmp_path) -> list[Path]:
    return make_run_dirs(tmp_path)


def _rows(path: Path, encoding: str = "utf-8") -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding=encoding) as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _write(path: Path, fields: list[str], rows: list[dict], encoding: str = "utf-8") -> None:
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\r\n")
        w.writeheader()
        w.writerows(rows)


def _no_traceback(capsys) -> str:
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err + cap.out
    return cap.err


# ----------------------------------------------------------------------------------- encodings


def test_a_cp1252_sheet_from_excel_is_read_and_the_encoding_is_said(run_dirs, tmp_path, capsys):
    out = tmp_path / "r"
    key = _export(run_dirs, out, "--annotators", "1", "--criteria", "relevance")
    path = out / "annotator-1.csv"
    _fill_csv(path, key, "annotator-1")
    fields, rows = _rows(path)
    rows[0]["comment"] = "café \u2019nice\u2019 \u201cquote\u201d"  # é is 0xe9, ’ is 0x92 in cp1252
    _write(path, fields, rows, encoding="cp1252")
    assert b"\x92" in path.read_bytes()
    assert _import([path], out / "key.json", out / "human.json") == 0
    cap = capsys.readouterr()
    assert f"note: {path}: read as Windows-1252 (cp1252" in cap.out and "Traceback" not in cap.err
    assert json.loads((out / "human.json").read_text())["rows_used"] == 15
    good = read_ratings([path], key).good
    assert good[0]["comment"] == "café \u2019nice\u2019 \u201cquote\u201d"
    # a UTF-8 sheet with a byte-order mark (Excel's "CSV UTF-8") needs no note
    _write(path, fields, rows, encoding="utf-8-sig")
    assert _import([path], out / "key.json", out / "human.json") == 0
    assert "note:" not in capsys.readouterr().out


def test_a_sheet_in_no_known_encoding_is_a_clear_error(run_dirs, tmp_path, capsys):
    out = tmp_path / "r"
    _export(run_dirs, out, "--annotators", "1")
    bad = out / "annotator-1.csv"
    bad.write_bytes(bad.read_bytes() + "caf\u00e9".encode("cp1252") + b" \x81\x8d\r\n")  # 0x81: not UTF-8, not cp1252
    assert _import([bad], out / "key.json", out / "human.json") == 2
    err = _no_traceback(capsys)
    assert f"{bad}: not text in utf-8 or cp1252 (utf-8: byte 0xe9 at offset" in err and "cp1252: byte 0x81" in err
    assert "CSV UTF-8" in err
    assert not (out / "human.json").exists()
    # the same for a JSONL ratings file given to `harness human elo`
    j = tmp_path / "j.jsonl"
    j.write_bytes(b'{"item_id": 1, "model_a": "x", "model_b": "y", "winner": "a", "judge": "\x81"}\n')
    assert cli(["human", "elo", str(j)]) == 2
    assert f"{j}: not text" in _no_traceback(capsys)


# ------------------------------------------------------------------------------------------ ids
def excel(cell: str) -> str:
    """What Excel's General format does to a CSV cell on open + save: a number loses leading zeros and
    keeps 15 significant digits; more than 11 characters are shown (and saved) as 1.23457E+19."""
    if not re.fullmatch(r"\d+(\.\d*)?([eE][+-]?\d+)?", cell):
        return cell
    v = float(Decimal(cell))
    return str(int(v)) if v.is_integer() and v < 1e11 else f"{v:.5E}"


def libreoffice(cell: str) -> str:
    """LibreOffice: the number rounded to 15 significant digits, saved in full."""
    if not re.fullmatch(r"\d+(\.\d*)?([eE][+-]?\d+)?", cell):
        return cell
    return format(Decimal(format(float(Decimal(cell)), ".15g")), "f")


# 15 blinded ids (3 runs x 5 items, one annotator) that a spreadsheet reads as numbers
TRICKY = ["00123", "0000000000000042", "4711", "1e5", "12345678901234567890", "22345678901234567890",
          "32345678901234567890", "0012e3", "9007199254740993", "000000000000000000001", "31415926535897932384",
          "7", "0", "123456789012345678", "5e2"]


@pytest.mark.parametrize("app", [excel, libreoffice])
@pytest.mark.parametrize("written", ["as exported", "without the prefix"])
def test_ids_a_spreadsheet_would_mangle_survive_a_round_trip(run_dirs, tmp_path, monkeypatch, app, written):
    tokens = iter(TRICKY)
    monkeypatch.setattr(export, "_token", lambda rng, used: next(tokens))
    out = tmp_path / "r"
    key = _export(run_dirs, out, "--annotators", "1", "--formats", "csv,jsonl")
    assert set(key["rows"]) == set(TRICKY)
    path = out / "annotator-1.csv"
    _fill_csv(path, key, "annotator-1")
    fields, rows = _rows(path)
    assert sorted(r["id"] for r in rows) == sorted(ID_PREFIX + t for t in TRICKY)  # text to any spreadsheet
    if written == "without the prefix":  # a sheet from before the prefix, or one whose ids were retyped
        for r in rows:
            r["id"] = r["id"][len(ID_PREFIX):]
    opened = [{k: app(v) for k, v in r.items()} for r in rows]
    if written == "as exported":
        assert [r["id"] for r in opened] == [r["id"] for r in rows]  # the prefix keeps the id as it was
    else:
        assert {"123", "42", "0", "100000"} <= {r["id"] for r in opened}  # the spreadsheet did mangle them
        assert any(r["id"] in ("1.23457E+19", "12345678901234600000") for r in opened)
    _write(path, fields, opened)
    assert _import([path], out / "key.json", out / "human.json") == 0
    res = json.loads((out / "human.json").read_text())
    assert res["rows_used"] == 15 and res["errors"] == [] and res["not_returned"] == 0
    # JSONL keeps the plain id
    assert {json.loads(x)["id"] for x in (out / "annotator-1.jsonl").read_text().splitlines()} == set(TRICKY)


def test_a_number_that_fits_several_ids_is_not_guessed():
    ids = {"0123": {}, "00123": {}, "12345678901234567890": {}, "12345678901234567891": {}, "abc": {}}
    num = numeric_ids(ids)
    assert "abc" not in num
    assert resolve_id("id-0123", ids, num)[0] == "0123" and resolve_id("'00123", ids, num)[0] == "00123"
    blind, _, problem = resolve_id("123", ids, num)
    assert blind is None and "2 ids of this key fit it ('id-00123', 'id-0123')" in problem
    assert "fit" in resolve_id("1.23457E+19", ids, num)[2]
    assert resolve_id("124", ids, num)[2].startswith("unknown id '124'")
    assert resolve_id(" ", ids, num)[2] == "missing id"


# ------------------------------------------------------------------------------- Label Studio
LS_CASES = {
    "not JSON": "[{not json",
    "an object": {"tasks": []},
    "no tasks": [],
    "not tasks": [1, 2],
    "annotations not a list": [{"data": {"id": "x"}, "annotations": "done"}],
    "result missing": [{"data": {"id": "x"}, "annotations": [{"id": 1}]}],
    "result not a list": [{"data": {"id": "x"}, "annotations": [{"result": {"winner": "A"}}]}],
    "value not an object": [{"data": {"id": "x"}, "annotations": [{"result": [{"from_name": "winner", "value": "A"}]}]}],
    "choices not a list": [{"data": {"id": "x"}, "annotations": [{"result": [{"from_name": "winner",
                                                                              "value": {"choices": {"A": 1}}}]}]}],
    "comment not text": [{"data": {"id": "x"}, "annotations": [{"result": [{"from_name": "comment",
                                                                            "value": {"text": [1, 2]}}]}]}],
}


@pytest.mark.parametrize("case", sorted(LS_CASES))
def test_a_malformed_labelstudio_export_is_a_clear_error(run_dirs, tmp_path, capsys, case):
    out = tmp_path / "r"
    _export(run_dirs, out, "--mode", "pairwise", "--annotators", "1")
    bad = out / "export.json"
    payload = LS_CASES[case]
    bad.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    assert _import([bad], out / "key.json", out / "h.json") == 2
    err = _no_traceback(capsys)
    assert f"error: {bad}: " in err and ("Label Studio" in err) and "could not be read" in err
    assert not (out / "h.json").exists()


def test_the_unrated_task_file_is_named_as_such(run_dirs, tmp_path, capsys):
    out = tmp_path / "r"
    _export(run_dirs, out, "--mode", "pairwise", "--annotators", "1")
    tasks = out / "annotator-1.labelstudio.json"  # what export wrote: tasks, nobody has rated them
    assert _import([tasks], out / "key.json", out / "h.json") == 2
    assert "no task has an annotation" in _no_traceback(capsys)
    # --allow-errors skips rows, not a sheet that cannot be read
    assert _import([tasks], out / "key.json", out / "h.json", "--allow-errors") == 2


def test_a_good_sheet_beside_a_bad_one_is_not_used_without_the_bad_one(run_dirs, tmp_path, capsys):
    out = tmp_path / "r"
    key = _export(run_dirs, out, "--mode", "pairwise", "--annotators", "2")
    good = _labelstudio_export(out / "annotator-1.labelstudio.json", key, "annotator-1")
    assert _import([good, out / "missing.csv"], out / "key.json", out / "h.json") == 2
    assert f"error: {out / 'missing.csv'}: file not found" in _no_traceback(capsys)
    assert _import([good], out / "key.json", out / "h.json", "--allow-errors") == 0


# ------------------------------------------------------------------------------------ key.json
def _damage(key: dict, how: str):
    k = json.loads(json.dumps(key))
    if how == "rows missing":
        del k["rows"]
    elif how == "row without run":
        del next(iter(k["rows"].values()))["run"]
    elif how == "row not an object":
        k["rows"][next(iter(k["rows"]))] = "annotator-1"
    elif how == "unknown mode":
        k["mode"] = "ranking"
    elif how == "criteria not a list":
        k["criteria"] = "relevance"
    elif how == "annotator not in the key":
        next(iter(k["rows"].values()))["annotator"] = "annotator-9"
    elif how == "other schema":
        k["schema"] = 2
    elif how == "a list":
        k = [k]
    elif how == "other kind":
        k["kind"] = "something-else"
    return k


@pytest.mark.parametrize("how", ["invalid JSON", "not UTF-8", "rows missing", "row without run", "row not an object",
                                 "unknown mode", "criteria not a list", "annotator not in the key", "other schema",
                                 "a list", "other kind"])
def test_a_damaged_key_is_a_clear_error(run_dirs, tmp_path, capsys, how):
    out = tmp_path / "r"
    key = _export(run_dirs, out, "--annotators", "1", "--criteria", "relevance")
    sheet = out / "annotator-1.csv"
    _fill_csv(sheet, key, "annotator-1")
    kp = out / "key.json"
    if how == "invalid JSON":
        kp.write_text(kp.read_text()[:-20])
    elif how == "not UTF-8":
        kp.write_bytes(b"\x81\x8d" + kp.read_bytes())
    else:
        kp.write_text(json.dumps(_damage(key, how)))
    assert _import([sheet], kp, out / "h.json") == 2
    err = _no_traceback(capsys)
    assert f"error: --key {kp}: " in err or f"error: {kp}: " in err
    assert "harness human export" in err or "UTF-8" in err
    expected = {"invalid JSON": "not JSON", "rows missing": "rows is missing", "row without run": "has no run",
                "row not an object": "is not an object", "unknown mode": "mode is 'ranking'",
                "criteria not a list": "criteria is 'relevance'", "annotator not in the key": "annotator 'annotator-9'",
                "other schema": "schema is 2", "a list": "a JSON list", "other kind": "kind is 'something-else'"}
    assert expected.get(how, "not text") in err
