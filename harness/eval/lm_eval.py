"""lm-eval stage: run lm-evaluation-harness tasks on the model already in memory.

    harness eval RUN_DIR eval=standard                 # hellaswag, arc_easy, arc_challenge, piqa
    harness eval model=smollm2-135m --crosscheck       # our wikitext2 perplexity vs lm-eval's

The model is wrapped in our PackedHFLM (harness/eval/engine.py: lm-eval's HFLM, pretrained=<model instance>, whose
loglikelihood requests are scored with shared prefixes packed once), so a freshly trained peft model is evaluated
without a save/reload. eval.mode (harness/eval/precision.py) decides the dtype; a fast mode that runs in another
dtype than fp32 records its deviation from exact mode on the first items of each task (`calibration`).
crosscheck_wikitext and the benchmarks' reference side use lm-eval's HFLM unchanged. Our offline tasks live in harness/eval/tasks/ (data from the shared kit) and
are registered with a TaskManager; short names (`hellaswag`) map to ours (`harness_hellaswag`).
Per task we keep lm-eval's own results JSON (lm_eval/<task>.json) and one line per item in
samples/<task>.jsonl ({id: doc_id, acc, acc_norm, target, pred}) for paired tests between runs.
lm_eval is imported only here and in engine.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import time
from pathlib import Path

from harness import atomic
from harness.config import LmEvalConfig, ModelConfig, PerplexitySuite
from harness.eval import attention
from harness.eval.metrics import declare_metric
from harness.eval.registry import SuiteContext, config_hash, register_suite_kind
from harness.run.progress import tqdm_through_display

TASK_DIR = Path(__file__).resolve().parent / "tasks"
SHORT_NAMES = ("hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "openbookqa", "social_iqa", "gsm8k",
               "wikitext")
# for the ETA only (lm_eval_cost): items in each task's evaluated split, and rough forward tokens per item
# (a multiple-choice item scores each choice after the context; gsm8k generates; wikitext is whole articles)
TASK_ITEMS = {"hellaswag": 10042, "arc_easy": 2376, "arc_challenge": 1172, "piqa": 1838, "winogrande": 1267,
              "openbookqa": 500, "social_iqa": 1954, "gsm8k": 1319, "wikitext": 62}
ITEM_TOKENS = {"gsm8k": 2000, "wikitext": 4000}


# What run_task writes to eval.json (task_metrics) and, per item, to samples/<task>.jsonl (sample_rows,
# merge_filters): 0/1 acc and acc_norm for multiple choice, exact_match per filter for generative tasks
# (gsm8k's second filter, harness_gsm8k.yaml, is named exact_match_flexible-extract), with lm-eval's stderr.
for _metric in ("acc", "acc_norm", "exact_match", "exact_match_flexible-extract"):
    declare_metric(_metric, higher_is_better=True, scale="binary", per_item=_metric)
    declare_metric(f"{_metric}_stderr", higher_is_better=None, scale="fraction")


def task_name(name: str) -> str:
    """Our task for a short name (hellaswag -> harness_hellaswag); other names pass through to lm-eval."""
    return f"harness_{name}" if name in SHORT_NAMES else name


def short_name(task: str) -> str:
    return task.removeprefix("harness_") if task.removeprefix("harness_") in SHORT_NAMES else task


def task_files(name: str) -> list[Path]:
    """The files that define one of our tasks (its YAML and utils.py), for the suite's config hash."""
    yaml_path = TASK_DIR / f"{task_name(name)}.yaml"
    return [yaml_path, TASK_DIR / "utils.py"] if yaml_path.exists() else []


def check_task_names(names: list[str], known) -> None:
    """Raise ValueError naming every task lm-eval does not know, with a suggestion."""
    import difflib

    errors = []
    for n in names:
        if task_name(n) not in known:
            close = difflib.get_close_matches(n, [*SHORT_NAMES, *known], n=1, cutoff=0.6)
            errors.append(f"lm-eval task {n!r} is unknown.{f' Did you mean {close[0]!r}?' if close else ''}")
    if errors:
        raise ValueError(" ".join(errors) + f" Offline tasks shipped here: {', '.join(SHORT_NAMES)} (harness/eval/tasks/).")


