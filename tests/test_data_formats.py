"""The data-format registry (harness/data/formats.py FORMATS): a new format is one entry and its functions, and
nothing outside formats.py branches on a format's name.

    python -m pytest tests/test_data_formats.py -q
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from harness import config, data
from harness.config import DataConfig
from harness.data import formats as F
from harness.data.prepare import training_rows
from harness.data.tokenize import plain_prompt, single_turn
from harness.eval import contamination as C
from harness.model.load import load_tokenizer

PKG = Path(__file__).resolve().parent.parent / "harness"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(config.compose(["model=tiny-llama"]).model)


def _qa_format() -> F.DataFormat:
    """A made-up format, `qa` (question -> answer), written only from the registry's building blocks."""
    def normalise(rec, data_cfg, fields, need_target):
        row = {"question": F.text_field(rec, "question", fields)}
        if need_target:
            row["answer"] = F.text_field(rec, "answer", fields)
        return row

    def prompt(row, data_cfg):
        user = "Q: " + row["question"]
        return single_turn(data_cfg.system_prompt, user), plain_prompt(data_cfg.system_prompt, user) + "A: "

    return F.DataFormat("qa", fields=("question", "answer"), target="answer", normalise=normalise,
                        split_key=lambda r: r["question"], prompt=prompt, encode=F.encode_completion,
                        texts=lambda r: [r[k] for k in ("question", "answer") if k in r])


def test_a_new_format_is_one_registry_entry(tmp_path, tok, monkeypatch):
    monkeypatch.setitem(F.FORMATS, "qa", _qa_format())
    rows = [{"q": f"What is {i} plus {i}?", "a": f"It is {2 * i}."} for i in range(20)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = DataConfig(name="qa", format="qa", path=str(path), fields={"question": "q", "answer": "a"}, val_size=0.25,
                     use_chat_template=False)
    # training: the prompt is masked, the answer + EOS carries the loss
    p = data.prepare(cfg, tok, max_length=64, packing=False, add_bos=False)
    assert (p.stats["train_rows"], p.stats["val_rows"], p.stats["n_bad"]) == (15, 5, 0)
    prompt = data.render_prompt(rows[0], tok, cfg, False)  # a file row: its columns are mapped by data.fields
    assert prompt == "Q: What is 0 plus 0?\nA: "
    ex = next(e for e in p.train + p.val if tok.decode(e["input_ids"]).startswith(prompt))
    k = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert ex["labels"][:k] == [-100] * k and tok.decode(ex["input_ids"][k:-1]) == "It is 0."
    assert ex["labels"][-1] == tok.eos_token_id
    # evaluation: the held-out questions with their answers as references, prompts rendered the same way
    examples = data.load_eval_examples(cfg)
    assert len(examples) == 5 and all(e.references == [f"It is {2 * int(e.prompt.split()[3])}."] for e in examples)
    assert data.render_prompt(examples[0], tok, cfg, False) == examples[0].prompt
    # contamination: training rows and their texts
    train = training_rows(cfg)
    assert len(train) == 15 and set(train[0]) == {"question", "answer"}
    assert C.texts_of_rows(train[:1]) == [train[0]["question"] + "\n" + train[0]["answer"]]


def test_an_unknown_format_names_the_registry(tmp_path, tok):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n", encoding="utf-8")
    with pytest.raises(data.DataError, match="data.format='qa': use one of alpaca, prompt_completion, chat, text"):
        data.prepare(DataConfig(name="t", format="qa", path=str(path)), tok, max_length=64, packing=False,
                     add_bos=False)


def test_each_format_tells_its_rows_apart_by_its_first_field():
    firsts = [f.fields[0] for f in F.FORMATS.values()]
    assert len(set(firsts)) == len(firsts)
    for fmt in F.FORMATS.values():
        assert F.row_format({fmt.fields[0]: "x"}) is fmt
        assert fmt.target in fmt.fields + ("",)


def _branches_on_a_format_name(tree: ast.AST) -> list[int]:
    """Lines comparing something.format with a string constant, or indexing a dict literal by something.format."""
    def is_format(node) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "format"

    def is_name(node) -> bool:
        return (isinstance(node, ast.Constant) and isinstance(node.value, str)) or (
            isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(is_name(e) for e in node.elts))

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(is_format(s) for s in sides) and any(is_name(s) for s in sides):
                lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and is_format(node.slice) and isinstance(node.value, ast.Dict):
            lines.append(node.lineno)
    return lines


def test_no_module_branches_on_a_data_format_name():
    found = {str(p.relative_to(PKG.parent)): lines for p in sorted(PKG.rglob("*.py"))
             if (lines := _branches_on_a_format_name(ast.parse(p.read_text(encoding="utf-8"))))}
    assert found == {}, "read what differs from harness.data.formats.FORMATS[data.format] instead"
    assert _branches_on_a_format_name(ast.parse('if cfg.data.format in ("chat", "text"): pass')) == [1]
