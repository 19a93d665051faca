"""Evaluation throughput: the harness's evaluators against lm-eval run directly and a naive loop.

    python -m benchmarks.run --only evaluation [--quick]

Three measurements, each in its own child process with the model loaded once:
  perplexity   wikitext2: harness.eval.perplexity (via harness.eval.lm_eval.crosscheck_wikitext, lm-eval's own
               windows: stride = max_length) vs lm-eval's loglikelihood_rolling through simple_evaluate,
               same model, documents and window length; time of each and relative difference of the
               word perplexity. Repeated --reps times; medians.
  multiple     each task of --mc-task (comma-separated, e.g. hellaswag,arc_easy): our engine in exact mode
  choice       (harness.eval.lm_eval.build_lm: PackedHFLM around the model in memory) vs lm-eval run directly
               (HFLM(pretrained=<model dir>) + simple_evaluate, as `lm_eval --model hf` does) vs our fast mode
               (eval.mode=fast's plan on this device), interleaved in one process; items/s without model
               loading (reported apart), per-item predictions and |d loglik| against lm-eval, peak RSS above
               the start of each side, and for hellaswag the full 10,042 items' time at the measured rate.
  generation   harness.eval.generation.generate_batched (length-sorted, left-padded batches) vs one prompt at a
               time through model.generate, greedy, same prompts, max_new_tokens and stop tokens;
               generated tokens/s and how many outputs are identical.
"""

from __future__ import annotations

import time

from benchmarks import common


def _load(model: str, device: str = "cpu"):
    from harness import config
    from harness.model.load import load_model_and_tokenizer

    cfg = config.compose([f"model={model}", "tracker=none"])
    net, tok = load_model_and_tokenizer(cfg.model, device=device)
    net.eval()
    return cfg, net, tok


# ------------------------------------------------------------------------------- perplexity
def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _gpu_peak_mb(device: str, reset: bool = False) -> float | None:
    """On a GPU: the peak of torch's allocations so far in MiB (reset=True starts a new peak), else None."""
    if not device.startswith("cuda"):
        return None
    import torch

    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return peak


def child_perplexity(model: str, docs: int, max_length: int, batch_size: int, reps: int, device: str = "cpu") -> dict:
    from harness.eval.lm_eval import crosscheck_wikitext

    cfg, net, tok = _load(model, device)
    loaded_rss = _peak_rss_mb()
    from harness.config import PerplexitySuite
    from harness.eval.perplexity import load_documents, model_max_length, prefix_token_id, score_token_lists

    suite = PerplexitySuite(name="wikitext2", path="wikitext-2-raw/wiki.test.raw", max_length=max_length,
                            stride=max_length, batch_size=batch_size)
    from harness.eval import precision
    from harness.eval.perplexity import aggregate, document_rows

    picked = load_documents(suite)[:docs]
    toks = [tok(d.text, add_special_tokens=False)["input_ids"] for d in picked]
    L = model_max_length(net, cfg.model, max_length)

    def score(model) -> dict:  # ours on the model as given: word/byte perplexity over the documents
        scored = score_token_lists(model, toks, prefix_token_id(tok), tok.bos_token_id, L, L, batch_size)
        return aggregate(document_rows(picked, scored))

    score(net)  # lm-eval not run yet:
    harness_rss = _peak_rss_mb()  # the process's peak so far is the harness's (model + its scoring)
    gpu_peak = _gpu_peak_mb(device)
    fast_plan = precision.plan("fast", device)  # fast mode's side, when it is not fp32 on this CPU (bf16 where native)
    fast_net = precision.model_for(net, fast_plan) if fast_plan.dtype != "float32" else None
    runs, fast_s, fast = [], [], None
    for _ in range(reps):
        r = common.call(crosscheck_wikitext, net, tok, max_length=max_length, batch_size=batch_size, limit=docs,
                                       model_cfg=cfg.model, progress=False)
        runs.append(r)
        if fast_net is not None:
            t0 = time.perf_counter()
            fast = score(fast_net)
            fast_s.append(time.perf_counter() - t0)
    last = runs[-1]
    fast_rel = ({m: abs(fast[m] - last["ours"][m]) / abs(last["ours"][m]) for m in last["lm_eval"]}
                if fast is not None else None)
    return {"ours_s": [r["ours_wall_s"] for r in runs], "lm_eval_s": [r["lm_eval_wall_s"] for r in runs],
            "tokens": last["tokens"], "n_docs": last["n_docs"], "max_length": last["max_length"],
            "ours": last["ours"], "lm_eval": last["lm_eval"], "rel_diff": last["rel_diff"],
            "loaded_rss_mb": loaded_rss, "harness_rss_mb": harness_rss,
            "fast_precision": fast_plan.record(), "fast_s": fast_s, "fast": fast, "fast_rel_diff_vs_exact": fast_rel,
            "device": device, "gpu_peak_mb": {"harness": gpu_peak, "all": _gpu_peak_mb(device)}}


