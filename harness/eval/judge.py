"""Model judge: a local model compares two runs' generations on the same prompts, in both orders, and writes the
judgments JSONL that `harness human elo` reads (so model and human judges rank side by side).

    harness judge RUN_A RUN_B --suite vicuna [--judge model=smollm2-135m] [--template FILE] [--out FILE]

For every item id present in both runs' samples/<suite>.jsonl (a generation suite: id, prompt, prediction) and
every order (A-B, then B-A), the judge prompt (DEFAULT_TEMPLATE, or --template: a text file with {question},
{answer_a}, {answer_b}) goes to the judge model as one user turn of its chat template (plain text followed by
"\\nVerdict:" for a model without one). The verdict is read from the judge's log-probabilities of the three
answers "A", "B" and "tie" right after the prompt (summed over each label's tokens): the most likely label wins,
and with tie_margin > 0 a gap |logp(A) - logp(B)| below it is a tie. calibrate=True first subtracts the labels'
log-probabilities on a content-free prompt (a small judge's fixed liking for "A" then no longer decides). No free-form text is parsed, so even a
135M judge gives a verdict for every pair (how good it is, the position-bias figures show).

Each order is one judgment line: {item_id, model_a (shown first), model_b, winner a|b|tie, judge "model:<name>",
order ab|ba, suite, logp {a, b, tie}}. position_bias() summarises how the verdicts depend on the order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from harness import config, paths
from harness.eval.preference import answer_logps
from harness.eval.registry import EvalError
from harness.run.record import read_samples, read_summary

DEFAULT_TEMPLATE = """You are a fair judge. Compare two answers to the same question and decide which one is more \
helpful, correct and clear. Ignore which answer comes first and how long it is.

[Question]
{question}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Which answer is better? Reply with exactly one of: A, B, tie."""

LABELS = {"a": "A", "b": "B", "tie": "tie"}  # verdict -> the text whose log-probability the judge is asked for
ANSWER_CHARS = 2000  # answers are cut to this many characters in the judge prompt (long generations, small judges)


# ----------------------------------------------------------------------------------- pure helpers
def decide(logp: dict[str, float], tie_margin: float = 0.0) -> str:
    """The verdict from the labels' log-probabilities: the most likely of a / b / tie; equal a and b, or a gap
    between them smaller than tie_margin, is a tie."""
    if logp["a"] == logp["b"] or (tie_margin > 0 and abs(logp["a"] - logp["b"]) < tie_margin):
        return "tie"
    return max(("a", "b", "tie"), key=lambda k: logp[k])


def run_winner(j: dict) -> str:
    """The winning run of a judgment (its label), or "tie"."""
    return "tie" if j["winner"] == "tie" else (j["model_a"] if j["winner"] == "a" else j["model_b"])


def position_bias(judgments: Sequence[dict]) -> dict:
    """How verdicts depend on the order the answers are shown in. first_wins / second_wins / ties: shares of all
    judgments won by the answer shown first / second, or tied (an order-blind judge has first ~= second);
    flip_rate: share of (item, pair of runs) judged in both orders whose winning run (or tie) differs between them;
    consistent: the other pairs."""
    n = len(judgments)
    out = {"judgments": n, "first_wins": None, "second_wins": None, "ties": None,
           "pairs_both_orders": 0, "flips": 0, "flip_rate": None}
    if not n:
        return out
    out.update(first_wins=sum(j["winner"] == "a" for j in judgments) / n,
               second_wins=sum(j["winner"] == "b" for j in judgments) / n,
               ties=sum(j["winner"] == "tie" for j in judgments) / n)
    by_unit: dict[tuple, list[dict]] = {}
    for j in judgments:
        by_unit.setdefault((str(j["item_id"]), *sorted((j["model_a"], j["model_b"]))), []).append(j)
    both = [js for js in by_unit.values() if len({(j["model_a"], j["model_b"]) for j in js}) == 2]
    flips = sum(len({run_winner(j) for j in js}) > 1 for js in both)
    out.update(pairs_both_orders=len(both), flips=flips, flip_rate=flips / len(both) if both else None)
    return out


def render(template: str, question: str, first: str, second: str) -> str:
    """The judge prompt for one order (answers cut to ANSWER_CHARS characters)."""
    return template.replace("{question}", question).replace("{answer_a}", first[:ANSWER_CHARS]) \
        .replace("{answer_b}", second[:ANSWER_CHARS])


def check_template(template: str) -> None:
    missing = [k for k in ("{question}", "{answer_a}", "{answer_b}") if k not in template]
    if missing:
        raise EvalError(f"judge template lacks {', '.join(missing)}; it needs {{question}}, {{answer_a}} and {{answer_b}}")


# ------------------------------------------------------------------------------------ the items
@dataclass
class Item:
    id: str
    question: str
    answers: dict[str, str]  # run label -> prediction


def run_label(run_dir: str | Path) -> str:
    """How runs are named in judgments: <name>/<run_id> from summary.json (as `harness human export` names them)."""
    s = read_summary(run_dir) or {}
    return f"{s['name']}/{s['run_id']}" if s.get("name") and s.get("run_id") else str(run_dir)


def _questions(run_dir: Path, suite: str) -> dict[str, str]:
    """The user's question per item id from the suite's data (the samples hold the prompt after the chat
    template): the run's own eval config, else conf/eval/<suite>.yaml (`harness eval RUN eval=vicuna` leaves the
    run's config as it was); {} when neither names the suite (then the sample's prompt is used)."""
    from harness.eval.generation import load_examples, suite_data_config

    try:
        cfg = config.load_run_config(run_dir)
    except Exception:  # noqa: BLE001 -- no readable config: fall back to the rendered prompt
        return {}
    for get_eval in (lambda: cfg.eval, lambda: config.compose([f"eval={suite}"]).eval):
        try:
            gen = next(s for s in get_eval().generation if s.name == suite)
            data_cfg = suite_data_config(gen, cfg)
            return {str(e.id): e.messages[-1]["content"] for e in load_examples(gen, cfg, data_cfg)}
        except Exception:  # noqa: BLE001 -- any failure falls back, never stops judging
            continue
    return {}


def load_items(run_dirs: Sequence[str | Path], suite: str, limit: int = 0) -> tuple[list[str], list[Item], list[str]]:
    """(run labels, items every run answered, notes) from samples/<suite>.jsonl of each run."""
    paths.check_name(suite, "--suite")
    labels, samples, notes = [], [], []
    for rd in run_dirs:
        rows = read_samples(rd, suite)
        if not rows:
            have = sorted(p.stem for p in (Path(rd) / "samples").glob("*.jsonl"))
            raise EvalError(f"{rd}: no samples/{suite}.jsonl (suites with samples: {', '.join(have) or 'none'}); "
                            "run a generation suite first: harness eval RUN_DIR eval=...")
        if any("prediction" not in r for r in rows):
            raise EvalError(f"{rd}: samples/{suite}.jsonl has no predictions; a judge compares generation suites")
        labels.append(run_label(rd))
        samples.append({str(r["id"]): r for r in rows})
    if len(set(labels)) != len(labels):
        raise EvalError(f"the same run is given twice ({labels}); pass different runs")
    common = sorted(set.intersection(*(set(s) for s in samples)))
    left = sum(len(s) for s in samples) - len(common) * len(samples)
    if left:
        notes.append(f"{left} sample(s) not answered by every run were left out")
    if not common:
        raise EvalError(f"the runs share no item ids in samples/{suite}.jsonl")
    if limit > 0:
        common = common[:limit]
    questions = _questions(Path(run_dirs[0]), suite)
    items = [Item(i, questions.get(i) or str(samples[0][i].get("prompt", "")),
                  {lab: str(s[i]["prediction"]) for lab, s in zip(labels, samples)}) for i in common]
    return labels, items, notes


# ------------------------------------------------------------------------------------ judging
def judge_input(text: str, tokenizer, add_bos: bool) -> str:
    """The text the judge reads before its verdict: its chat template's user turn + assistant start, or plain."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                            add_generation_prompt=True)
    else:
        out = text + "\nVerdict:"
    if add_bos and tokenizer.bos_token and not out.startswith(tokenizer.bos_token):
        out = tokenizer.bos_token + out
    return out


