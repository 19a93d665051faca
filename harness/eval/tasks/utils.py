"""Offline lm-eval tasks on the shared data kit: loaders (lm-eval `custom_dataset`) and parsers.

Used by the task YAMLs beside this file, through `harness eval ... eval=standard` (harness/eval/lm_eval.py
registers this folder with lm-eval's TaskManager). Files are found under the data root
(harness.paths.data_root(): $HARNESS_DATA or ../shared/data), never by absolute path.

- hellaswag: hellaswag/hellaswag_val_full.txt.bz2, 6 lines per item (`activity_label: ctx`, gold, 4
  endings), turned into lm-eval's own hellaswag docs (query/choices/gold with its `preprocess`).
- arc_easy, arc_challenge, openbookqa, social_iqa, piqa, winogrande: the LLM-Adapters
  instruction-format files in multiple-choice/*.test.json, parsed back into question, choices and
  gold index. A row that does not parse raises ParseError naming the file and row: nothing is skipped.
- gsm8k: gsm8k/test.jsonl {question, answer}; the answer's final number follows `####`.
"""

from __future__ import annotations

import bz2
import json
import re
from pathlib import Path

from harness import paths

HELLASWAG_FILE = "hellaswag/hellaswag_val_full.txt.bz2"
MC_FILES = {
    "arc_easy": "multiple-choice/ARC-Easy.test.json",
    "arc_challenge": "multiple-choice/ARC-Challenge.test.json",
    "openbookqa": "multiple-choice/openbookqa.test.json",
    "social_iqa": "multiple-choice/social_i_qa.test.json",
    "piqa": "multiple-choice/piqa.test.json",
    "winogrande": "multiple-choice/winogrande.test.json",
}
GSM8K_FILE = "gsm8k/test.jsonl"


class ParseError(ValueError):
    """A data row that does not have the expected format."""


def data_file(rel: str) -> Path:
    p = paths.data_root() / rel
    if not p.is_file():
        raise FileNotFoundError(
            f"{rel} not found under the data root {paths.data_root()}. Set HARNESS_DATA to the folder "
            "that holds the shared data kit (see /work/shared/data/MANIFEST.md)."
        )
    return p