def perplexity_section(opts: common.Options) -> dict | list[dict]:
    missing = common.missing_modules("harness.eval.perplexity", "harness.eval.lm_eval")
    if missing:
        return {"eval": "perplexity", "error": f"not measured: {', '.join(missing)} missing"}
    r = common.run_child("evaluation", "child_perplexity",
                         {"model": opts.model, "docs": opts.ppl_docs, "max_length": opts.ppl_max_length,
                          "batch_size": 4, "reps": opts.reps}, opts.workdir / "eval", "perplexity", opts.timeout())
    ours, theirs = common.median(r["ours_s"]), common.median(r["lm_eval_s"])
    exact = {"eval": "perplexity (wikitext2)", "harness": r["tokens"] / ours, "reference": r["tokens"] / theirs,
            "unit": "tokens/s", "speed_ratio": theirs / ours, "harness_s": ours, "reference_s": theirs,
            "agreement": r["rel_diff"]["word_perplexity"], "agreement_kind": "rel. diff word ppl",
            "n": r["tokens"], "peak_rss_mb": f"{r['harness_rss_mb']:,.0f} harness, {r['peak_rss_mb']:,.0f} with lm-eval "
                                              f"(model loaded: {r['loaded_rss_mb']:,.0f})",
            "detail": {**r, "word_perplexity": r["ours"]["word_perplexity"]}}
    if not r["fast_s"]:  # fast mode is fp32 on this CPU: the same computation as the exact row
        return [exact]
    fast = common.median(r["fast_s"])
    return [exact, {"eval": f"perplexity (wikitext2), fast ({r['fast_precision']['dtype']})",
                    "harness": r["tokens"] / fast, "reference": r["tokens"] / theirs, "unit": "tokens/s",
                    "speed_ratio": theirs / fast, "harness_s": fast, "reference_s": theirs,
                    "agreement": r["fast_rel_diff_vs_exact"]["word_perplexity"],
                    "agreement_kind": "rel. diff word ppl vs exact", "n": r["tokens"],
                    "detail": {"precision": r["fast_precision"], "fast": r["fast"]}}]


# --------------------------------------------------------------------------- multiple choice
def _rss_mb() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _timed_peak(fn, device: str = "cpu"):
    """fn() -> (its result, wall seconds, peak memory in MiB: on a CPU the RSS above the RSS at the start, sampled
    every 20 ms; on a GPU torch's peak allocation during fn)."""
    import threading

    if device.startswith("cuda"):
        _gpu_peak_mb(device, reset=True)
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0, _gpu_peak_mb(device)
    start, peak, done = _rss_mb(), [0.0], threading.Event()

    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_mb() - start)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        wall = time.perf_counter() - t0
        done.set()
        t.join()
    return out, wall, max(peak[0], _rss_mb() - start)


def compare_samples(a: list[dict], b: list[dict]) -> dict:
    """Two runs of one multiple-choice task (lm-eval's logged samples, sorted by doc_id): the largest per-choice
    log-likelihood difference and how many items got the same acc, acc_norm and argmax choice."""
    lls_a, lls_b = ([[float(r[0]) for r in s["filtered_resps"]] for s in x] for x in (a, b))
    diffs = [abs(x - y) for xs, ys in zip(lls_a, lls_b, strict=True) for x, y in zip(xs, ys, strict=True)]
    same = sum(all(sa.get(k) == sb.get(k) for k in ("acc", "acc_norm"))
               and max(range(len(xs)), key=xs.__getitem__) == max(range(len(ys)), key=ys.__getitem__)
               for sa, sb, xs, ys in zip(a, b, lls_a, lls_b))
    return {"max_abs_diff": max(diffs), "identical_predictions": same, "items": len(lls_a),
            "requests": len(diffs)}


