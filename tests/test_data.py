"""Tests for the data stage (harness/data.py) and the shipped data configs (conf/data/*.yaml).

    python -m pytest tests/test_data.py -x -q

Uses tiny-llama's locally built tokenizer (ChatML template) and small files written on the spot;
the shipped-config tests read the shared data kit ($HARNESS_DATA, default ../shared/data).
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from harness import config, data, paths
from harness.config import DataConfig
from harness.data.tokenize import n_loss
from harness.model.load import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    cfg = config.compose(["model=tiny-llama", "data=alpaca-tiny"])
    return load_tokenizer(cfg.model)


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


ALPACA = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep, move."},
    {"instruction": "Add the numbers.", "input": "12 and 30", "output": "42"},
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris."},
    {"instruction": "Describe a fox.", "input": "quick, brown", "output": "The quick brown fox jumps over the lazy dog."},
]


def write_json(path, rows):
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def dcfg(path, **kw) -> DataConfig:
    kw.setdefault("name", "t")
    kw.setdefault("val_size", 0)
    return DataConfig(path=str(path), **kw)


def prep(cfg, tok, max_length=256, packing=False, add_bos=False):
    return data.prepare(cfg, tok, max_length=max_length, packing=packing, add_bos=add_bos)


# ------------------------------------------------------------------------------ labels and prompts
@pytest.mark.parametrize("chat_template,template,add_bos", [(True, "alpaca", False), (False, "alpaca", True),
                                                            (False, "plain", False), (True, "alpaca", True)])
def test_labels_mask_exactly_the_prompt(tmp_path, tok, chat_template, template, add_bos):
    cfg = dcfg(write_json(tmp_path / "a.json", ALPACA), use_chat_template=chat_template, prompt_template=template,
               system_prompt="Be brief." if template == "plain" else "")
    p = prep(cfg, tok, add_bos=add_bos)
    assert len(p.train) == len(ALPACA) and p.stats["n_bad"] == 0
    for row, ex in zip(ALPACA, p.train):
        prompt = data.render_prompt(row, tok, cfg, add_bos)
        prompt_ids = enc(tok, prompt)
        k = len(prompt_ids)
        assert ex["input_ids"][:k] == prompt_ids  # training prompt == generation prompt, token for token
        assert ex["labels"][:k] == [-100] * k
        assert ex["labels"][k:] == ex["input_ids"][k:] and all(x != -100 for x in ex["labels"][k:])
        assert ex["input_ids"][-1] == tok.eos_token_id
        assert tok.decode(ex["input_ids"][k:-1]) == row["output"]
        assert ex["attention_mask"] == [1] * len(ex["input_ids"])
        assert prompt.startswith(tok.bos_token) == add_bos
        if chat_template:
            assert prompt.endswith("<|im_start|>assistant\n")
        elif template == "alpaca":
            assert prompt.endswith("### Response:\n") and row["instruction"] in prompt
        else:
            assert prompt == f"Be brief.\n\n{row['instruction']}" + (f"\n\n{row['input']}" if row["input"] else "") + "\n"
    assert p.stats["loss_tokens"] == sum(n_loss(e["labels"]) for e in p.train)


def test_completion_only_off_puts_loss_on_every_token(tmp_path, tok):
    p = prep(dcfg(write_json(tmp_path / "a.json", ALPACA), completion_only_loss=False), tok)
    for ex in p.train:
        assert ex["labels"] == ex["input_ids"]


def test_render_prompt_system_prompt_and_eval_example_agree(tmp_path, tok):
    cfg = dcfg(write_jsonl(tmp_path / "pc.jsonl", [{"src": "Hallo Welt", "tgt": "Hello world"}] * 3),
               format="prompt_completion", fields={"prompt": "src", "completion": "tgt"},
               eval_path=str(tmp_path / "pc.jsonl"), eval_fields={"prompt": "src", "references": "tgt"},
               system_prompt="Translate German to English:")
    (ex,) = data.load_eval_examples(cfg)  # three identical prompts, one reference column: one example
    assert ex.references == ["Hello world"] * 3
    assert ex.messages == [{"role": "system", "content": "Translate German to English:"},
                           {"role": "user", "content": "Hallo Welt"}]
    assert "### Instruction:\nTranslate German to English:\n\n### Input:\nHallo Welt\n\n### Response:\n" in ex.prompt
    file_row = {"src": "Hallo Welt"}
    for use in (True, False):
        c = dataclasses.replace(cfg, use_chat_template=use)
        assert data.render_prompt(ex, tok, c, False) == data.render_prompt(file_row, tok, c, False)
    assert data.render_prompt(ex, tok, cfg, False).startswith("<|im_start|>system\nTranslate German to English:")
    train = prep(cfg, tok).train[0]
    k = len(enc(tok, data.render_prompt(ex, tok, cfg, False)))
    assert train["labels"][k - 1] == -100 and train["labels"][k] != -100


# ------------------------------------------------------------------------------------- file types
def test_read_rows_every_file_type(tmp_path):
    rows = [{"instruction": "a, \"quoted\"", "input": "", "output": "line1\nline2"}, {"instruction": "b", "input": "x", "output": "y"}]
    write_json(tmp_path / "r.json", rows)
    write_jsonl(tmp_path / "r.jsonl", rows)
    import csv

    with open(tmp_path / "r.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import datasets

    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "r.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved_dict"))
    for name in ("r.json", "r.jsonl", "r.csv", "r.parquet", "saved", "saved_dict"):
        assert data.read_rows(tmp_path / name) == rows, name
    (tmp_path / "r.txt").write_bytes(b"first\r\nsecond\n\nfourth\n")
    assert data.read_rows(tmp_path / "r.txt") == [{"text": "first"}, {"text": "second"}, {"text": ""}, {"text": "fourth"}]
    assert data.read_rows(tmp_path / "r.jsonl", file_type="json") == rows  # JSON lines in a "json": detected
    with pytest.raises(data.DataError, match="data.file_type"):
        (tmp_path / "r.weird").write_text("x")
        data.read_rows(tmp_path / "r.weird")
    with pytest.raises(data.DataError, match="no split 'test'"):
        data.read_rows(tmp_path / "saved_dict", hub_split="test")


def test_missing_file_and_hub_id_offline_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(data.DataError, match="data file not found: .*nope.json.*HARNESS_DATA"):
        data.read_rows(tmp_path / "nope.json")
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path))
    with pytest.raises(data.DataError, match=r"Hub data set.*need network.*save_to_disk"):
        data.read_rows("no-such-user/no-such-dataset")


# -------------------------------------------------------------------------------------- bad rows
def _bad_jsonl(tmp_path):
    good = {"instruction": "Say hi.", "input": "", "output": "Hi."}
    lines = [json.dumps(good)] * 20
    lines[2] = '{"instruction": "broken", '  # line 3: bad JSON
    lines[4] = json.dumps({"instruction": "no output"})  # line 5: missing field
    lines[6] = json.dumps({"instruction": "x", "input": "", "output": "   "})  # line 7: empty
    lines[8] = json.dumps({"instruction": 5, "input": "", "output": "y"})  # line 9: not a string
    lines[10] = json.dumps([1, 2])  # line 11: not an object
    raw = "\n".join(lines).encode() + b"\n"
    raw = raw.replace(b'"Say hi."', b'"Say \xff hi."', 1)  # line 1: invalid UTF-8
    p = tmp_path / "bad.jsonl"
    p.write_bytes(raw)
    return p


def test_bad_rows_reported_with_line_numbers(tmp_path, tok):
    p = prep(dcfg(_bad_jsonl(tmp_path), max_bad_share=0.5), tok)
    bad = {b["row"]: b["reason"] for b in p.stats["bad_rows"]}
    assert sorted(bad) == [1, 3, 5, 7, 9, 11]
    assert "UTF-8" in bad[1] and "invalid JSON" in bad[3] and "missing field 'output'" in bad[5]
    assert "empty" in bad[7] and "int" in bad[9] and "not an object" in bad[11]
    assert p.stats["n_bad"] == 6 and p.stats["rows"] == 20
    assert len(p.train) + p.stats["n_bad"] == p.stats["rows"]  # nothing dropped silently


def test_too_many_bad_rows_raise_with_rows_and_fix(tmp_path, tok):
    with pytest.raises(data.DataError) as err:
        prep(dcfg(_bad_jsonl(tmp_path)), tok)  # default max_bad_share=0.05 < 6/20
    msg = str(err.value)
    assert "6 of 20 rows" in msg and "row 3: invalid JSON" in msg and "row 11:" in msg
    assert "data.max_bad_share" in msg and "bad.jsonl" in msg


def test_csv_bad_rows_use_file_line_numbers(tmp_path, tok):
    text = ('instruction,input,output\n"multi\nline",,ok\n'  # record on lines 2-3
            "a,,b\n"  # line 4
            "too,many,values,here\n"  # line 5
            "c,,\n")  # line 6: empty output
    (tmp_path / "d.csv").write_text(text, encoding="utf-8")
    p = prep(dcfg(tmp_path / "d.csv", max_bad_share=1.0), tok)
    assert {b["row"] for b in p.stats["bad_rows"]} == {5, 6}
    assert p.stats["rows"] == 4 and len(p.train) == 2 and p.stats["row_numbers"] == "line"


def test_all_rows_missing_target_explains_eval_only(tmp_path, tok):
    cfg = dcfg(write_jsonl(tmp_path / "q.jsonl", [{"text": "Why?"}] * 5), format="prompt_completion",
               fields={"prompt": "text"})
    with pytest.raises(data.DataError, match=r"(?s)missing field 'completion'.*columns are: text.*evaluation only"):
        prep(cfg, tok)


# ------------------------------------------------------------------------------- length handling
def test_truncation_counted_and_long_prompt_is_a_bad_row(tmp_path, tok):
    rows = [dict(ALPACA[0]), {"instruction": "short", "input": "", "output": "word " * 200},
            {"instruction": "long " * 300, "input": "", "output": "x"}]
    cfg = dcfg(write_json(tmp_path / "l.json", rows), max_bad_share=0.5, use_chat_template=False)
    p = prep(cfg, tok, max_length=128)
    assert p.stats["truncated_rows"] == 1
    assert [b["row"] for b in p.stats["bad_rows"]] == [3] and "prompt longer than max_length" in p.stats["bad_rows"][0]["reason"]
    assert all(len(e["input_ids"]) <= 128 for e in p.train) and len(p.train) == 2
    # without completion-only loss the long prompt is just truncated
    p2 = prep(dataclasses.replace(cfg, completion_only_loss=False), tok, max_length=128)
    assert p2.stats["n_bad"] == 0 and p2.stats["truncated_rows"] == 2


# ----------------------------------------------------------------------------- split and packing
def test_split_is_deterministic_by_seed_and_keeps_prompt_groups_together(tmp_path, tok):
    rows = [{"instruction": f"task {i // 3}", "input": "", "output": f"answer {i}"} for i in range(60)]
    cfg = dcfg(write_json(tmp_path / "s.json", rows), val_size=0.2)

    def val_prompts(seed):
        p = prep(dataclasses.replace(cfg, split_seed=seed), tok)
        return [tok.decode(e["input_ids"]) for e in p.val], [tok.decode(e["input_ids"]) for e in p.train], p.stats

    v0, t0, st = val_prompts(0)
    assert val_prompts(0)[0] == v0  # same seed, same split
    assert val_prompts(1)[0] != v0
    assert st["val_rows"] == 12 and st["train_rows"] == 48
    task = lambda s: s.split("answer")[0]  # noqa: E731
    assert not {task(x) for x in v0} & {task(x) for x in t0}  # no prompt on both sides
    p = prep(dataclasses.replace(cfg, val_size=5.0, max_rows=30), tok)
    assert p.stats["rows"] == 30 and p.stats["val_rows"] == 6  # 5 rows asked, whole groups of 3
    with pytest.raises(data.DataError, match="leaves no training rows"):
        prep(dataclasses.replace(cfg, val_size=60.0), tok)


def test_packing_preserves_tokens_and_labels(tmp_path, tok):
    rows = [{"instruction": f"Count to {i}.", "input": "", "output": " ".join(str(j) for j in range(i + 2))} for i in range(25)]
    cfg = dcfg(write_json(tmp_path / "p.json", rows))
    plain = prep(cfg, tok, max_length=64)
    packed = prep(cfg, tok, max_length=64, packing=True)
    assert packed.stats["packed"] and not plain.stats["packed"]
    assert all(len(b["input_ids"]) <= 64 and b["attention_mask"] == [1] * len(b["input_ids"]) for b in packed.train)
    assert len(packed.train) < len(plain.train)
    stream_ids = [t for e in plain.train for t in e["input_ids"] + ([] if e["input_ids"][-1] == tok.eos_token_id else [tok.eos_token_id])]
    stream_labels = [t for e in plain.train for t in e["labels"] + ([] if e["input_ids"][-1] == tok.eos_token_id else [-100])]
    assert [t for b in packed.train for t in b["input_ids"]] == stream_ids  # nothing lost or reordered
    assert [t for b in packed.train for t in b["labels"]] == stream_labels  # -100 stays -100
    n_sep = sum(e["input_ids"][-1] != tok.eos_token_id for e in plain.train)  # truncated rows get an EOS
    assert 0 < plain.stats["truncated_rows"] == n_sep and packed.stats["blocks_without_loss"] == 0
    assert packed.stats["train_tokens"] == len(stream_ids) == plain.stats["train_tokens"] + n_sep
    assert packed.val == plain.val  # validation is never packed


# --------------------------------------------------------------------------------- chat and text
def test_chat_loss_on_assistant_turns_only(tmp_path, tok):
    conv = {"conversations": [
        {"from": "human", "value": "What is 12 plus 30?"}, {"from": "gpt", "value": "42."},
        {"from": "human", "value": "And the capital of France?"}, {"from": "gpt", "value": "Paris."}]}
    bad = {"conversations": [{"from": "human", "value": "only a question"}]}
    cfg = dcfg(write_json(tmp_path / "c.json", [conv, conv, bad]), format="chat",
               fields={"messages": "conversations"}, max_bad_share=0.5)
    for use in (True, False):
        p = prep(dataclasses.replace(cfg, use_chat_template=use), tok)
        assert [b["row"] for b in p.stats["bad_rows"]] == [3]
        ex = p.train[0]
        loss_text = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100])
        assert "42." in loss_text and "Paris." in loss_text
        assert "12 plus 30" not in loss_text and "capital" not in loss_text
        assert tok.decode(ex["input_ids"], skip_special_tokens=False).count("Paris.") == 1
        assert ex["input_ids"][-1] == tok.eos_token_id and ex["labels"][-1] == tok.eos_token_id
    (ev,) = data.load_eval_examples(dataclasses.replace(cfg, eval_path=cfg.path))[:1]
    assert ev.references == ["Paris."] and ev.messages[-1] == {"role": "user", "content": "And the capital of France?"}


def test_raw_text_documents_and_chunks(tmp_path, tok):
    body = (" = First = \r\n Alpha beta gamma .\r\n \r\n = = Part = = \r\n Delta .\r\n"
            " = Second = \r\n Epsilon zeta .\r\n = Third = \r\n Eta theta iota kappa .\r\n")
    (tmp_path / "w.raw").write_bytes(body.encode())
    cfg = dcfg(tmp_path / "w.raw", format="text", val_size=1.0)
    p = prep(cfg, tok, max_length=8)
    assert p.stats["rows"] == 3 and p.stats["train_rows"] == 2 and p.stats["val_rows"] == 1
    docs = [" = First = \n Alpha beta gamma .\n \n = = Part = = \n Delta .\n", " = Second = \n Epsilon zeta .\n",
            " = Third = \n Eta theta iota kappa .\n"]
    doc_tokens = [len(enc(tok, d)) + 1 for d in docs]  # + EOS after each document
    assert all(len(b["input_ids"]) <= 8 and b["labels"] == b["input_ids"] for b in p.train + p.val)
    dropped = p.stats["tokens_without_loss"] + p.stats["val_tokens_without_loss"]  # 1-token tails predict nothing
    assert p.stats["train_tokens"] + p.stats["val_tokens"] + dropped == sum(doc_tokens)
    assert "\r" not in tok.decode([t for b in p.train + p.val for t in b["input_ids"]])
    # blank-line documents when there are no wikitext headings
    (tmp_path / "b.txt").write_text("one a\none b\n\n\ntwo\n\nthree\n")
    p = prep(dcfg(tmp_path / "b.txt", format="text"), tok, max_length=32)
    assert p.stats["rows"] == 3 and p.stats["packed"]


# ------------------------------------------------------------------------------------ evaluation
def test_eval_falls_back_to_the_val_split(tmp_path, tok):
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(40)]
    cfg = dcfg(write_json(tmp_path / "e.json", rows), val_size=0.25, split_seed=3)
    p = prep(cfg, tok)
    examples = data.load_eval_examples(cfg)
    assert len(examples) == p.stats["val_rows"] == 10
    train_text = " ".join(tok.decode(e["input_ids"]) for e in p.train)
    for ex in examples:
        q = ex.messages[-1]["content"]
        assert ex.id == f"t-{int(q[1:]) + 1:04d}" and ex.references == [f"a{q[1:]}"]
        assert f"\n{q}<|im_end|>" not in train_text
    assert len(data.load_eval_examples(cfg, limit=4)) == 4
    with pytest.raises(data.DataError, match="no rows are held out"):
        data.load_eval_examples(dataclasses.replace(cfg, val_size=0))


def test_explicitly_mapped_column_must_exist(tmp_path, tok):
    cfg = dcfg(write_json(tmp_path / "a.json", ALPACA), fields={"input": "context"})
    with pytest.raises(data.DataError, match="data.fields.input='context'.*no column 'context'.*instruction, input, output"):
        prep(cfg, tok)


def test_parallel_text_files_must_align(tmp_path):
    (tmp_path / "src.de").write_text("eins\nzwei\n")
    (tmp_path / "ref.en").write_text("one\n")
    cfg = dcfg(tmp_path / "src.de", format="prompt_completion", file_type="text", eval_path=str(tmp_path / "src.de"),
               eval_fields={"prompt": "text", "references": str(tmp_path / "ref.en")})
    with pytest.raises(data.DataError, match="2 lines.*has 1"):
        data.load_eval_examples(cfg)
    (tmp_path / "ref.en").write_text("one\ntwo\n")
    ex = data.load_eval_examples(cfg)
    assert [(e.id, e.messages[-1]["content"], e.references) for e in ex] == [("t-0000", "eins", ["one"]), ("t-0001", "zwei", ["two"])]


# --------------------------------------------------------------------------- shipped data configs
SHARED = paths.data_root()
needs_data = pytest.mark.skipif(not (SHARED / "MANIFEST.md").exists(), reason=f"shared data kit not at {SHARED}")


@pytest.mark.parametrize("name", config.group_options("data"))
def test_every_shipped_data_config_composes(name):
    cfg = config.compose([f"data={name}"])
    assert cfg.data.name == name and cfg.data.path
    header = (paths.conf_dir() / "data" / f"{name}.yaml").read_text().split("\n")[0]
    assert header.startswith("# ")


TRAINABLE = ["alpaca-demo", "alpaca-tiny", "e2e", "dialogsum", "wikitext2"]
EVAL_ONLY = ["wmt22-de-en", "vicuna-questions"]


@needs_data
@pytest.mark.parametrize("name", TRAINABLE)
def test_shipped_training_configs_load(name, tok):
    n = 5 if name == "wikitext2" else 40  # documents / rows
    d = config.compose([f"data={name}", f"data.max_rows={n}", "data.max_bad_share=0.5"]).data
    p = prep(d, tok, max_length=1024)
    assert p.stats["rows"] == n and p.train
    assert p.stats["files"][0]["sha256"] and p.stats["files"][0]["rows"] > 0
    assert p.stats["n_bad"] <= 2


@needs_data
@pytest.mark.parametrize("name", EVAL_ONLY)
def test_eval_only_configs_refuse_training(name, tok):
    with pytest.raises(data.DataError, match="evaluation only"):
        prep(config.compose([f"data={name}"]).data, tok)


@needs_data
def test_e2e_eval_groups_references_by_mr():
    examples = data.load_eval_examples(config.compose(["data=e2e"]).data)
    assert len(examples) == 630 and len({e.id for e in examples}) == 630
    assert sum(len(e.references) for e in examples) == 4693
    assert all(len(e.references) >= 1 for e in examples)
    assert sum(len(e.references) >= 2 for e in examples) > 600  # several references for nearly every MR
    assert examples[0].id == "e2e-0000" and examples[0].messages[-1]["content"].startswith("name[Blue Spice]")


@needs_data
def test_other_shipped_eval_sets():
    d = data.load_eval_set(config.compose(["data=dialogsum"]).data)
    assert d.stats["examples"] == 500 and all(len(e.references) == 3 for e in d.examples)
    assert d.examples[0].id == "dialogsum-test_0"
    w = data.load_eval_examples(config.compose(["data=wmt22-de-en"]).data)
    assert len(w) == 1984 and all(len(e.references) == 2 for e in w)
    assert w[0].references[0] == "The goods cost less than 20 euros."
    v = data.load_eval_examples(config.compose(["data=vicuna-questions"]).data)
    assert len(v) == 80 and all(e.references == [] for e in v) and v[0].id == "vicuna-questions-1"
    a = data.load_eval_examples(config.compose(["data=alpaca-demo"]).data)
    assert 90 <= len(a) <= 100
    with pytest.raises(data.DataError, match="perplexity"):
        data.load_eval_examples(config.compose(["data=wikitext2"]).data)
