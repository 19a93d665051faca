"""Generation suites: batched decoding on a held-out set, then BLEU / chrF / TER / ROUGE / exact match.

    harness eval RUN_DIR eval=<config with eval.generation suites>   # harness/eval/suites.py calls:
    entry = run_generation_suite(model, tokenizer, suite, cfg, run_dir)  # -> eval.json["suites"][suite.name]

Steps, top to bottom: load the examples of the data config named by `suite.data` (harness.data),
render each prompt with harness.data.render_prompt, exactly as training rendered it (the tokenizer's
chat template when it has one and data.use_chat_template, else the plain prompt; BOS in front when
model.add_bos), cut over-long prompts from the left (counted), sort by length, left-pad each batch and
decode (greedy, beam search or sampling seeded by eval.seed), stop at EOS / end-of-turn or a stop
string, cut the text at the first stop string, restore the original order, score with
harness.eval.metrics (95% bootstrap intervals), write samples/<suite>.jsonl and return the suite entry
documented in docs/run-record.md. Works with plain, peft-wrapped and bitsandbytes-quantized models.
Metrics themselves are pure functions in harness/eval/scores.py (named in harness/eval/metrics.py); this module is the I/O around them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from harness import atomic, paths
from harness.config import DataConfig, GenerationSuite, RunConfig
from harness.eval.metrics import MetricReport, check_metric_names, compute
from harness.eval.registry import SuiteContext, config_hash, register_suite_kind
from harness.run.progress import bar
from harness.eval.scores import exact_match_items, sentence_bleu, sentence_chrf, sentence_rouge
from harness.model.load import model_device

# end-of-turn markers of common chat templates (ChatML, Llama 3, Gemma): a chat model ends its answer
# with one of these rather than with the tokenizer's EOS, so generation stops on them too
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


class GenerationError(RuntimeError):
    """A generation suite that cannot run; the message names the input and the fix."""


# ----------------------------------------------------------------------------------- pure helpers
def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Item indices grouped into batches of similar length, longest first (an OOM shows at once)."""
    if batch_size < 1:
        raise GenerationError(f"batch_size={batch_size}: must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """Text up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for stop in stops:
        if stop:
            pos = text.find(stop)
            if pos != -1:
                cut = min(cut, pos)
    return text[:cut]


def generated_length(new_tokens: Sequence[int], eos_ids: set[int], pad_id: int | None) -> int:
    """How many of the new tokens the model really produced: up to and including the first EOS;
    without one, up to the trailing padding that generate() appends after a sequence stops."""
    for i, tok in enumerate(new_tokens):
        if tok in eos_ids:
            return i + 1
    n = len(new_tokens)
    if pad_id is not None:
        while n > 0 and new_tokens[n - 1] == pad_id:
            n -= 1
    return n


def fit_prompt(ids: list[int], limit: int, keep_first: bool) -> list[int]:
    """The prompt cut from the left to `limit` tokens (keeping a leading BOS when keep_first)."""
    if len(ids) <= limit:
        return ids
    if keep_first:
        return ids[:1] + ids[len(ids) - (limit - 1) :]
    return ids[len(ids) - limit :]


def suite_config_hash(suite: GenerationSuite) -> str:
    """sha256[:16] of the suite config without batch_size (it does not change the outputs: tested),
    the same formula as harness.eval.registry.config_hash."""
    fields = {k: v for k, v in dataclasses.asdict(suite).items() if k != "batch_size"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------ examples
@dataclass
class Rendered:
    id: str
    prompt: str  # the text the model saw (after the chat template), without a BOS
    ids: list[int]
    references: list[str]


def suite_data_config(suite: GenerationSuite, cfg: RunConfig) -> DataConfig:
    """The DataConfig a suite names: the run's own when it is the same name (keeping its overrides),
    else conf/data/<suite.data>.yaml composed and checked like any other config."""
    if suite.data == cfg.data.name:
        return cfg.data
    from harness import config

    return config.compose([f"data={suite.data}"]).data


def load_examples(suite: GenerationSuite, cfg: RunConfig, data_cfg: DataConfig) -> list[Any]:
    """The suite's held-out examples (harness.data.load_eval_examples), limited to suite.limit.
    A data config without eval_path yields the run's own val split (by data.split_seed, as in training)."""
    from harness.data import load_eval_examples

    examples = list(load_eval_examples(data_cfg, limit=suite.limit))
    return examples[: suite.limit] if suite.limit > 0 else examples


def encode_prompt(text: str, tokenizer, add_bos: bool) -> list[int]:
    """Token ids of a rendered prompt; BOS in front exactly once when add_bos (the template may hold it)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if add_bos:
        if tokenizer.bos_token_id is None:
            raise GenerationError("model.add_bos=true but the tokenizer has no BOS token; set model.add_bos=false")
        if not ids or ids[0] != tokenizer.bos_token_id:
            ids = [tokenizer.bos_token_id] + ids
    return ids


def stop_token_ids(model, tokenizer, chat: bool) -> list[int]:
    """EOS ids from the tokenizer and the model's generation config, plus end-of-turn tokens of chat templates."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    if chat:
        specials = set(getattr(tokenizer, "all_special_tokens", []))
        for tok in END_OF_TURN_TOKENS:
            if tok in specials or tok in getattr(tokenizer, "get_added_vocab", dict)():
                ids.add(int(tokenizer.convert_tokens_to_ids(tok)))
    return sorted(ids)


# ------------------------------------------------------------------------------------ decoding
def _generate_kwargs(suite: GenerationSuite, tokenizer, pad_id: int, eos_ids: list[int]) -> dict:
    kw: dict[str, Any] = dict(
        max_new_tokens=suite.max_new_tokens, num_beams=suite.num_beams, do_sample=suite.do_sample,
        pad_token_id=pad_id, eos_token_id=eos_ids, use_cache=True,
    )
    if suite.do_sample:
        kw.update(temperature=suite.temperature, top_p=suite.top_p)
    else:  # the model's own sampling defaults must not leak into greedy / beam decoding
        kw.update(temperature=None, top_p=None, top_k=None)
    if suite.num_beams > 1:
        kw.update(length_penalty=suite.length_penalty, early_stopping=True)
    if suite.no_repeat_ngram_size > 0:
        kw["no_repeat_ngram_size"] = suite.no_repeat_ngram_size
    if suite.stop:
        kw.update(stop_strings=list(suite.stop), tokenizer=tokenizer)
    return kw


def generate_batched(
    model, tokenizer, prompts: Sequence[list[int]], suite: GenerationSuite, seed: int = 0,
    eos_ids: Sequence[int] | None = None, progress: bool = True,
) -> tuple[list[str], list[int], float]:
    """Decode every prompt (token ids) -> (texts in input order, generated token counts, seconds).

    Prompts are sorted by length and left-padded per batch; texts are decoded without special
    tokens, cut at the first stop string and stripped.
    """
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise GenerationError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token first")
    eos = list(eos_ids) if eos_ids is not None else stop_token_ids(model, tokenizer, chat=False)
    eos_set = set(eos)
    kwargs = _generate_kwargs(suite, tokenizer, pad_id, eos)
    texts: list[str] = [""] * len(prompts)
    counts: list[int] = [0] * len(prompts)
    device = model_device(model)
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode(), bar(total=len(prompts), desc=f"generate {suite.name}", unit="ex",
                                         disable=not progress) as shown:
            for batch in length_sorted_batches([len(p) for p in prompts], suite.batch_size):
                width = max(len(prompts[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):  # left padding: the prompt ends where generation starts
                    ids = prompts[i]
                    input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                    mask[row, width - len(ids):] = 1
                out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs)
                for row, i in enumerate(batch):
                    new = out[row, width:].tolist()
                    n = generated_length(new, eos_set, pad_id)
                    text = tokenizer.decode(new[:n], skip_special_tokens=True)
                    texts[i] = cut_at_stop(text, suite.stop).strip()
                    counts[i] = n
                shown.update(len(batch))
    finally:
        model.train(was_training)
    return texts, counts, time.perf_counter() - t0


# ------------------------------------------------------------------------------------ the suite
def run_generation_suite(
    model, tokenizer, suite: GenerationSuite, cfg: RunConfig, run_dir: str | Path,
    examples: Sequence[Any] | None = None, progress: bool = True,
) -> dict:
    """Generate for every example of the suite, score, write samples/<suite>.jsonl, return the
    eval.json suite entry. `examples` (objects with id, messages, prompt, references) replace
    loading data=suite.data when given."""
    t_start = time.perf_counter()
    paths.check_name(suite.name, "generation suite name")
    check_metric_names(suite.metrics)  # fail before any decoding
    if suite.num_beams < 1 or suite.max_new_tokens < 1:
        raise GenerationError(
            f"suite {suite.name}: num_beams={suite.num_beams} and max_new_tokens={suite.max_new_tokens} must be >= 1"
        )
    if suite.do_sample and (suite.temperature <= 0 or not 0 < suite.top_p <= 1):
        raise GenerationError(
            f"suite {suite.name}: do_sample needs temperature > 0 and top_p in (0, 1]; got "
            f"temperature={suite.temperature}, top_p={suite.top_p}"
        )

    from harness.data import EvalExample, render_prompt  # the prompt exactly as training rendered it

    data_cfg = suite_data_config(suite, cfg)
    if examples is None:
        examples = load_examples(suite, cfg, data_cfg)
    else:  # any objects with the EvalExample fields
        examples = list(examples)[: suite.limit] if suite.limit > 0 else list(examples)
        examples = [e if isinstance(e, EvalExample) else EvalExample(
            id=str(e.id), messages=list(e.messages), prompt=e.prompt, references=list(e.references)) for e in examples]
    if not examples:
        raise GenerationError(f"suite {suite.name}: data={suite.data} gave no examples to generate for")
    seen: set[str] = set()
    dupes = []
    for e in examples:
        if str(e.id) in seen:
            dupes.append(str(e.id))
        seen.add(str(e.id))
    if dupes:
        raise GenerationError(f"suite {suite.name}: duplicate example ids {dupes[:5]}; ids must be unique to pair runs")
    if suite.metrics:
        missing = [str(e.id) for e in examples if not e.references]
        if missing:
            raise GenerationError(
                f"suite {suite.name}: {len(missing)} examples have no references (e.g. {missing[:5]}), so "
                f"{suite.metrics} cannot be computed. Use metrics: [] for reference-free suites (human / judge evaluation)."
            )

    use_chat = bool(data_cfg.use_chat_template and getattr(tokenizer, "chat_template", None))
    max_prompt = min(cfg.model.context_length, _position_limit(model)) - suite.max_new_tokens
    if max_prompt < 2:
        raise GenerationError(
            f"suite {suite.name}: max_new_tokens={suite.max_new_tokens} leaves no room for a prompt in the "
            f"model's context ({cfg.model.context_length}); lower max_new_tokens"
        )
    rendered, truncated = [], 0
    for ex in examples:
        text = render_prompt(ex, tokenizer, data_cfg, cfg.model.add_bos)
        ids = encode_prompt(text, tokenizer, cfg.model.add_bos)
        if cfg.model.add_bos and text.startswith(tokenizer.bos_token):
            text = text[len(tokenizer.bos_token) :]
        if not ids:
            raise GenerationError(f"suite {suite.name}: example {ex.id!r} renders to an empty prompt; fix the data row")
        fitted = fit_prompt(ids, max_prompt, keep_first=cfg.model.add_bos)
        truncated += len(fitted) < len(ids)
        rendered.append(Rendered(str(ex.id), text, fitted, [str(r) for r in ex.references]))
    if truncated:
        print(f"[harness] {suite.name}: {truncated} prompts longer than {max_prompt} tokens were cut from the left", flush=True)

    eos_ids = stop_token_ids(model, tokenizer, chat=use_chat)
    predictions, counts, gen_s = generate_batched(
        model, tokenizer, [r.ids for r in rendered], suite, seed=cfg.eval.seed, eos_ids=eos_ids, progress=progress
    )

    references = [r.references for r in rendered]
    report = MetricReport()
    if suite.metrics:
        report = compute(suite.metrics, predictions, references, cfg.eval.bootstrap_samples, cfg.eval.seed)
    rows = []
    for r, pred, n in zip(rendered, predictions, counts):
        row: dict[str, Any] = {"id": r.id, "prompt": r.prompt, "prediction": pred, "references": r.references,
                               "generated_tokens": n}
        if r.references:
            row["bleu"] = sentence_bleu(pred, r.references)
            row["chrf"] = sentence_chrf(pred, r.references)
            row["rougeL"] = sentence_rouge(pred, r.references)["rougeL"]
            if "exact_match" in suite.metrics:
                row["exact_match"] = exact_match_items([pred], [r.references])[0]
        rows.append(row)
    rel = f"samples/{suite.name}.jsonl"
    atomic.write_jsonl(Path(run_dir) / rel, rows)

    total = sum(counts)
    return {
        "kind": "generation",
        "metrics": report.metrics,
        "ci95": report.ci95,
        "signatures": report.signatures,
        "n": len(rendered),
        "limit": suite.limit,
        "config_hash": suite_config_hash(suite),
        "wall_time_s": round(time.perf_counter() - t_start, 3),
        "generation_time_s": round(gen_s, 3),
        "generated_tokens": total,
        "tokens_per_s": round(total / gen_s, 2) if gen_s > 0 else 0.0,
        "truncated_prompts": truncated,
        "samples": rel,
    }


def rescore_entry(entry: dict, rows: list[dict], suite: GenerationSuite, bootstrap_samples: int, seed: int) -> dict:
    """A generation suite's eval.json entry with its corpus metrics recomputed from the saved samples
    (each row's prediction and references) under suite.metrics: a metric added to a suite scores
    finished runs without decoding again. The entry's config_hash becomes that of `suite`, as a fresh
    evaluation with it would record; the caller checks that the decoding settings are unchanged."""
    check_metric_names(suite.metrics)
    if not rows or len(rows) != entry.get("n"):
        raise GenerationError(f"suite {suite.name}: {len(rows)} saved samples for n={entry.get('n')} in eval.json; "
                              "the samples file is missing or incomplete, so the suite must be run again")
    predictions = [str(r.get("prediction", "")) for r in rows]
    references = [[str(x) for x in r.get("references") or []] for r in rows]
    report = compute(suite.metrics, predictions, references, bootstrap_samples, seed)
    return {**entry, "metrics": report.metrics, "ci95": report.ci95, "signatures": report.signatures,
            "config_hash": suite_config_hash(suite), "rescored_from_samples": True}


def decoding_fields(suite: GenerationSuite) -> dict:
    """What decides a suite's outputs: everything but the metrics and the batch size."""
    return {k: v for k, v in dataclasses.asdict(suite).items() if k not in ("metrics", "batch_size")}


def _position_limit(model) -> int:
    """The model's maximum positions, from its config (peft and quantized wrappers included)."""
    conf = getattr(model, "config", None)
    n = getattr(conf, "max_position_embeddings", None) or getattr(conf, "n_positions", None)
    return int(n) if isinstance(n, int) and n > 0 else 1 << 30


def generation_items(cfg: RunConfig, name: str, entry: dict) -> tuple[list, list[str]]:
    """The suite's examples (its limit applied), as (their ids, their prompt content and references), for the
    contamination check."""
    from harness.eval.contamination import texts_of_rows

    suite = next(s for s in cfg.eval.generation if s.name == name)
    examples = load_examples(suite, cfg, suite_data_config(suite, cfg))
    return [str(e.id) for e in examples], texts_of_rows(examples)


def generation_cost(cfg) -> dict[str, float]:
    """Rough forward tokens per suite, for the ETA: items (limit, else a guess of 500) x (a prompt of ~128 tokens +
    each new token x beams, a decoding step costing about 4 tokens of a batched forward pass)."""
    return {s.name: (s.limit or 500) * (128 + 4 * s.max_new_tokens * s.num_beams) for s in cfg.eval.generation}


@register_suite_kind("generation", order=3, names=lambda cfg: [s.name for s in cfg.eval.generation],
                     items=generation_items, cost=generation_cost)
def run_generation(ctx: SuiteContext) -> None:
    for gsuite in ctx.cfg.eval.generation:
        ctx.begin(gsuite.name)
        entry = run_generation_suite(ctx.model, ctx.tokenizer, gsuite, ctx.cfg, ctx.run_dir)
        entry.setdefault("config_hash", config_hash(dataclasses.asdict(gsuite)))
        ctx.record(gsuite.name, entry)