def lm_eval_direct(cfg, batch_size: int, device: str):
    """lm-eval's HF backend loading the model from its directory, as `lm_eval --model hf --model_args
    pretrained=<dir>,dtype=float32[,add_bos_token=True]` does: the reference side of every comparison."""
    from lm_eval.models.huggingface import HFLM

    from harness.model.load import local_dir

    return HFLM(pretrained=str(local_dir(cfg.model)), batch_size=batch_size, dtype="float32", device=device,
                **({"add_bos_token": True} if cfg.model.add_bos else {}))


def child_multiple_choice(model: str, task: str, items: int, batch_size: int, reps: int, fast: bool = True,
                          device: str = "cpu") -> dict:
    """One task, three sides in this process, interleaved (the order rotates each rep): ours in exact mode
    (harness.eval.lm_eval.build_lm: the PackedHFLM engine around the model in memory), lm-eval run directly
    (HFLM(pretrained=<model dir>), as `lm_eval --model hf` does) and ours in fast mode (precision.plan("fast")
    on this device). Each side is one simple_evaluate call with the same arguments; per-item log-likelihoods
    are compared."""
    import logging

    from lm_eval import simple_evaluate

    from harness.eval import precision
    from harness.eval.lm_eval import build_lm, task_manager, task_name

    cfg, net, tok = _load(model, device)
    t0 = time.perf_counter()
    direct = lm_eval_direct(cfg, batch_size, device)
    load_s = time.perf_counter() - t0
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    fast_plan = precision.plan("fast", device)
    sides = {"ours": build_lm(net, tok, batch_size, model_cfg=cfg.model), "lm_eval": direct}
    if fast:
        sides["fast"] = build_lm(precision.model_for(net, fast_plan), tok, batch_size, model_cfg=cfg.model)
    full, tm = task_name(task), task_manager([task])
    secs = {k: [] for k in sides}
    rss = {k: 0.0 for k in sides}
    samples: dict = {}
    acc: dict = {}
    names = list(sides)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            out, wall, peak = _timed_peak(lambda: simple_evaluate(
                model=sides[name], tasks=[full], limit=items, log_samples=True, task_manager=tm, bootstrap_iters=0,
                verbosity="ERROR"), device)
            secs[name].append(wall)
            rss[name] = max(rss[name], peak)
            samples[name] = sorted(out["samples"][full], key=lambda s: s["doc_id"])
            acc[name] = {k: out["results"][full].get(f"{k},none") for k in ("acc", "acc_norm")}
    return {"ours_s": secs["ours"], "lm_eval_s": secs["lm_eval"], "fast_s": secs.get("fast", []),
            "ours_acc": acc["ours"]["acc"], "lm_eval_acc": acc["lm_eval"]["acc"], "acc": acc,
            "vs_lm_eval": compare_samples(samples["ours"], samples["lm_eval"]),
            "fast_vs_exact": compare_samples(samples["fast"], samples["ours"]) if fast else None,
            "fast_precision": fast_plan.record(), "peak_rss_mb_above_start": rss, "direct_load_s": load_s,
            "items": items, "requests": sum(len(x["filtered_resps"]) for x in samples["ours"]), "device": device,
            "peak_kind": "gpu max allocated" if device.startswith("cuda") else "rss above start"}


HELLASWAG_ITEMS = 10042