def task_manager(names: list[str]):
    """A TaskManager over harness/eval/tasks, plus lm-eval's built-ins (a slow index, and their data sets come
    from the Hub) only when a task is not ours. Unknown names fail here, before any model call."""
    from lm_eval.tasks import TaskManager

    ours = all(task_name(n).startswith("harness_") for n in names)
    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=not ours)
    check_task_names(names, set(tm.all_tasks))
    return tm


def bos_adding(tokenizer):
    """The tokenizer, or a copy that puts BOS in front of what it encodes when it does not already. lm-eval's
    add_bos_token=True only asks the tokenizer for its special tokens; `lm_eval --model hf` loads the tokenizer with
    add_bos_token=True, which turns BOS on, but an instance handed over is taken as it is: without this, a model
    with model.add_bos whose tokenizer adds no BOS by default would be scored without one. A copy, since the
    caller's tokenizer also renders prompts that put BOS in as text (harness/data/tokenize.py: with_bos)."""
    import copy

    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError("model.add_bos=true but the tokenizer has no bos_token; set model.add_bos=false.")
    if tokenizer.encode("a")[:1] == [bos]:
        return tokenizer
    out = copy.deepcopy(tokenizer)
    out.add_bos_token = True
    if out.encode("a") != [bos, *tokenizer.encode("a")]:  # BOS in front, and nothing else the tokenizer adds lost
        raise ValueError(f"model.add_bos=true but {type(tokenizer).__name__} cannot be made to add its BOS token "
                         "when encoding; set model.add_bos=false or use a tokenizer that adds it.")
    return out


def build_lm(model, tokenizer, batch_size: int = 8, max_length: int | None = None, model_cfg: ModelConfig | None = None,
             packed: bool = True):
    """An lm-eval LM around a model instance (no reload); BOS handling follows model.add_bos. packed: our engine
    (harness/eval/engine.py: lm-eval's HFLM with shared prefixes scored once), else lm-eval's HFLM unchanged."""
    import torch
    from lm_eval.models.huggingface import HFLM

    from harness.eval.engine import PackedHFLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-call warnings about model instances
    kwargs = {}
    if model_cfg is not None and model_cfg.add_bos:
        kwargs["add_bos_token"] = True
        tokenizer = bos_adding(tokenizer)
    if any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters()):
        # fast mode's bf16 model: log-softmax its logits in fp32 (lm-eval's default keeps the model's dtype, whose
        # 8-bit mantissa rounds a log-probability of -10 to a step of 0.06); only scored positions pay for it
        kwargs["softmax_dtype"] = "float32"
    cls = PackedHFLM if packed else HFLM
    return cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, **kwargs)


# ------------------------------------------------------------------------------ pure helpers
def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def sample_rows(samples: list[dict], output_type: str) -> list[dict]:
    """lm-eval's logged samples -> our rows, sorted by id (doc_id). Multiple choice: acc, acc_norm,
    target (gold index), pred (argmax log-likelihood), pred_norm (argmax per character of the choice,
    as acc_norm; absent for winogrande, whose choices are contexts);
    generation: exact_match per filter, target, pred (the filtered answer)."""
    rows = []
    for s in samples:
        row: dict = {"id": s["doc_id"]}
        if output_type == "multiple_choice":
            lls = [float(r[0]) for r in s["filtered_resps"]]
            doc = s.get("doc") or {}
            # the gold index: our docs carry it as `gold` (winogrande's lm-eval target is a string)
            row["target"] = doc["gold"] if isinstance(doc.get("gold"), int) else s["target"]
            row["pred"] = _argmax(lls)
            for key in ("acc", "acc_norm"):
                if key in s:
                    row[key] = int(round(float(s[key])))
            choices = doc.get("choices")
            if "acc_norm" in s and isinstance(choices, list) and len(choices) == len(lls):
                row["pred_norm"] = _argmax([ll / max(len(c), 1) for ll, c in zip(lls, choices)])
        else:
            resp = s.get("filtered_resps")
            row["pred"] = resp[0] if isinstance(resp, list) and resp else resp
            row["target"] = s.get("target")
            row["filter"] = s.get("filter")
            for key, value in s.items():
                if key.startswith("exact_match") and isinstance(value, (int, float)):
                    row[key] = value
        rows.append(row)
    return sorted(rows, key=lambda r: r["id"])


