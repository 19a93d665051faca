"""Malformed rows: a CSV quote that is never closed is one bad row at the line where it opened (not one row merged
from the lines it swallowed), and the bad rows under data.max_bad_share are named with their reasons where their
count is printed (the trainer, the evaluator's examples).

    python -m pytest tests/test_data_rows.py -q
"""

from __future__ import annotations

import csv
import json

import pytest

from harness import config, data
from harness.config import DataConfig
from harness.data.read import read_source
from harness.model.load import load_tokenizer


def _rows(path) -> list[tuple[int, object]]:
    """(row number, record dict or the bad row's reason)."""
    return [(n, r if isinstance(r, dict) else r.reason) for n, r in read_source(str(path)).records]


# ------------------------------------------------------------------------------ CSV quoting
def test_an_unterminated_quote_is_a_bad_row_where_it_opens(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text('instruction,input,output\nfine,,yes\n"never closed,,x\nthree,,3\nfour,,4\n', encoding="utf-8")
    rows = _rows(p)
    assert [n for n, _ in rows] == [2, 3, 4, 5]  # the swallowed lines 4 and 5 are rows of their own again
    assert rows[0][1] == {"instruction": "fine", "input": "", "output": "yes"}
    assert rows[1][1].startswith("unterminated quote: the quoted field opened on line 3 is still open at the end of "
                                 "the file, swallowing lines 4-5")
    assert rows[2][1] == {"instruction": "three", "input": "", "output": "3"}
    assert rows[3][1] == {"instruction": "four", "input": "", "output": "4"}
    with pytest.raises(data.DataError, match=r"row 3: unterminated quote"):
        data.read_rows(p)


def test_a_quote_closed_by_a_later_rows_quote_is_still_unterminated(tmp_path):
    # the stray quote on line 2 is "closed" by the opening quote on line 3; the merged record even has 3 values
    p = tmp_path / "q.csv"
    p.write_text('a,b,c\n"stray,x,y\n"quoted",2,3\nlast,4,5\n', encoding="utf-8")
    rows = _rows(p)
    assert [n for n, _ in rows] == [2, 3, 4]
    assert "unterminated quote: the quoted field opened on line 2" in rows[0][1] and "swallowing line 3" in rows[0][1]
    assert rows[1][1] == {"a": "quoted", "b": "2", "c": "3"} and rows[2][1] == {"a": "last", "b": "4", "c": "5"}


@pytest.mark.parametrize("ending", ["", "\n"])
def test_a_file_that_ends_inside_quotes(tmp_path, ending):
    p = tmp_path / "q.tsv"
    p.write_text(f'a\tb\nx\ty\nz\t"open{ending}', encoding="utf-8")
    rows = _rows(p)
    assert rows[0] == (2, {"a": "x", "b": "y"})
    assert rows[1][0] == 3 and "opened on line 3 is still open at the end of the file" in rows[1][1]


def test_properly_closed_multi_line_fields_are_kept(tmp_path):
    values = [{"instruction": "two\nlines", "input": 'a "quoted", comma', "output": "x\r\ny"},
              {"instruction": "\n\nstarts with blank lines", "input": "", "output": 'ends with a quote "'},
              {"instruction": "plain", "input": "", "output": "z"}]
    for newline in ("\n", "\r\n"):
        p = tmp_path / "ok.csv"
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(values[0]), lineterminator=newline)
            w.writeheader()
            w.writerows(values)
        assert data.read_rows(p) == values
        assert [n for n, _ in _rows(p)] == [2, 5, 8]  # the line where each record starts


def test_one_line_records_keep_their_old_reading(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text('a,b,c\n"x"y,2,3\ntoo,many,values,here\n', encoding="utf-8")  # lenient inner quote; wrong count
    rows = _rows(p)
    assert rows[0] == (2, {"a": "xy", "b": "2", "c": "3"})
    assert rows[1][0] == 3 and rows[1][1].startswith("4 values but the header has 3 columns")


# ----------------------------------------------------------------------- bad rows, described
def _stats(n_bad: int) -> dict:
    bad = [{"row": 10 * i + 3, "reason": f"reason {i}"} for i in range(n_bad)]
    return {"n_bad": n_bad, "bad_rows": bad, "row_numbers": "line"}


def test_describe_bad_rows_names_the_first_few_with_reasons():
    assert data.describe_bad_rows(_stats(0)) == ""
    assert data.describe_bad_rows(_stats(1)) == "1 malformed row skipped (row = line of the file):\n  row 3: reason 0"
    text = data.describe_bad_rows(_stats(8))
    assert text.splitlines() == ["8 malformed rows skipped (row = line of the file):", "  row 3: reason 0",
                                 "  row 13: reason 1", "  row 23: reason 2", "  row 33: reason 3", "  row 43: reason 4",
                                 "  ... and 3 more"]
    assert len(data.describe_bad_rows(_stats(8), k=2).splitlines()) == 4


def _planted(tmp_path):
    lines = [json.dumps({"instruction": f"Say hi to {i}.", "input": "", "output": f"Hi, {i}."}) for i in range(40)]
    lines[4] = json.dumps({"instruction": "no output"})  # line 5
    lines[9] = '{"instruction": "broken", '  # line 10
    p = tmp_path / "planted.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_eval_examples_print_the_bad_rows_with_reasons(tmp_path, capsys):
    cfg = DataConfig(name="planted", path=str(_planted(tmp_path)), val_size=0.5)
    assert len(data.load_eval_examples(cfg)) == 19  # half of the 38 good rows
    err = capsys.readouterr().err
    assert ("data=planted eval: 2 malformed rows skipped (row = line of the file):\n"
            "  row 5: missing field 'output'\n  row 10: invalid JSON") in err


def test_training_prints_the_bad_rows_with_reasons(tiny_overrides, tmp_path, capsys):
    from harness.pipeline import train_run

    ov = tiny_overrides + [f"data.path={_planted(tmp_path)}", "train.max_steps=1", "method=lora"]
    status, _ = train_run(config.compose(ov), ov)
    out = capsys.readouterr().out
    assert status == "completed"
    assert ("2 malformed rows skipped (row = line of the file):\n  row 5: missing field 'output'\n"
            "  row 10: invalid JSON") in out
    assert "manifest.json data.bad_rows lists the first 2" in out


def test_prepare_stats_feed_the_description(tmp_path):
    tok = load_tokenizer(config.compose(["model=tiny-llama"]).model)
    p = data.prepare(DataConfig(name="planted", path=str(_planted(tmp_path)), val_size=0), tok, max_length=64,
                     packing=False, add_bos=False)
    assert data.describe_bad_rows(p.stats).splitlines()[1:] == [
        "  row 5: missing field 'output'", "  row 10: invalid JSON: Expecting property name enclosed in double quotes "
        "at column 27"]