def multiple_choice_section(opts: common.Options) -> list[dict]:
    """One exact row and one fast row per task in opts.mc_task (comma-separated)."""
    missing = common.missing_modules("harness.eval.lm_eval", "harness.eval.engine")
    if missing:
        return [{"eval": "multiple choice", "error": f"not measured: {', '.join(missing)} missing"}]
    rows = []
    for task in opts.mc_task.split(","):
        r = common.run_child("evaluation", "child_multiple_choice",
                             {"model": opts.model, "task": task, "items": opts.mc_items, "batch_size": 8,
                              "reps": opts.reps}, opts.workdir / "eval", f"multiple-choice-{task}", opts.timeout())
        ours, theirs, fast = common.median(r["ours_s"]), common.median(r["lm_eval_s"]), common.median(r["fast_s"])
        cmp = r["vs_lm_eval"]
        detail = {**r, "full_hellaswag_estimate_s": HELLASWAG_ITEMS / (r["items"] / ours) if task == "hellaswag" else None}
        rows.append({"eval": f"multiple choice ({task}), exact", "harness": r["items"] / ours,
                     "reference": r["items"] / theirs, "unit": "items/s", "speed_ratio": theirs / ours,
                     "harness_s": ours, "reference_s": theirs, "agreement": cmp["identical_predictions"] / cmp["items"],
                     "agreement_kind": f"share of identical predictions (max |d loglik| {cmp['max_abs_diff']:.1e})",
                     "n": r["items"], "peak_rss_mb": r["peak_rss_mb_above_start"], "detail": detail})
        if fast is not None:
            fc = r["fast_vs_exact"]
            rows.append({"eval": f"multiple choice ({task}), fast ({r['fast_precision']['dtype']})",
                         "harness": r["items"] / fast, "reference": r["items"] / theirs, "unit": "items/s",
                         "speed_ratio": theirs / fast, "harness_s": fast, "reference_s": theirs,
                         "agreement": fc["identical_predictions"] / fc["items"],
                         "agreement_kind": f"share of predictions as exact mode (max |d loglik| {fc['max_abs_diff']:.1e})",
                         "n": r["items"], "detail": {"precision": r["fast_precision"], "acc": r["acc"]}})
    return rows


# ------------------------------------------------------------------------------------ generation
def child_generation(model: str, data: str, prompts: int, batch_size: int, new_tokens: int, reps: int,
                     device: str = "cpu") -> dict:
    import torch

    from harness import config
    from harness.config import GenerationSuite
    from harness.data import load_eval_examples
    from harness.eval.generation import encode_prompt, generate_batched, generated_length, stop_token_ids

    cfg, net, tok = _load(model, device)
    data_cfg = config.compose([f"data={data}"]).data
    examples = list(load_eval_examples(data_cfg, limit=prompts))[:prompts]
    chat = bool(getattr(tok, "chat_template", None)) and data_cfg.use_chat_template
    texts = [tok.apply_chat_template(e.messages, add_generation_prompt=True, tokenize=False) if chat else e.prompt
             for e in examples]
    ids = [encode_prompt(t, tok, cfg.model.add_bos) for t in texts]
    eos = stop_token_ids(net, tok, chat=chat)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    suite = GenerationSuite(name="bench", data=data, batch_size=batch_size, max_new_tokens=new_tokens)
    batched_s, single_s, batched_tokens, single_tokens = [], [], 0, 0
    batched_out, single_out = [], []
    loaded_rss, batched_rss = _peak_rss_mb(), None
    for _ in range(reps):
        batched_out, counts, secs = common.call(generate_batched, net, tok, ids, suite, eos_ids=eos, progress=False)
        batched_s.append(secs)
        batched_rss = batched_rss or _peak_rss_mb()  # before the first one-at-a-time run
        batched_tokens = sum(counts)
        single_out, n_tok = [], 0
        t0 = time.perf_counter()
        with torch.inference_mode():
            for p in ids:  # the loop a user writes first: one prompt at a time
                x = torch.tensor([p], device=device)
                out = net.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                                   do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=eos,
                                   pad_token_id=pad)
                new = out[0, len(p):].tolist()
                n = generated_length(new, set(eos), pad)
                n_tok += n
                single_out.append(tok.decode(new[:n], skip_special_tokens=True).strip())
        single_s.append(time.perf_counter() - t0)
        single_tokens = n_tok
    same = sum(a == b for a, b in zip(batched_out, single_out))
    return {"batched_s": batched_s, "single_s": single_s, "batched_tokens": batched_tokens,
            "single_tokens": single_tokens, "identical_outputs": same, "prompts": len(ids),
            "loaded_rss_mb": loaded_rss, "batched_rss_mb": batched_rss, "device": device,
            "gpu_peak_mb": _gpu_peak_mb(device)}