def merge_filters(rows: list[dict]) -> list[dict]:
    """Generative tasks log one sample per (doc, filter); fold them into one row per doc:
    exact_match_<filter>, pred_<filter>; `exact_match`/`pred` are the first filter's (strict-match)."""
    by_id: dict = {}
    for r in rows:
        f = r.get("filter") or "none"
        out = by_id.setdefault(r["id"], {"id": r["id"], "target": r.get("target")})
        out[f"exact_match_{f}"] = r.get("exact_match")
        out[f"pred_{f}"] = r.get("pred")
        if "exact_match" not in out:
            out["exact_match"], out["pred"] = r.get("exact_match"), r.get("pred")
    return [by_id[k] for k in sorted(by_id)]


def task_metrics(results: dict) -> dict[str, float]:
    """lm-eval's `metric,filter` keys -> ours: acc, acc_stderr, acc_norm, ...; generative filters keep a suffix
    (exact_match for strict-match, exact_match_flexible-extract ...)."""
    out = {}
    for key, value in results.items():
        if "," not in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        stderr = metric.endswith("_stderr")
        base = metric.removesuffix("_stderr")
        name = base if filt in ("none", "strict-match") else f"{base}_{filt}"
        out[name + ("_stderr" if stderr else "")] = float(value)
    return out


# ------------------------------------------------------------------------------------ running
def run_task(lm, name: str, lm_cfg: LmEvalConfig, run_dir: Path | None, gen_kwargs: dict | None = None,
             choices: list | None = None) -> dict:
    """One task -> eval.json suite entry (no config_hash); writes lm_eval/<name>.json and samples/<name>.jsonl.
    gen_kwargs override generation settings of generative tasks (e.g. {"max_gen_toks": 16}). `choices`, when
    given, receives each item's choice log-likelihoods (doc_id order; multiple choice only): fast mode's
    calibration compares them with exact mode's instead of scoring the slice again."""
    from lm_eval import simple_evaluate

    full = task_name(name)
    tm = task_manager([name])
    t0 = time.time()
    out = simple_evaluate(
        model=lm, tasks=[full], num_fewshot=lm_cfg.num_fewshot, limit=lm_cfg.limit or None,
        log_samples=True, task_manager=tm, random_seed=lm_cfg.seed,
        numpy_random_seed=lm_cfg.seed, torch_random_seed=lm_cfg.seed, fewshot_random_seed=lm_cfg.seed,
        bootstrap_iters=0, verbosity="ERROR", gen_kwargs=gen_kwargs,
    )
    wall = time.time() - t0
    results = out["results"][full]
    output_type = out["configs"][full]["output_type"]
    if choices is not None and output_type == "multiple_choice":
        choices.extend(choice_loglikelihoods(out["samples"][full]))
    rows = sample_rows(out["samples"][full], output_type)
    if output_type != "multiple_choice":
        rows = merge_filters(rows)
    metrics = task_metrics(results)
    metrics = _add_stderr(metrics, rows)
    entry = {
        "kind": "lm_eval", "task": full, "metrics": metrics, "n": len(rows), "limit": lm_cfg.limit,
        "num_fewshot": lm_cfg.num_fewshot, "wall_time_s": wall,
    }
    if run_dir is not None:
        run_dir = Path(run_dir)
        atomic.write_jsonl(run_dir / "samples" / f"{name}.jsonl", rows)
        record = {k: v for k, v in out.items() if k != "samples"}
        atomic.write_json(run_dir / "lm_eval" / f"{name}.json", record)
        entry["samples"] = f"samples/{name}.jsonl"
        entry["lm_eval_results"] = f"lm_eval/{name}.json"
    return entry