def label_sequences(prompt: str, tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, label ids) for each of LABELS, the label tokenised jointly with the prompt (so a leading
    space merges as the judge would write it); plain models get " A" etc. after "Verdict:"."""
    sep = "" if prompt.endswith(("\n", " ")) else " "
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    out = []
    for label in LABELS.values():
        full = tokenizer(prompt + sep + label, add_special_tokens=False)["input_ids"]
        k = next((i for i, (x, y) in enumerate(zip(p, full)) if x != y), min(len(p), len(full)))
        out.append((full[:k], full[k:]))
    return out


def judge(model, tokenizer, labels: list[str], items: list[Item], *, judge_name: str, suite: str,
          template: str = DEFAULT_TEMPLATE, tie_margin: float = 0.0, add_bos: bool = False,
          batch_size: int = 4, calibrate: bool = False) -> list[dict]:
    """Judgments for every item, every pair of runs and both orders (the given run order first). With calibrate,
    the labels' log-probabilities on a content-free prompt (question and answers "N/A") are subtracted before the
    verdict (contextual calibration, Zhao et al. 2021): a judge's fixed preference for a label no longer decides."""
    check_template(template)
    jobs = []
    if calibrate:
        jobs.append(("", "", "", "prior", judge_input(render(template, "N/A", "N/A", "N/A"), tokenizer, add_bos)))
    for it in items:
        for x, y in itertools.combinations(labels, 2):
            for first, second, order in ((x, y, "ab"), (y, x, "ba")):
                text = render(template, it.question, it.answers[first], it.answers[second])
                jobs.append((it.id, first, second, order, judge_input(text, tokenizer, add_bos)))
    seqs = [s for job in jobs for s in label_sequences(job[4], tokenizer)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    was_training = model.training
    model.eval()
    try:
        logps = answer_logps(model, seqs, pad, batch_size)
    finally:
        model.train(was_training)
    prior = dict(zip(LABELS, logps[:3])) if calibrate else dict.fromkeys(LABELS, 0.0)
    out = []
    for k, (item_id, first, second, order, _) in enumerate(jobs):
        if order == "prior":
            continue
        lp = dict(zip(LABELS, logps[3 * k: 3 * k + 3]))
        row = {"item_id": item_id, "model_a": first, "model_b": second,
               "winner": decide({v: lp[v] - prior[v] for v in LABELS}, tie_margin),
               "judge": f"model:{judge_name}" + ("+calibrated" if calibrate else ""), "order": order, "suite": suite,
               "logp": {v: round(x, 4) for v, x in lp.items()}}
        if calibrate:
            row["prior"] = {v: round(x, 4) for v, x in prior.items()}
        out.append(row)
    return out


def load_judge(overrides: Sequence[str]):
    """(model, tokenizer, model config) of the judge: any model config, e.g. ["model=smollm2-135m"]."""
    from harness.model.device import resolve_device
    from harness.model.load import load_model_and_tokenizer

    cfg = config.compose(list(overrides))
    model, tokenizer = load_model_and_tokenizer(cfg.model, device=resolve_device(cfg))
    return model.eval(), tokenizer, cfg.model