def generation_section(opts: common.Options) -> dict:
    missing = common.missing_modules("harness.eval.generation", "harness.data")
    if missing:
        return {"eval": "generation", "error": f"not measured: {', '.join(missing)} missing"}
    r = common.run_child("evaluation", "child_generation",
                         {"model": opts.model, "data": opts.data, "prompts": opts.gen_prompts, "batch_size": opts.gen_batch,
                          "new_tokens": opts.gen_new_tokens, "reps": opts.reps}, opts.workdir / "eval", "generation",
                         opts.timeout())
    b, s = common.median(r["batched_s"]), common.median(r["single_s"])
    ours, theirs = r["batched_tokens"] / b, r["single_tokens"] / s
    return {"eval": f"generation (batch {opts.gen_batch} vs 1)", "harness": ours, "reference": theirs,
            "unit": "generated tokens/s", "speed_ratio": ours / theirs, "harness_s": b, "reference_s": s,
            "agreement": r["identical_outputs"] / max(r["prompts"], 1), "agreement_kind": "share of identical outputs",
            "n": r["prompts"], "peak_rss_mb": f"{r['batched_rss_mb']:,.0f} batched, {r['peak_rss_mb']:,.0f} with "
                                               f"one at a time (model loaded: {r['loaded_rss_mb']:,.0f})",
            "detail": r}


# ------------------------------------------------------------------------------ compute bound
def padded_tokens(lengths: list[int], batch_size: int) -> int:
    """Tokens a batched forward pays for: sequences longest first, cut into batches, each padded to its longest."""
    order = sorted(lengths, reverse=True)
    return sum(order[b] * len(order[b:b + batch_size]) for b in range(0, len(order), batch_size))


def flop_bound(requests: list[tuple[list[int], list[int]]], n_body: float, n_head: float, batch_size: int = 8,
               attn_width_layers: int = 0) -> dict:
    """How much faster the engine can be than lm-eval's HF loglikelihood on these encoded (context, continuation)
    requests where matrix products bound the speed (a CPU): the ratio of model FLOPs (2 per parameter per position;
    attention and log-softmax left out). lm-eval runs each request alone (context + continuation - 1 positions,
    batches padded to their longest) and computes the output layer at every position; the engine runs the rows
    harness.eval.engine plans (shared prefixes once, groups packed) and the output layer only where a continuation
    token is scored. Exact mode cannot beat this ratio: it computes every remaining product in fp32.
    Also the engine's own FLOPs (`engine_flop`), and with attn_width_layers (attention width x layers) its attention
    products over every padded row, masked pairs included (`engine_attention_flop`: 4 x width x layers x L^2 per row),
    from which a time at a given matmul peak follows (minutes_at_peak)."""
    from harness.eval import engine

    lm_tokens = padded_tokens([len(c) + len(t) - 1 for c, t in requests], batch_size)
    batches = engine.plan_batches(engine.plan_rows(requests), batch_size)
    widths = [(max(len(r.tokens) for r in b), len(b)) for b in batches]  # (padded row length, rows) per batch
    ours_tokens = sum(length * rows for length, rows in widths)
    scored = sum(len(t) for _, t in requests)
    lm_flop = 2 * lm_tokens * (n_body + n_head)
    ours_flop = 2 * (ours_tokens * n_body + scored * n_head)
    attention = 4 * attn_width_layers * sum(length ** 2 * rows for length, rows in widths)
    return {"requests": len(requests), "lm_eval_positions": lm_tokens, "engine_positions": ours_tokens,
            "scored_positions": scored, "flop_ratio": lm_flop / ours_flop, "engine_flop": ours_flop,
            "engine_attention_flop": attention}


def minutes_at_peak(bound: dict, peak_gflops: float) -> float:
    """Pure: the engine's time on a flop_bound's requests if every product ran at `peak_gflops` (a floor)."""
    return (bound["engine_flop"] + bound["engine_attention_flop"]) / (peak_gflops * 1e9) / 60