def _add_stderr(metrics: dict, rows: list[dict]) -> dict:
    """With bootstrap_iters=0 lm-eval still reports the analytic stderr of a mean; fill it from the rows
    if it came back missing ("N/A")."""
    import math

    for key in ("acc", "acc_norm", "exact_match"):
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if key in metrics and f"{key}_stderr" not in metrics and len(vals) > 1:
            m = sum(vals) / len(vals)
            metrics[f"{key}_stderr"] = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1) / len(vals))
    return metrics


def run_tasks(model, tokenizer, lm_cfg: LmEvalConfig, model_cfg: ModelConfig | None, run_dir: Path | None,
              on_result=None, on_start=None, precision=None, exact_model=None) -> dict:
    """Every task in lm_cfg.tasks -> {short name: suite entry}; on_start(name) before and on_result(name, entry)
    after each. lm-eval's own progress bars report to the run's display while one is active (quietly).
    precision (harness/eval/precision.py EvalPrecision): recorded in each entry as `mode` and `precision`;
    exact_model (the fp32 model, given when `model` runs in another dtype): each multiple-choice task's first
    CALIBRATION_ITEMS items are scored by it too, and their deviation from the task's own (fast) log-likelihoods
    is recorded as `calibration`."""
    lm = build_lm(model, tokenizer, lm_cfg.batch_size, model_cfg=model_cfg)
    exact_lm = None if exact_model is None else build_lm(exact_model, tokenizer, lm_cfg.batch_size, model_cfg=model_cfg)
    suites = {}
    with quietly():
        for name in lm_cfg.tasks:
            if on_start is not None:
                on_start(short_name(name))
            choices: list = []
            entry = run_task(lm, short_name(name), lm_cfg, run_dir, choices=choices)
            if precision is not None:
                entry["mode"], entry["precision"] = precision.mode, precision.record()
                entry["attention"] = attention.describe(model)
            if exact_lm is not None:
                cal = calibrate(exact_lm, lm, short_name(name), lm_cfg, fast=choices)
                if cal is not None:
                    entry["calibration"] = cal
            suites[short_name(name)] = entry
            if on_result is not None:
                on_result(short_name(name), entry)
    return suites


# ---------------------------------------------------------------------------------- calibration
CALIBRATION_ITEMS = 32  # items of each task scored in both precisions when fast mode runs in another dtype


def item_loglikelihoods(lm, name: str, lm_cfg: LmEvalConfig, limit: int) -> list[list[float]] | None:
    """Per item (doc_id order), the loglikelihood of each choice as `lm` scores it, for the first `limit` items;
    None for a task that is not multiple choice."""
    from lm_eval import simple_evaluate

    full = task_name(name)
    out = simple_evaluate(model=lm, tasks=[full], num_fewshot=lm_cfg.num_fewshot, limit=limit, log_samples=True,
                          task_manager=task_manager([name]), random_seed=lm_cfg.seed, numpy_random_seed=lm_cfg.seed,
                          torch_random_seed=lm_cfg.seed, fewshot_random_seed=lm_cfg.seed, bootstrap_iters=0,
                          verbosity="ERROR")
    if out["configs"][full]["output_type"] != "multiple_choice":
        return None
    return choice_loglikelihoods(out["samples"][full])


def choice_loglikelihoods(samples: list[dict]) -> list[list[float]]:
    """lm-eval's logged samples of a multiple-choice task -> each item's choice log-likelihoods, in doc_id order."""
    return [[float(r[0]) for r in s["filtered_resps"]] for s in sorted(samples, key=lambda s: s["doc_id"])]


def calibration_stats(exact: list[list[float]], fast: list[list[float]]) -> dict:
    """Deviation of fast-mode loglikelihoods from exact ones (same items, same choices): max and mean |delta|
    over every choice, and the share of items whose argmax (the acc prediction) is the same."""
    if len(exact) != len(fast) or any(len(a) != len(b) for a, b in zip(exact, fast)):
        raise ValueError("calibration: the two precisions scored different items or choices")
    deltas = [abs(a - b) for xs, ys in zip(exact, fast) for a, b in zip(xs, ys)]
    same = sum(_argmax(xs) == _argmax(ys) for xs, ys in zip(exact, fast))
    return {"items": len(exact), "requests": len(deltas), "max_abs_delta": max(deltas, default=0.0),
            "mean_abs_delta": sum(deltas) / len(deltas) if deltas else 0.0,
            "same_argmax": same / len(exact) if exact else 1.0}


