"""Tests for harness/generation.py: batching mechanics on the tiny random Llama (left padding,
stop strings, samples file, suite entry, peft wrapper, sampling seeds) and a slow E2E run on
SmolLM2-135M.

    python -m pytest tests/test_generation.py -x -q            # fast tier (tiny model)
    python -m pytest tests/test_generation.py -x -q -m slow    # SmolLM2-135M on 5 E2E examples
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest

from harness import atomic, config
from harness.config import GenerationSuite
from harness.eval.generation import (
    GenerationError,
    cut_at_stop,
    encode_prompt,
    fit_prompt,
    generated_length,
    length_sorted_batches,
    run_generation_suite,
    stop_token_ids,
    suite_config_hash,
    suite_data_config,
)
from harness.eval.metrics import compute
from harness.eval.scores import MetricError

DOCUMENTED_KEYS = {"kind", "metrics", "ci95", "signatures", "n", "config_hash", "wall_time_s", "tokens_per_s", "samples"}


@dataclass
class Example:
    """The fields of harness.data.EvalExample that generation uses."""

    id: str
    messages: list[dict]
    prompt: str
    references: list[str] = field(default_factory=list)


MRS = [
    "name[The Eagle], eatType[coffee shop]",
    "name[The Eagle], eatType[coffee shop], food[French], priceRange[moderate], area[riverside]",
    "name[Blue Spice]",
    "name[The Eagle], customer rating[3 out of 5], area[riverside], familyFriendly[yes], near[Burger King]",
    "name[Zizzi], food[French]",
    "name[The Eagle], eatType[coffee shop], food[French], priceRange[moderate], customer rating[3 out of 5], "
    "area[riverside], familyFriendly[yes], near[Burger King]",
]


def make_examples(n: int = 6) -> list[Example]:
    out = []
    for i in range(n):
        mr = MRS[i % len(MRS)]
        out.append(Example(f"e2e-{i:04d}", [{"role": "user", "content": mr}], f"MR: {mr}\nText:",
                           [f"The Eagle is a coffee shop number {i}.", "A French place."]))
    return out


@pytest.fixture(scope="module")
def tiny():
    import torch

    from harness.model.load import load_model_and_tokenizer

    # one thread: a 64-wide model gains nothing from more, and on a shared CPU it runs ~10x faster
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = config.compose(["model=tiny-llama", "data=e2e", "tracker=none"])  # suites on data=e2e reuse cfg.data
    model, tok = load_model_and_tokenizer(cfg.model)
    yield cfg, model, tok
    torch.set_num_threads(threads)


def suite(**kw) -> GenerationSuite:
    base = dict(name="e2e", data="e2e", batch_size=4, max_new_tokens=10, metrics=["bleu", "chrf", "rouge", "exact_match"])
    base.update(kw)
    return GenerationSuite(**base)


def run(tiny, tmp_path, s, examples=None, **cfg_changes):
    cfg, model, tok = tiny
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, bootstrap_samples=100, **cfg_changes))
    entry = run_generation_suite(model, tok, s, cfg, tmp_path, examples=examples or make_examples(), progress=False)
    rows = atomic.read_jsonl(tmp_path / entry["samples"])
    return entry, rows


# ------------------------------------------------------------------------------ pure helpers
def test_length_sorted_batches_cover_every_item_once_longest_first():
    lengths = [3, 9, 1, 9, 5, 2, 7]
    batches = length_sorted_batches(lengths, 3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    assert [len(b) for b in batches] == [3, 3, 1]
    with pytest.raises(GenerationError, match="batch_size"):
        length_sorted_batches(lengths, 0)


def test_cut_at_stop_uses_earliest_stop():
    assert cut_at_stop("abc\n\nQ: next ###", ["###", "\n\n"]) == "abc"
    assert cut_at_stop("no stops here", ["###"]) == "no stops here"
    assert cut_at_stop("x###", []) == "x###"


def test_generated_length_counts_to_eos_or_trailing_padding():
    assert generated_length([5, 6, 2, 0, 0], {2}, 0) == 3
    assert generated_length([5, 6, 7, 0, 0], {2}, 0) == 3
    assert generated_length([5, 6, 7], {2}, 0) == 3
    assert generated_length([2, 0], {2}, 2) == 1  # pad == eos


def test_fit_prompt_keeps_bos_and_the_end():
    assert fit_prompt([1, 10, 11, 12, 13], 3, keep_first=True) == [1, 12, 13]
    assert fit_prompt([1, 10, 11, 12, 13], 3, keep_first=False) == [11, 12, 13]
    assert fit_prompt([1, 2], 3, keep_first=True) == [1, 2]


# --------------------------------------------------------------------------- prompt rendering
def test_prompts_are_rendered_as_in_training_with_one_bos(tiny, tmp_path):
    from harness import data

    cfg, _, tok = tiny
    examples = make_examples(2)
    _, rows = run(tiny, tmp_path, suite(), examples=examples)
    e2e = cfg.data
    for r, ex in zip(rows, examples):
        expected = data.render_prompt(data.EvalExample(ex.id, ex.messages, ex.prompt, ex.references), tok, e2e, add_bos=False)
        assert r["prompt"] == expected
        assert r["prompt"].startswith("<|im_start|>user\n") and r["prompt"].endswith("<|im_start|>assistant\n")
    # plain prompt when the data config turns the chat template off
    plain = dataclasses.replace(cfg, data=dataclasses.replace(e2e, use_chat_template=False))
    _, rows = run((plain, tiny[1], tok), tmp_path / "plain", suite(), examples=examples)
    assert [r["prompt"] for r in rows] == [ex.prompt for ex in examples]
    chat = rows[0]["prompt"]
    ids = encode_prompt(chat, tok, add_bos=True)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert encode_prompt(tok.bos_token + "hi", tok, add_bos=True).count(tok.bos_token_id) == 1
    assert tok.bos_token_id not in encode_prompt(chat, tok, add_bos=False)


def test_end_of_turn_token_stops_chat_generation(tiny):
    _, model, tok = tiny
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_token_ids(model, tok, chat=True)
    assert im_end not in stop_token_ids(model, tok, chat=False)
    assert tok.eos_token_id in stop_token_ids(model, tok, chat=False)


# ------------------------------------------------------------------------------ tiny model runs
def test_batch_size_does_not_change_greedy_outputs(tiny, tmp_path):
    """Left padding with an attention mask: batch 4 (mixed prompt lengths) == one prompt at a time."""
    one, rows1 = run(tiny, tmp_path / "b1", suite(batch_size=1))
    four, rows4 = run(tiny, tmp_path / "b4", suite(batch_size=4))
    assert [r["prediction"] for r in rows1] == [r["prediction"] for r in rows4]
    assert [r["generated_tokens"] for r in rows1] == [r["generated_tokens"] for r in rows4]
    assert any(r["prediction"] for r in rows1)
    assert one["metrics"] == four["metrics"]
    assert one["config_hash"] == four["config_hash"]  # batch_size is left out of the hash


def test_config_hash_matches_the_evaluator():
    from harness.eval.registry import config_hash
    s = suite(stop=["\n"])
    assert suite_config_hash(s) == config_hash(dataclasses.asdict(s))
    assert suite_config_hash(s) != suite_config_hash(suite(max_new_tokens=11))


def test_samples_file_and_suite_entry(tiny, tmp_path):
    examples = make_examples(6)
    entry, rows = run(tiny, tmp_path, suite(), examples=examples)
    assert DOCUMENTED_KEYS <= set(entry)
    assert entry["kind"] == "generation" and entry["n"] == 6 and entry["samples"] == "samples/e2e.jsonl"
    assert set(entry["metrics"]) == {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match"}
    assert set(entry["ci95"]) == set(entry["metrics"])
    assert entry["signatures"]["bleu"].startswith("nrefs:2|")
    assert entry["generated_tokens"] == sum(r["generated_tokens"] for r in rows) > 0
    assert entry["tokens_per_s"] > 0
    # original order restored, every id present, references kept, per-item scores there
    assert [r["id"] for r in rows] == [e.id for e in examples]
    for r, e in zip(rows, examples):
        assert r["references"] == e.references
        assert {"prompt", "prediction", "bleu", "chrf", "rougeL", "exact_match"} <= set(r)
        assert 0 < r["generated_tokens"] <= 10
    # the corpus numbers are those of the written predictions
    again = compute(["bleu"], [r["prediction"] for r in rows], [r["references"] for r in rows], 0)
    assert again.metrics["bleu"] == pytest.approx(entry["metrics"]["bleu"])
    json.dumps(entry)  # plain JSON for eval.json


def test_stop_strings_cut_the_prediction(tiny, tmp_path):
    _, rows = run(tiny, tmp_path / "free", suite(max_new_tokens=16))
    # pick a stop string from the free-running output: an ASCII pair after the first character
    target = stop = None
    for i, r in enumerate(rows):
        text = r["prediction"]
        for k in range(1, len(text) - 1):
            if text[k : k + 2].isascii() and text[k : k + 2].isalnum():
                target, stop = i, text[k : k + 2]
                break
        if stop:
            break
    assert stop, "the tiny model produced no ASCII letters to stop on"
    _, cut = run(tiny, tmp_path / "cut", suite(max_new_tokens=16, stop=[stop]))
    expected = rows[target]["prediction"].split(stop)[0].strip()
    assert cut[target]["prediction"] == expected
    assert stop not in cut[target]["prediction"]
    assert cut[target]["generated_tokens"] <= rows[target]["generated_tokens"]
    for r in cut:
        assert stop not in r["prediction"]


def test_beam_search_and_no_repeat_ngram_run(tiny, tmp_path):
    entry, rows = run(tiny, tmp_path, suite(num_beams=2, no_repeat_ngram_size=2, length_penalty=0.8, max_new_tokens=8))
    assert entry["n"] == len(rows) == 6
    assert all(r["generated_tokens"] <= 8 for r in rows)


def test_sampling_is_seeded(tiny, tmp_path):
    s = suite(do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=12)
    _, a = run(tiny, tmp_path / "a", s, seed=1)
    _, b = run(tiny, tmp_path / "b", s, seed=1)
    _, c = run(tiny, tmp_path / "c", s, seed=2)
    assert [r["prediction"] for r in a] == [r["prediction"] for r in b]
    assert [r["prediction"] for r in a] != [r["prediction"] for r in c]


def test_peft_wrapped_model_generates_like_its_base(tiny, tmp_path):
    """A fresh LoRA adapter (B = 0) must not change greedy outputs, and the wrapper must work."""
    from peft import LoraConfig, get_peft_model

    cfg, model, tok = tiny
    _, base_rows = run(tiny, tmp_path / "base", suite())
    import copy

    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    _, peft_rows = run((cfg, wrapped, tok), tmp_path / "peft", suite())
    assert [r["prediction"] for r in peft_rows] == [r["prediction"] for r in base_rows]


def test_qlora_4bit_model_generates(tiny, tmp_path):
    """bitsandbytes 4-bit base (nf4, CPU) + a fresh LoRA adapter: generation runs, batching still exact."""
    import torch
    from peft import get_peft_model

    from harness.model.load import load_model_and_tokenizer
    from harness.model.methods import build_peft_config, build_quant_config

    cfg = config.compose(["model=tiny-llama", "data=e2e", "tracker=none", "method=qlora"])
    model, tok = load_model_and_tokenizer(cfg.model, quantization_config=build_quant_config(cfg.method, torch.float32))
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    wrapped = get_peft_model(model, build_peft_config(cfg.method, config.target_modules(cfg)))
    _, one = run((cfg, wrapped, tok), tmp_path / "b1", suite(batch_size=1, metrics=["bleu"]))
    entry, four = run((cfg, wrapped, tok), tmp_path / "b4", suite(batch_size=4, metrics=["bleu"]))
    assert entry["n"] == 6 and entry["generated_tokens"] > 0
    assert [r["prediction"] for r in one] == [r["prediction"] for r in four]


def test_unknown_metric_fails_before_generation(tiny, tmp_path):
    with pytest.raises(MetricError, match="Did you mean 'bleu'"):
        run(tiny, tmp_path, suite(metrics=["bleuu"]))
    assert not (tmp_path / "samples").exists()


def test_reference_free_suite_needs_no_metrics(tiny, tmp_path):
    examples = [dataclasses.replace(e, references=[]) for e in make_examples(3)]
    with pytest.raises(GenerationError, match="no references"):
        run(tiny, tmp_path, suite(), examples=examples)
    entry, rows = run(tiny, tmp_path, suite(metrics=[]), examples=examples)
    assert entry["metrics"] == {} and len(rows) == 3
    assert "bleu" not in rows[0]


def test_long_prompts_are_cut_from_the_left_and_counted(tiny, tmp_path):
    cfg, model, tok = tiny
    short = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, context_length=40))
    entry, rows = run((short, model, tok), tmp_path, suite(max_new_tokens=10))
    lengths = [len(encode_prompt(r["prompt"], tok, add_bos=True)) for r in rows]
    assert entry["truncated_prompts"] == sum(n > 30 for n in lengths) > 0
    assert entry["n"] == 6


def test_limit_and_duplicate_ids(tiny, tmp_path):
    entry, rows = run(tiny, tmp_path, suite(limit=2))
    assert entry["n"] == 2 and [r["id"] for r in rows] == ["e2e-0000", "e2e-0001"]
    dup = make_examples(2)
    dup[1].id = dup[0].id
    with pytest.raises(GenerationError, match="duplicate"):
        run(tiny, tmp_path, suite(), examples=dup)


def test_suite_data_config_composes_other_data_and_names_typos(tiny):
    cfg = config.compose(["model=tiny-llama", "data=alpaca-tiny", "tracker=none"])
    assert suite_data_config(suite(data="alpaca-tiny"), cfg) is cfg.data
    e2e = suite_data_config(suite(data="e2e"), cfg)
    assert e2e.name == "e2e" and e2e.eval_path
    with pytest.raises(config.ConfigError, match="Did you mean 'e2e'"):
        suite_data_config(suite(data="e2ee"), cfg)


def test_real_e2e_examples_through_the_data_stage(tiny, tmp_path):
    """No examples passed: the suite reads the E2E test set via harness.data (multi-reference items)."""
    cfg, model, tok = tiny
    entry = run_generation_suite(model, tok, suite(limit=3, max_new_tokens=4), cfg, tmp_path, progress=False)
    rows = atomic.read_jsonl(tmp_path / "samples" / "e2e.jsonl")
    assert entry["n"] == 3 and len({r["id"] for r in rows}) == 3
    assert all(len(r["references"]) >= 1 for r in rows)
    assert "name[" in rows[0]["prompt"]


# -------------------------------------------------------------------------------- slow: real model
@pytest.mark.slow
def test_smollm2_on_five_e2e_examples(tmp_path):
    """Five E2E test items through SmolLM2-135M-Instruct via the data stage: sane, scored output."""
    from harness.model.load import load_model_and_tokenizer

    cfg = config.compose(["model=smollm2-135m", "data=e2e", "tracker=none"])
    model, tok = load_model_and_tokenizer(cfg.model)
    s = GenerationSuite(name="e2e", data="e2e", limit=5, batch_size=5, max_new_tokens=40, metrics=["bleu", "chrf", "rouge"])
    entry = run_generation_suite(model, tok, s, cfg, tmp_path, progress=False)
    rows = atomic.read_jsonl(tmp_path / "samples" / "e2e.jsonl")
    assert entry["n"] == 5 and len(rows) == 5
    assert all(r["prediction"] for r in rows)
    assert all("<|im_end|>" not in r["prediction"] for r in rows)
    assert entry["metrics"]["bleu"] > 0 and entry["metrics"]["rouge1"] > 0.1
