"""Bad input to the commands users type: every row of the table gets exit code 2 and a message naming the key
(or the file) at fault, before any model loads, and never a traceback.

    python -m pytest -q tests/faults/test_bad_inputs.py

The sweep's own bad inputs (grid values, study names, unwritable runs roots) are tests/faults/bad_inputs.py and
test_sweep_faults.py; human-evaluation files are tests/test_human.py. This table is the single-run commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import cli

pytestmark = pytest.mark.faults

TINY = ["model=tiny-llama", "data=alpaca-tiny", "tracker=none", "eval=none", "train.max_steps=1"]

# (id, argv after `harness`, what the message must name); {tmp} is a fresh directory, {runs} its runs root
CASES = [
    ("lr nan", ["validate", "train.lr=nan"], "train.lr=nan"),
    ("lr inf", ["validate", "train.lr=inf"], "train.lr=inf"),
    ("dropout nan", ["validate", "method.dropout=nan"], "method.dropout"),
    ("batch size 0", ["validate", "train.batch_size=0"], "train.batch_size"),
    ("batch size nan", ["validate", "train.batch_size=nan"], "train.batch_size"),
    ("model path missing", ["validate", "model.source=hub", "model.path=/nonexistent/model-dir"], "model.path"),
    ("data path missing", ["validate", "data.path=/nonexistent/rows.jsonl"], "/nonexistent/rows.jsonl"),
    ("name with /", ["validate", "name=a/b"], "name 'a/b'"),
    ("name ..", ["validate", "name=.."], "name '..'"),
    ("run_id escapes", ["validate", "run_id=../x"], "run_id '../x'"),
    ("data.name with /", ["validate", "data.name=a/b"], "data.name 'a/b'"),
    ("model.name ..", ["validate", "model.name=../up"], "model.name '../up'"),
    ("unknown key", ["validate", "train.lrr=0.1"], "train.lrr"),
    ("unknown option", ["validate", "method=lorra"], "method"),
    ("train: name escapes", ["train", *TINY, "name=../../etc", "output_dir={runs}"], "name '../../etc'"),
    ("train: lr nan", ["train", *TINY, "train.lr=nan", "output_dir={runs}"], "train.lr=nan"),
    ("train: data.name ..", ["train", *TINY, "data.name=..", "output_dir={runs}"], "data.name '..'"),
    ("eval: not a run dir", ["eval", "{tmp}/no-such-run"], "no-such-run"),
    ("eval: dir without config", ["eval", "{tmp}"], "config.yaml"),
    ("report: unknown study", ["report", "no-such-study", "--runs-root", "{tmp}"], "no-such-study"),
    ("report: no runs root", ["report", "no-such-study", "--runs-root", "{tmp}/gone"], "--runs-root"),
]


@pytest.mark.parametrize("argv,names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_naming_the_key(argv, names, tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{runs}", str(runs)) for a in argv]
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse and the commands' own exits
        rc = exc.code
    out = capsys.readouterr()
    text = out.out + out.err
    assert rc == 2, f"exit {rc}: {text[-2000:]}"
    assert names in text, text[-2000:]
    assert "Traceback" not in text
    assert not list(runs.rglob("summary.json")) if runs.exists() else True  # refused before any run started


def test_a_30mb_row_is_a_bad_row_found_while_reading(tmp_path):
    """Checked while reading, before tokenising (which took 7.8 GB for such a row)."""
    from harness.data.read import MAX_ROW_CHARS, Broken, read_source

    rows = [{"instruction": f"say {i}", "input": "", "output": str(i)} for i in range(5)]
    rows.insert(2, {"instruction": "x" * (30 * 2**20), "input": "", "output": "y"})
    p = tmp_path / "rows.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    src = read_source(str(p))
    broken = [(n, r.reason) for n, r in src.records if isinstance(r, Broken)]
    assert [n for n, _ in broken] == [3] and f"{MAX_ROW_CHARS:,} characters" in broken[0][1]
    assert len(src.records) == 6  # counted, never dropped


def test_run_dir_config_never_turns_on_remote_code(tmp_path, capsys):
    """A run directory from someone else says trust_remote_code: true; only the person running eval decides."""
    import yaml

    from harness import config

    cfg = config.compose(["model=tiny-llama", "model.trust_remote_code=true"])
    Path(tmp_path / "config.yaml").write_text(yaml.safe_dump(config.to_dict(cfg)), encoding="utf-8")
    assert config.load_run_config(tmp_path).model.trust_remote_code is False
    assert "--trust-remote-code" in capsys.readouterr().err
    assert config.load_run_config(tmp_path, trust_remote_code=True).model.trust_remote_code is True