def calibrate(exact_lm, fast_lm, name: str, lm_cfg: LmEvalConfig, items: int = CALIBRATION_ITEMS,
              fast: list[list[float]] | None = None) -> dict | None:
    """calibration_stats of one task's first `items` items (at most eval.lm_eval.limit); None when not multiple
    choice. `fast`: the fast side's choice log-likelihoods from the task's own run (its first items are the same
    documents: lm-eval's limit takes the first), so only the exact side is scored here; the numbers compared are
    the reported ones."""
    limit = min(items, lm_cfg.limit) if lm_cfg.limit else items
    exact = item_loglikelihoods(exact_lm, name, lm_cfg, limit)
    if exact is None:
        return None
    if fast is None or len(fast) < len(exact):
        fast = item_loglikelihoods(fast_lm, name, lm_cfg, limit)
    return calibration_stats(exact, fast[:len(exact)])


@contextlib.contextmanager
def quietly():
    """lm-eval without its noise: the tqdm bars of these modules of its own (each does `from tqdm import tqdm`)
    report to the harness display while one is active (one display; no carriage returns in logs), and the git
    commit it records is read without git's "fatal: not a git repository" on stderr outside a repository."""
    import importlib

    import lm_eval.evaluator as evaluator

    mods = [importlib.import_module(m) for m in ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface",
                                                 "harness.eval.engine")]
    original = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = _git_commit_hash
    try:
        with tqdm_through_display(mods):
            yield
    finally:
        evaluator.get_git_commit_hash = original


def _git_commit_hash():
    """lm_eval.loggers.utils.get_git_commit_hash, with git's stderr discarded."""
    from lm_eval.loggers.utils import get_commit_from_path

    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
    except (subprocess.CalledProcessError, OSError):
        return get_commit_from_path(os.getcwd())


def lm_eval_cost(cfg) -> dict[str, float]:
    """Rough forward tokens per task, for the ETA: items (eval.lm_eval.limit, else the split's size) x tokens
    per item x (1 + num_fewshot): few-shot examples lengthen every context."""
    ev = cfg.eval.lm_eval
    out = {}
    for task in ev.tasks:
        name = short_name(task)
        items = ev.limit or TASK_ITEMS.get(name, 1000)
        out[name] = items * ITEM_TOKENS.get(name, 400) * (1 + ev.num_fewshot)
    return out


# ---------------------------------------------------------------------------------- items
def task_items(task: str, limit: int = 0) -> list[str] | None:
    """The items of one of our offline tasks in doc_id order (the first `limit`; 0 = all), as the model sees
    them with every choice (or the answer) attached: hellaswag context + endings, multiple choice question +
    choices, gsm8k question + worked answer, wikitext the article. None for a task that is not ours."""
    import bz2
    import itertools

    from harness.eval.tasks import utils as tu

    task = short_name(task)
    if task not in SHORT_NAMES:
        return None
    if task == "hellaswag":  # 6 lines per item; a limit decompresses only the start of the file
        with bz2.open(tu.data_file(tu.HELLASWAG_FILE), "rt", encoding="utf-8", newline="\n") as f:
            lines = [line.rstrip("\n") for line in itertools.islice(f, 6 * limit if limit > 0 else None)]
        return ["\n".join([d["query"], *d["choices"]]) for d in tu.parse_hellaswag("\n".join(lines))]
    if task == "gsm8k":
        docs = tu.parse_gsm8k(tu.data_file(tu.GSM8K_FILE).read_text("utf-8"))
        items = [d["question"] + "\n" + d["answer"] for d in docs]
    elif task == "wikitext":
        items = [d["page"] for d in tu.load_wikitext()["test"]]
    else:
        items = ["\n".join([d["question"], *d["choices"]]) for d in tu.parse_mc_file(task)]
    return items[:limit] if limit > 0 else items