# ----------------------------------------------------------------------------------- hellaswag
def hellaswag_preprocess(text: str) -> str:
    """lm-eval's tasks/hellaswag/utils.preprocess."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


_TRAILING_FRAGMENT = re.compile(r"(?<=[.!?]\s)([a-z][^.!?]*)$")


def hellaswag_query(line: str) -> str:
    """`activity_label: ctx_a ctx_b` (as stored) -> lm-eval's query.

    lm-eval builds preprocess(label + ": " + ctx_a + " " + ctx_b.capitalize()). The file keeps ctx_b as
    in the data set (lower case, e.g. "... on a roof. he"); ctx_b is the fragment after the last
    sentence end, present only when it starts lower case (ActivityNet items), so capitalise it here.
    """
    m = _TRAILING_FRAGMENT.search(line)
    if m:
        line = line[:m.start()] + m.group(1).capitalize()
    return hellaswag_preprocess(line)


def parse_hellaswag(text: str) -> list[dict]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    if len(lines) % 6:
        raise ParseError(f"{HELLASWAG_FILE}: {len(lines)} lines is not a multiple of 6 (ctx, gold, 4 endings)")
    docs = []
    for i in range(0, len(lines), 6):
        ctx, gold, endings = lines[i], lines[i + 1].strip(), lines[i + 2:i + 6]
        if gold not in ("0", "1", "2", "3") or ": " not in ctx:
            raise ParseError(f"{HELLASWAG_FILE}: item {i // 6} (line {i + 1}) has gold {gold!r} / context {ctx[:60]!r}")
        docs.append({"id": i // 6, "query": hellaswag_query(ctx), "choices": [hellaswag_preprocess(e) for e in endings],
                     "gold": int(gold)})
    return docs


# ------------------------------------------------------------------------ instruction-format MC
_MC_HEAD = {
    "answer": "Please choose the correct answer to the question: ",
    "solution": "Please choose the correct solution to the question: ",
    "option": "Please choose the correct answer to fill in the blank to complete the given sentence: ",
}


def _split_choices(block: str, word: str, k: int, sep: str, where: str) -> list[str]:
    cap = word.capitalize()
    if not block.startswith(f"{cap}1: "):
        raise ParseError(f"{where}: choices do not start with '{cap}1: '")
    choices, pos = [], len(f"{cap}1: ")
    for i in range(2, k + 1):
        marker = f"{sep}{cap}{i}: "
        nxt = block.find(marker, pos)
        if nxt < 0:
            raise ParseError(f"{where}: marker {marker.strip()!r} not found")
        choices.append(block[pos:nxt])
        pos = nxt + len(marker)
    choices.append(block[pos:])
    return choices


def parse_mc_row(row: dict, where: str = "row") -> dict:
    """One LLM-Adapters row -> {question, choices, gold} (winogrande: also sentence, option1/2, answer)."""
    text, answer = row.get("instruction"), row.get("answer")
    if not isinstance(text, str) or not isinstance(answer, str):
        raise ParseError(f"{where}: needs string fields 'instruction' and 'answer', got {sorted(row)}")
    m = re.fullmatch(r"(?P<word>answer|solution|option)(?P<n>\d+)", answer.strip())
    if not m:
        raise ParseError(f"{where}: answer {answer!r} is not answerN / solutionN / optionN")
    word = m.group("word")
    head = _MC_HEAD[word]
    if not text.startswith(head):
        raise ParseError(f"{where}: instruction does not start with {head!r}")
    body = text[len(head):]
    fmt = re.search(r"(?:\n\n| )Answer format: ((?:%s\d+/)*%s\d+)$" % (word, word), body)
    if not fmt:
        raise ParseError(f"{where}: no 'Answer format: {word}1/...' at the end")
    k = len(fmt.group(1).split("/"))
    if fmt.group(1) != "/".join(f"{word}{i}" for i in range(1, k + 1)):
        raise ParseError(f"{where}: answer format {fmt.group(1)!r} is not {word}1..{word}{k}")
    body = body[:fmt.start()]
    cap = word.capitalize()
    split_at = body.find(f"\n\n{cap}1: ")
    if split_at < 0:
        raise ParseError(f"{where}: no '{cap}1: ' after the question")
    question, block = body[:split_at], body[split_at + 2:]
    sep = "\n\n" if word == "solution" else " "
    choices = _split_choices(block, word, k, sep, where)
    gold = int(m.group("n")) - 1
    if not 0 <= gold < k:
        raise ParseError(f"{where}: gold {answer!r} outside 1..{k}")
    if not question.strip() or any(c == "" for c in choices):
        raise ParseError(f"{where}: empty question or choice")
    doc = {"question": question, "choices": choices, "gold": gold}
    if word == "option":
        if k != 2 or "_" not in question:
            raise ParseError(f"{where}: winogrande needs 2 options and a '_' blank in the sentence")
        doc.update(sentence=question, option1=choices[0], option2=choices[1], answer=str(gold + 1))
    return doc


def parse_mc_file(name: str) -> list[dict]:
    rel = MC_FILES[name]
    rows = json.loads(data_file(rel).read_text(encoding="utf-8"))
    docs = []
    for i, row in enumerate(rows):
        doc = parse_mc_row(row, where=f"{rel} row {i}")
        doc["id"] = i
        docs.append(doc)
    return docs


# ------------------------------------------------------------------------------------- gsm8k
def gsm8k_final_number(answer: str) -> str:
    if "####" not in answer:
        raise ParseError(f"gsm8k answer has no '####': {answer[-80:]!r}")
    return answer.split("####")[-1].strip().replace(",", "")


def parse_gsm8k(text: str) -> list[dict]:
    docs = []
    for i, line in enumerate(l for l in text.split("\n") if l.strip()):
        row = json.loads(line)
        if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
            raise ParseError(f"{GSM8K_FILE} line {i + 1}: needs 'question' and 'answer'")
        gsm8k_final_number(row["answer"])
        docs.append({"id": i, "question": row["question"], "answer": row["answer"]})
    return docs


# ---------------------------------------------------------------------- lm-eval custom_dataset
def _dataset(docs: list[dict]):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


_KEPT: dict[str, tuple[tuple, object]] = {}  # loader -> (its file's version, its DatasetDict)


def _kept(name: str, rel: str, parse):
    """_dataset(parse(path of rel)), parsed once per process and version of the file (path, inode, size, mtime and
    ctime: a copy that keeps the old mtime still changes the ctime): lm-eval
    builds a task again for every simple_evaluate (eval.during_training at every evaluation, fast mode's calibration
    a second time) and keeps this module between builds while the module's file is unchanged, so a data set is not
    decompressed and parsed again each time (a 20-item HellaSwag evaluation, tiny model, Zen 4: 1.34 -> 0.85 s).
    lm-eval only reads it (indexes its splits; a process_docs would map a split into a new data set)."""
    path = data_file(rel)
    st = path.stat()
    version = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    kept = _KEPT.get(name)
    if kept is None or kept[0] != version:
        kept = _KEPT[name] = (version, _dataset(parse(path)))
    return kept[1]


def load_hellaswag(**_metadata):
    return _kept("hellaswag", HELLASWAG_FILE, lambda p: parse_hellaswag(bz2.decompress(p.read_bytes()).decode("utf-8")))


def load_arc_easy(**_metadata):
    return _kept("arc_easy", MC_FILES["arc_easy"], lambda _: parse_mc_file("arc_easy"))


def load_arc_challenge(**_metadata):
    return _kept("arc_challenge", MC_FILES["arc_challenge"], lambda _: parse_mc_file("arc_challenge"))


def load_openbookqa(**_metadata):
    return _kept("openbookqa", MC_FILES["openbookqa"], lambda _: parse_mc_file("openbookqa"))


def load_social_iqa(**_metadata):
    return _kept("social_iqa", MC_FILES["social_iqa"], lambda _: parse_mc_file("social_iqa"))


def load_piqa(**_metadata):
    return _kept("piqa", MC_FILES["piqa"], lambda _: parse_mc_file("piqa"))


def load_winogrande(**_metadata):
    return _kept("winogrande", MC_FILES["winogrande"], lambda _: parse_mc_file("winogrande"))


def load_gsm8k(**_metadata):
    return _kept("gsm8k", GSM8K_FILE, lambda p: parse_gsm8k(p.read_text(encoding="utf-8")))


def load_wikitext(**_metadata):
    """wikitext-2 test as lm-eval's document-level data set: {page} per article (for the cross-check)."""
    from harness.eval.perplexity import wikitext_documents

    def parse(path: Path) -> list[dict]:
        text = path.read_bytes().decode("utf-8").replace("\r\n", "\n")
        return [{"page": p} for p in wikitext_documents(text)]

    return _kept("wikitext", "wikitext-2-raw/wiki.test.raw", parse)


# ---------------------------------------------------------------- winogrande (lm-eval's functions)
def winogrande_doc_to_text(doc):
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_doc_to_target(doc):
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def winogrande_doc_to_choice(doc):
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]


# -------------------------------------------------------------------- wikitext (lm-eval's functions)
def wikitext_doc_to_target(doc):
    from harness.eval.perplexity import wikitext_detokenize

    return wikitext_detokenize(doc["page"])


def wikitext_process_results(doc, results):
    (loglikelihood,) = results
    words = len(re.split(r"\s+", doc["page"]))
    n_bytes = len(doc["page"].encode("utf-8"))
    return {"word_perplexity": (loglikelihood, words), "byte_perplexity": (loglikelihood, n_bytes),
            "bits_per_byte": (loglikelihood, n_bytes)}