def task_flop_bounds(model: str, tasks: list[str], items: int, batch_size: int = 8,
                     peak_gflops: float | None = None) -> dict:
    """flop_bound for the first `items` items of each task (0: all), encoded by lm-eval's own pair encoding (trailing
    context whitespace moved to the continuation; no special tokens, as HFLM for a model without add_bos); no model
    runs, only its tokenizer and parameter counts. With peak_gflops, each task's minutes_at_peak."""
    import json
    from types import SimpleNamespace

    from lm_eval.api.model import TemplateLM
    from lm_eval.tasks import get_task_dict

    from harness import config
    from harness.eval.lm_eval import task_manager, task_name
    from harness.model.load import local_dir, load_tokenizer

    cfg = config.compose([f"model={model}", "tracker=none"])
    tok = load_tokenizer(cfg.model)
    with open(local_dir(cfg.model) / "config.json", encoding="utf-8") as f:
        mc = json.load(f)
    n_head = mc["vocab_size"] * mc["hidden_size"]
    n_body = _parameters(local_dir(cfg.model)) - (n_head if mc.get("tie_word_embeddings", True) else 2 * n_head)

    # lm-eval's own pair encoding (TemplateLM._encode_pair) over this tokenizer, without loading a model
    encoder = SimpleNamespace(backend="causal", tok_encode=lambda s: tok(s, add_special_tokens=False)["input_ids"])
    out = {}
    for name in tasks:
        task = get_task_dict([task_name(name)], task_manager([name]))[task_name(name)]
        task.build_all_requests(limit=items or None, rank=0, world_size=1)
        pairs = [TemplateLM._encode_pair(encoder, *inst.args) for inst in task.instances]
        heads = mc.get("num_attention_heads", 1)
        width_layers = (mc.get("head_dim") or mc["hidden_size"] // heads) * heads * mc["num_hidden_layers"]
        out[name] = flop_bound(pairs, n_body, n_head, batch_size, attn_width_layers=width_layers)
        if peak_gflops:
            out[name]["minutes_at_peak"] = minutes_at_peak(out[name], peak_gflops)
    return {"model": model, "items": items, "batch_size": batch_size, "n_body": n_body, "n_head": n_head,
            **({"peak_gflops": peak_gflops} if peak_gflops else {}), "tasks": out}


def _parameters(model_dir) -> int:
    """Parameters in a model directory's safetensors files (shapes only: nothing is loaded)."""
    from math import prod

    from safetensors import safe_open

    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            total += sum(prod(st.get_slice(k).get_shape()) for k in st.keys())
    return total


# ------------------------------------------------------------------------------------- driver
def run(opts: common.Options) -> dict:
    rows, notes = [], []
    for fn in (perplexity_section, multiple_choice_section, generation_section):
        try:
            if opts.out_of_time():
                raise common.ChildError("the run's time budget (--budget-min) was spent")
            got = fn(opts)
        except common.ChildError as exc:
            got = {"eval": fn.__name__.removesuffix("_section"), "error": f"not measured: {exc}"}
        for row in got if isinstance(got, list) else [got]:
            row["load_1m"] = common.load_now()
            if row.get("error"):
                notes.append(row["error"])
            rows.append(row)
    ppl = rows[0]
    goals = []
    if not ppl.get("error"):
        goals.append(common.goal("perplexity eval (exact mode) faster than lm-eval", ppl["speed_ratio"], "ratio ≥ 1.5",
                                 ppl["speed_ratio"] >= 1.5))
        goals.append(common.goal("perplexity agrees with lm-eval", ppl["agreement"], "rel. diff ≤ 1e-5",
                                 ppl["agreement"] <= 1e-5))
    else:
        goals.append(common.goal("perplexity eval 1.5x lm-eval, same result to 1e-5", None,
                                 "ratio ≥ 1.5, rel. diff ≤ 1e-5", None, ppl["error"]))
    gen = rows[-1]  # generation_section runs last (multiple choice gives a row per task and mode)
    if not gen.get("error"):
        goals.append(common.goal("batched generation vs one at a time, identical greedy outputs", gen["speed_ratio"],
                                 "ratio ≥ 5, all identical", gen["speed_ratio"] >= 5 and gen["agreement"] == 1.0))
    for row in rows:  # fast mode's goals, judged where it runs another dtype than exact mode (bf16 where native)
        if row.get("error") or ", fast (" not in row.get("eval", ""):
            continue
        if row["eval"].endswith("(float32)"):
            goals.append(common.goal(f"{row['eval']}: at least 6x lm-eval fp32", None, "ratio ≥ 6", None,
                                     "not measured: fast mode is fp32 on a CPU without native bf16 (the exact row)"))
            continue
        if row["eval"].startswith("perplexity"):
            goals.append(common.goal(f"{row['eval']}: at least 4x lm-eval fp32, word perplexity within 0.5%",
                                     row["speed_ratio"], "ratio ≥ 4, rel. diff ≤ 0.005",
                                     row["speed_ratio"] >= 4 and row["agreement"] <= 0.005))
        else:
            acc = row["detail"]["acc"]
            gap = max(abs(acc["fast"][k] - acc["lm_eval"][k]) for k in ("acc", "acc_norm") if acc["fast"].get(k) is not None)
            goals.append(common.goal(f"{row['eval']}: at least 6x lm-eval fp32, accuracy within 0.5 points",
                                     row["speed_ratio"], f"ratio ≥ 6, |d acc| ≤ 0.005 (here {gap:.3f})",
                                     row["speed_ratio"] >= 6 and gap <= 0.005))
    for row in rows:  # multiple choice, exact mode: the engine's goal
        if row.get("eval", "").startswith("multiple choice (") and row["eval"].endswith(", exact"):
            d = row["detail"]
            goals.append(common.goal(f"{row['eval']}: at least 2.5x lm-eval's items/s with identical predictions",
                                     row["speed_ratio"], "ratio ≥ 2.5, every prediction identical, |d loglik| ≤ 1e-4",
                                     row["speed_ratio"] >= 2.5 and row["agreement"] == 1.0
                                     and d["vs_lm_eval"]["max_abs_diff"] <= 1e-4))
            rss = d["peak_rss_mb_above_start"]
            notes.append(f"{row['eval']}: peak RSS above the start of each side (MiB, sampled every 20 ms): "
                         + ", ".join(f"{k} {v:.0f}" for k, v in rss.items())
                         + (f"; full HellaSwag (10,042 items) at this rate: {d['full_hellaswag_estimate_s'] / 60:.0f} min"
                            if d.get("full_hellaswag_estimate_s") else ""))
    notes.append("speed_ratio > 1 means the harness is faster (reference time ÷ harness time; for generation "
                 "batched tokens/s ÷ one-at-a-time tokens/s). Model loading is excluded from both sides.")
    return common.section(
        "evaluation", "Evaluation throughput: harness vs lm-eval direct vs one-at-a-time generation", rows,
        columns=["eval", "harness", "reference", "unit", "speed_ratio", "harness_s", "reference_s", "agreement",
                 "agreement_kind", "n", "peak_rss_mb", "load_1m"],
        goals=goals, notes=notes,
        params={"model": opts.model, "reps": opts.reps, "ppl_docs": opts.ppl_docs, "ppl_max_length": opts.ppl_max_length,
                "mc_task": opts.mc_task, "mc_items": opts.mc_items, "gen_prompts": opts.gen_prompts,
                "gen_batch": opts.gen_batch, "gen_new_tokens": opts.gen_new_tokens})


# ------------------------------------------------------------------------------------- attention
ATTENTION_SHAPES = ((1, 1024), (1, 512), (4, 256), (8, 128))  # (rows, positions): perplexity windows to packed rows


def attention_kernels(model: str = "smollm2-135m", reps: int = 9) -> list[dict]:
    """Fast mode's block-causal attention vs sdpa at the model's head shape (harness/eval/attention.py), per
    (rows, positions) of ATTENTION_SHAPES, bf16 and fp32: median ms of one call, interleaved."""
    import torch

    from harness import config
    from harness.eval import attention
    from harness.model.load import load_model_and_tokenizer

    net, _ = load_model_and_tokenizer(config.compose([f"model={model}", "tracker=none"]).model)
    heads, kv, dim = attention.head_shape(net)
    del net
    rows = []
    for dtype in ("bfloat16", "float32"):
        for batch, positions in ATTENTION_SHAPES:
            sdpa_ms, blocked_ms = attention.measure(heads, kv, dim, positions, reps, batch=batch, dtype=dtype)
            rows.append({"dtype": dtype, "rows": batch, "positions": positions, "heads": [heads, kv, dim],
                         "sdpa_ms": round(sdpa_ms, 2), "blocked_ms": round(blocked_ms, 2),
                         "speedup": round(sdpa_ms / blocked_ms, 2), "threads": torch.get_num_threads()})
    return rows


def static_cache_ab(model: str = "smollm2-135m", data: str = "alpaca-demo", prompts: int = 32, new_tokens: int = 64,
                    reps: int = 3) -> dict:
    """Greedy batched decoding (left-padded batch of `prompts`, `new_tokens` each) with transformers' dynamic KV cache
    (what harness/eval/generation.py uses) vs its static cache, interleaved: median seconds and whether the outputs
    are identical."""
    import torch

    from harness import config
    from harness.data import load_eval_examples

    _, net, tok = _load(model)
    examples = list(load_eval_examples(config.compose([f"data={data}"]).data, limit=prompts))[:prompts]
    texts = [tok.apply_chat_template(e.messages, add_generation_prompt=True, tokenize=False) for e in examples]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    kw = {"max_new_tokens": new_tokens, "do_sample": False, "pad_token_id": tok.pad_token_id or tok.eos_token_id}
    secs: dict[str, list[float]] = {"dynamic": [], "static": []}
    outs = {}
    with torch.inference_mode():
        for _ in range(reps):
            for impl in secs:
                t0 = time.perf_counter()
                outs[impl] = net.generate(**enc, **kw, **({"cache_implementation": "static"} if impl == "static" else {}))
                secs[impl].append(time.perf_counter() - t0)
    return {"dynamic_s": common.median(secs["dynamic"]), "static_s": common.median(secs["static"]), "all_s": secs,
            "identical": bool(torch.equal(outs["dynamic"], outs["static"])), "batch": list(enc["input_ids"].shape),
            "threads": torch.get_num_threads()}


def calibration_ab(model: str = "smollm2-135m", task: str = "hellaswag", items: int = 100, reps: int = 3) -> dict:
    """Fast mode's calibration of one task (harness/eval/lm_eval.py calibrate) as it was (the fast side's first items
    scored again) vs as it is (handed the run's own log-likelihoods), interleaved: median seconds of each."""
    import logging

    from harness.config import LmEvalConfig
    from harness.eval import lm_eval as le
    from harness.eval import precision

    cfg, net, tok = _load(model)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    fast_lm = le.build_lm(precision.model_for(net, precision.plan("fast", "cpu")), tok, 8, model_cfg=cfg.model)
    exact_lm = le.build_lm(net, tok, 8, model_cfg=cfg.model)
    lm_cfg = LmEvalConfig(tasks=[task], limit=items)
    run = le.item_loglikelihoods(fast_lm, task, lm_cfg, items)  # what the task's own run hands over
    secs: dict[str, list[float]] = {"rescored": [], "handed": []}
    out = {}
    for _ in range(reps):
        for side in secs:
            t0 = time.perf_counter()
            out[side] = le.calibrate(exact_lm, fast_lm, task, lm_cfg, fast=None if side == "rescored" else run)
            secs[side].append(time.perf_counter() - t0)
    return {"rescored_s": common.median(secs["rescored"]), "handed_s": common.median(secs["handed"]), "all_s": secs,
            "calibration": out, "task": task, "items": items}


if __name__ == "__main__":  # the multiple-choice section alone: python -m benchmarks.evaluation --tasks hellaswag,arc_easy
    import argparse
    import json

    ap = argparse.ArgumentParser(description="multiple choice: our engine (exact, fast) vs lm-eval run directly")
    ap.add_argument("--tasks", default="hellaswag,arc_easy")
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--flop-bound", action="store_true",
                    help="only the compute bound of the speed-up (task_flop_bounds): no model runs, seconds")
    ap.add_argument("--peak-gflops", type=float, default=None,
                    help="with --flop-bound: each task's minutes if every product ran at this many GFLOP/s "
                         "(e.g. the bf16 matmul peak of `--only matmul` times the threads)")
    ap.add_argument("--attention", action="store_true",
                    help="only fast mode's block-causal attention vs sdpa at the model's head shape (attention_kernels)")
    ap.add_argument("--static-cache", action="store_true",
                    help="only batched greedy decoding with the dynamic vs the static KV cache (static_cache_ab)")
    ap.add_argument("--calibration", action="store_true",
                    help="only fast mode's calibration of the first --tasks task, scored again vs handed the run's "
                         "numbers (calibration_ab)")
    a = ap.parse_args()
    if a.calibration:
        print(json.dumps(calibration_ab(a.model, a.tasks.split(",")[0], a.items, max(a.reps, 3)), indent=1))
        raise SystemExit(0)
    if a.static_cache:
        print(json.dumps(static_cache_ab(a.model), indent=1))
        raise SystemExit(0)
    if a.attention:
        print(json.dumps(attention_kernels(a.model), indent=1))
        raise SystemExit(0)
    if a.flop_bound:
        print(json.dumps(task_flop_bounds(a.model, a.tasks.split(","), a.items, peak_gflops=a.peak_gflops), indent=1))
        raise SystemExit(0)
    opts = common.Options(model=a.model, reps=a.reps, mc_task=a.tasks, mc_items=a.items)
    print(json.dumps(multiple_choice_section(opts), indent=1, default=str))