def lm_eval_items(cfg, name: str, entry: dict) -> tuple[list, list[str]] | None:
    """The items the task scored (doc_id 0 .. n-1: lm-eval's limit takes the first ones), for the
    contamination check; None for a task that is not ours."""
    items = task_items(name, limit=entry["n"])
    return None if items is None else (list(range(len(items))), items)


# -------------------------------------------------------------------------------- cross-check
def crosscheck_wikitext(model, tokenizer, max_length: int = 1024, batch_size: int = 4, limit: int = 0,
                        model_cfg: ModelConfig | None = None, path: str = "wikitext-2-raw/wiki.test.raw",
                        progress: bool = True) -> dict:
    """Our wikitext2 perplexity vs lm-eval's loglikelihood_rolling on the same model and documents.

    Ours runs with lm-eval's windows (stride == max_length, prefix token only at the start of each
    document), so the two must agree to float precision; returns both metric sets and relative diffs.
    """
    from lm_eval import simple_evaluate

    from harness.eval.perplexity import (
        aggregate,
        document_rows,
        load_documents,
        model_max_length,
        prefix_token_id,
        score_token_lists,
    )

    suite = PerplexitySuite(name="wikitext2", path=path, max_length=max_length, stride=max_length,
                            batch_size=batch_size, max_tokens=0)
    docs = load_documents(suite)
    if limit:
        docs = docs[:limit]
    toks = [tokenizer(d.text, add_special_tokens=False)["input_ids"] for d in docs]
    L = model_max_length(model, model_cfg, max_length)
    t0 = time.time()
    scored = score_token_lists(model, toks, prefix_token_id(tokenizer), tokenizer.bos_token_id,
                                          L, L, batch_size, bos_every_window=False,
                                          pad_id=tokenizer.pad_token_id or 0, progress=progress, desc="ours")
    ours_s = time.time() - t0
    rows = document_rows(docs, scored)
    ours = aggregate(rows)

    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=L, add_bos_token=False)
    t0 = time.time()
    with quietly():
        out = simple_evaluate(model=lm, tasks=["harness_wikitext"], limit=limit or None, log_samples=False,
                              task_manager=task_manager(["wikitext"]), bootstrap_iters=0, verbosity="ERROR")
    theirs_s = time.time() - t0
    res = out["results"]["harness_wikitext"]
    theirs = {m: float(res[f"{m},none"]) for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")}
    rel = {m: abs(ours[m] - theirs[m]) / abs(theirs[m]) for m in theirs}
    return {"ours": ours, "lm_eval": theirs, "rel_diff": rel, "n_docs": len(docs), "max_length": L,
            "tokens": sum(r["tokens"] for r in rows), "ours_wall_s": ours_s, "lm_eval_wall_s": theirs_s}


@register_suite_kind("lm_eval", order=2, names=lambda cfg: [short_name(t) for t in cfg.eval.lm_eval.tasks],
                     items=lm_eval_items, cost=lm_eval_cost)
def run_lm_eval(ctx: SuiteContext) -> None:
    ev = ctx.cfg.eval
    if not ev.lm_eval.tasks:
        return
    lm_hash = {k: v for k, v in dataclasses.asdict(ev.lm_eval).items() if k != "tasks"}

    def on_result(name: str, entry: dict) -> None:
        entry["config_hash"] = config_hash({"task": name, **lm_hash}, task_files(name))
        ctx.record(name, entry)

    from harness.eval import precision as prec
    from harness.model.load import model_device

    device = getattr(model_device(ctx.model), "type", "cpu")
    precision = prec.plan(ev.mode, device)
    model = prec.model_for(ctx.model, precision)
    exact = None if precision.dtype == "float32" else prec.exact_model_of(ctx.model, ctx.exact_model)
    run_tasks(model, ctx.tokenizer, ev.lm_eval, ctx.cfg.model, ctx.run_dir, on_result=on_result, on_start=ctx.begin,
              precision=precision, exact_model=exact)
