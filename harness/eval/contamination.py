"""Train/eval contamination: the share of an evaluation set's items that share a long n-gram with the
training data of a run.

    python -m harness.eval.contamination --table        # every shipped training config x every shipped eval set
                                                   # (the table in docs/contamination.md)
    harness train ... / harness eval RUN_DIR            # every suite of a trained run: eval.json `contamination`
                                                   # (RunCheck, called by harness/eval/suites.py run_suites)

The rule follows GPT-3's decontamination (Brown et al. 2020, appendix C), on words instead of tokens:
text is reduced to normalised words (normalise_words); an eval item is contaminated when any of its
n consecutive words (n = 13 by default) also occur consecutively in some training text. An item shorter
than n words but with at least min_words words (default 8) is contaminated when every run of min_words
consecutive words in it occurs in the training texts: for an item of exactly min_words words that is
"the whole item occurs in the training data", and for longer short items it is the same up to the
contrived case of its overlapping windows occurring in different places. This stands in for GPT-3's
"the whole item occurs" at one extra index of min_words-grams instead of one per length
min_words..n-1 (that took 2.7x the memory and twice the build time on the WikiText-2 training split).
Items under min_words are never counted (a 3-word item such as "Yes, it is." would match almost any
corpus); they are reported as `too_short`.

The top half is pure functions (text in, numbers out): normalise_words, ngrams, build_index,
contamination, texts_of_rows. Below them, what a run records (run_index, record_field, RunCheck) and the
--table command, which reads every shipped data config's training split (harness.data.prepare.training_rows)
and every shipped eval set.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

DEFAULT_N = 13
DEFAULT_MIN_WORDS = 8
MAX_IDS = 20  # contaminated item indices listed in a result
NO_SUITE = "no shipped suite"


# ----------------------------------------------------------------------------- normalisation
class _Separators(dict):
    """A str.translate table, filled lazily: a character in Unicode category P* (punctuation), S*
    (symbols) or C* (control, format: tabs, newlines, zero-width spaces) maps to a space; any other
    character maps to itself."""

    def __missing__(self, cp: int) -> int:
        self[cp] = out = 32 if unicodedata.category(chr(cp))[0] in "PSC" else cp
        return out


_SEPARATORS = _Separators()


def normalise_words(text: str) -> list[str]:
    """Words for n-gram matching. Exactly: unicodedata NFKC (full-width letters, ligatures and the like
    become their plain forms), str.casefold (lower case, also ß -> ss), every punctuation, symbol,
    control or format character (Unicode categories P*, S*, C*) replaced by a space, then str.split()
    on Unicode whitespace. Letters, digits and combining marks are kept. Punctuation becomes a space
    rather than vanishing so that differently tokenised copies agree: "don't", "don 't" -> don t;
    "well-known", "well @-@ known" (WikiText) -> well known; "$1,000" -> 1 000."""
    return unicodedata.normalize("NFKC", text).casefold().translate(_SEPARATORS).split()


_MULT = 0x9E3779B97F4A7C15  # odd, so multiplying by it is a bijection modulo 2^64
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # the splitmix64 finaliser's constants


def word_hashes(words: Sequence[str], known: dict[str, int] | None = None):
    """Each word's 64-bit BLAKE2b hash (of its UTF-8, big-endian) as a numpy uint64 array. `known` caches the hash
    of each distinct word across calls (a training set repeats most of its words)."""
    import numpy as np

    known = {} if known is None else known
    for w in set(words).difference(known):
        known[w] = int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "big")
    return np.array([known[w] for w in words], dtype=np.uint64)


def window_hashes(hashes, n: int):
    """The hash of every run of n consecutive word hashes (numpy uint64 in, uint64 out, len - n + 1 of them):
    sum of h[i + j] * _MULT^(n - 1 - j) modulo 2^64, then the splitmix64 finaliser (a bijection on 64 bits).

    Two different n-grams collide only when their weighted word-hash differences sum to 0 modulo 2^64; _MULT is
    odd, so one differing word never does, and for several the chance is about 2^-64 since the word hashes are
    BLAKE2b's. It is the same on every machine and in every process (numpy's uint64 arithmetic wraps)."""
    import numpy as np

    if n < 1:
        raise ValueError(f"n={n}: an n-gram needs n >= 1 words")
    m = len(hashes) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    mult = np.uint64(_MULT)
    with np.errstate(over="ignore"):
        acc = hashes[:m].copy()
        for j in range(1, n):
            acc *= mult
            acc += hashes[j:j + m]
        acc ^= acc >> np.uint64(30)
        acc *= np.uint64(_MIX1)
        acc ^= acc >> np.uint64(27)
        acc *= np.uint64(_MIX2)
        acc ^= acc >> np.uint64(31)
    return acc


def ngrams(words: Sequence[str], n: int, known: dict[str, int] | None = None) -> set[int]:
    """The n-grams of `words` (every run of n consecutive words), each as a 64-bit hash (window_hashes over the
    words' BLAKE2b hashes); empty when there are fewer than n words.

    Why hashes: an int per n-gram instead of a tuple of n strings keeps a training index to tens of MB, and a
    hash built from BLAKE2b (unlike Python's hash(), salted per process by PYTHONHASHSEED) gives the same value in
    every process and on every machine, so indices and results can be compared across runs. With 64 bits the
    chance of any false match is about (training n-grams x eval n-grams) / 2^64: below 1e-7 for a million of
    each. Why not a BLAKE2b of each n-gram's text, as until 2026-12-03: one hash per word and numpy's
    arithmetic per window built an index 10x faster (docs/contamination.md)."""
    if len(words) < n:  # never true for n < 1: window_hashes rejects that n
        return set()
    return set(window_hashes(word_hashes(words, known), n).tolist())


# ------------------------------------------------------------------------------------- index
@dataclass(frozen=True)
class NgramIndex:
    n: int
    min_words: int
    hashes: frozenset[int]  # the n-grams of every training text
    short_hashes: frozenset[int]  # the min_words-grams (empty when min_words == n), for items under n words
    texts: int  # training texts indexed
    words: int  # their normalised words in total

    @property
    def ngrams(self) -> int:
        return len(self.hashes)


def build_index(texts: Iterable[str], n: int = DEFAULT_N, min_words: int = DEFAULT_MIN_WORDS) -> NgramIndex:
    """Index the training texts: the hash of every n-gram and, for eval items shorter than n, of every
    min_words-gram. A text is indexed on its own: no n-gram spans two texts."""
    if not 1 <= min_words <= n:
        raise ValueError(f"min_words={min_words}, n={n}: need 1 <= min_words <= n")
    import numpy as np

    known: dict[str, int] = {}  # word -> its hash, shared by all texts
    parts = []  # each text's word hashes
    count = words_total = 0
    for text in texts:
        words = normalise_words(text)
        parts.append(word_hashes(words, known))
        count += 1
        words_total += len(words)
    # every window of the concatenated texts, then only those inside one text (no n-gram spans two texts)
    hashes = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
    text_of = np.repeat(np.arange(count), [len(p) for p in parts]) if parts else np.empty(0, dtype=np.int64)

    def grams(k: int) -> set[int]:
        got = window_hashes(hashes, k)
        return set(got[text_of[:len(got)] == text_of[k - 1:]].tolist()) if len(got) else set()

    full = grams(n)
    short = grams(min_words) if min_words < n else set()
    return NgramIndex(n, min_words, frozenset(full), frozenset(short), count, words_total)


def _item_grams(text: str, n: int, min_words: int, known: dict[str, int]) -> tuple[bool, set[int]] | None:
    """What an eval item is matched by: (True, its n-grams: any one found counts) when it has n words or
    more; (False, its min_words-grams: all must be found) when it has min_words to n-1; None when shorter."""
    words = normalise_words(text)
    if len(words) >= n:
        return True, ngrams(words, n, known)
    return (False, ngrams(words, min_words, known)) if len(words) >= min_words else None


def _score(grams: Sequence[tuple[bool, set[int]] | None], index: NgramIndex) -> dict[str, Any]:
    def hit(g: tuple[bool, set[int]] | None) -> int:
        if g is None:
            return 0
        long_item, hashes = g
        return int(not index.hashes.isdisjoint(hashes) if long_item else hashes <= index.short_hashes)

    per_item = [hit(g) for g in grams]
    k = sum(per_item)
    return {"n": index.n, "min_words": index.min_words, "items": len(per_item), "contaminated": k,
            "share": k / len(per_item), "too_short": sum(g is None for g in grams),
            "contaminated_ids": [i for i, x in enumerate(per_item) if x][:MAX_IDS], "per_item": per_item}


def contamination(eval_items: Sequence[str], index: NgramIndex, n: int | None = None) -> dict[str, Any]:
    """Which eval items share an n-gram with the index's training texts (short items: see the module
    docstring). `n` defaults to the index's; a different n raises (build another index for it).

    Returns {"n", "min_words", "items", "contaminated", "share" (contaminated / items), "too_short"
    (items under min_words words, never counted), "contaminated_ids" (the first 20 contaminated
    positions in eval_items), "per_item" (0/1 per item, in order)}."""
    if n is not None and n != index.n:
        raise ValueError(f"n={n}, but the index holds {index.n}-grams: build_index(texts, n={n}) for that n")
    if not eval_items:
        raise ValueError("contamination: no eval items; the share of an empty set is undefined")
    known: dict[str, int] = {}  # word -> its hash, shared by all items
    return _score([_item_grams(t, index.n, index.min_words, known) for t in eval_items], index)


# ---------------------------------------------------------------------------- rows -> texts
def texts_of_rows(rows: Iterable[Any]) -> list[str]:
    """One string per row, the fields joined by newlines:
    - normalised training rows (harness.data's field names): their format's texts (harness.data.formats.FORMATS):
      alpaca instruction, input, output; prompt_completion prompt, completion; text text; chat: every message;
    - harness.data.EvalExample: the content of its messages, then its references.
    System messages are left out on both sides: they are the config's instruction (data.system_prompt)
    or a data set's fixed preamble, shared by every item, and would match every item of every set that
    uses the same one. The rendered prompt template is left out for the same reason (only content counts)."""
    from harness.data.formats import FORMATS, row_format

    out = []
    for row in rows:
        fmt = row_format(row) if isinstance(row, dict) else None
        if hasattr(row, "messages") and hasattr(row, "references"):  # an EvalExample
            parts = [m["content"] for m in row.messages if m["role"] != "system"] + list(row.references)
        elif fmt is not None:
            parts = fmt.texts(row)
        else:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            fields = ", ".join(f for f in dict.fromkeys(x for fm in FORMATS.values() for x in fm.fields))
            raise ValueError(f"texts_of_rows: {keys} is neither a normalised row ({fields}) nor an EvalExample; "
                             "map a file's columns with harness.data first")
        out.append("\n".join(parts))
    return out


# ----------------------------------------------------------------- a run's eval.json (I/O below)
def run_index(data, n: int = DEFAULT_N) -> NgramIndex:
    """The index of a run's training split: the rows prepare(data, ...) trains on (split by data.split_seed;
    harness.data.prepare.training_rows), min_words = min(8, n)."""
    from harness.data.prepare import training_rows

    return build_index(texts_of_rows(training_rows(data)), n, min(DEFAULT_MIN_WORDS, n))


def record_field(ids: Sequence[Any], texts: Sequence[str], index: NgramIndex, train_data: str,
                 warn_above: float) -> dict[str, Any]:
    """The `contamination` field of an eval.json suite entry (docs/run-record.md): contamination() of the
    suite's item texts, without per_item and with the first 20 contaminated items named by their ids."""
    res = contamination(texts, index)
    return {"n": res["n"], "min_words": res["min_words"], "items": res["items"], "contaminated": res["contaminated"],
            "too_short": res["too_short"], "share": res["share"],
            "contaminated_ids": [ids[i] for i in res["contaminated_ids"]], "train_data": train_data,
            "warn_above": warn_above}


class RunCheck:
    """The contamination check of a trained run's suites (harness/eval/suites.py run_suites calls it as each
    suite is recorded): the training index is built once, on first use; `seconds` adds up its whole cost."""

    def __init__(self, cfg, say):
        self.cfg, self.say = cfg, say
        self.index: NgramIndex | None = None
        self.failed = False
        self.seconds = 0.0

    def _index(self) -> NgramIndex | None:
        from harness.data import DataError

        if self.index is None and not self.failed:
            try:
                self.index = run_index(self.cfg.data, self.cfg.eval.contamination_n)
            except DataError as exc:
                self.failed = True
                self.say(f"contamination not checked: the training rows of data={self.cfg.data.name} cannot be "
                         f"read: {str(exc).splitlines()[0]}")
        return self.index

    def __call__(self, name: str, entry: dict, items) -> dict | None:
        """The `contamination` field for suite `name`, or None (with a note) when its items cannot be read.
        `items` is the suite kind's items function (harness/eval/registry.py)."""
        import time

        from harness.data import DataError

        t0 = time.perf_counter()
        try:
            index = self._index()
            if index is None or items is None:
                return None
            got = items(self.cfg, name, entry)
            if got is None:
                self.say(f"contamination of {name} not checked: its items are not readable here (an lm-eval "
                         "task that is not ours: its data comes from the Hub)")
                return None
            ids, texts = got
            if not texts:
                return None
            ev = self.cfg.eval
            field = record_field(ids, texts, index, self.cfg.data.name, ev.contamination_warn)
        except (DataError, OSError, ValueError) as exc:
            self.say(f"contamination of {name} not checked: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            return None
        finally:
            self.seconds += time.perf_counter() - t0
        if field["share"] > ev.contamination_warn:
            shown = ", ".join(str(i) for i in field["contaminated_ids"][:5])
            print(f"[harness] warning: {name}: {field['contaminated']} of {field['items']} items ({field['share']:.1%}) "
                  f"share a {field['n']}-word run with the training data (data={field['train_data']}), above "
                  f"eval.contamination_warn={ev.contamination_warn}; e.g. ids {shown}", flush=True)
        return field


# ------------------------------------------------------------------------- reading (I/O below)
# ------------------------------------------------------------------------ the --table command
@dataclass
class _EvalSet:
    name: str
    used_by: str  # the shipped eval configs that score it
    items: list[str]


def _suites() -> dict[str, dict[str, list[str]]]:
    """{"generation" | "lm_eval" | "perplexity": {data config / task / corpus path: [eval configs]}}."""
    from harness.config import compose, group_options

    used: dict[str, dict[str, list[str]]] = {"generation": {}, "lm_eval": {}, "perplexity": {}}
    for name in group_options("eval"):
        ev = compose([f"eval={name}"]).eval
        for g in ev.generation:
            used["generation"].setdefault(g.data, []).append(name)
        for t in ev.lm_eval.tasks:
            used["lm_eval"].setdefault(t, []).append(name)
        for p in ev.perplexity:
            used["perplexity"].setdefault(p.path, []).append(name)
    return used


def _data_config(name: str, split_seed: int | None):
    """conf/data/<name>.yaml, with data.split_seed overridden unless split_seed is None."""
    from harness.config import compose

    return compose([f"data={name}"] + ([] if split_seed is None else [f"data.split_seed={split_seed}"])).data


def _eval_sets(split_seed: int | None) -> tuple[list[_EvalSet], list[str]]:
    """Every shipped eval set (data configs' eval examples, our offline lm-eval tasks, perplexity
    corpora) and a line for each one that could not be read."""
    from harness.config import PerplexitySuite, group_options
    from harness.data import FORMATS, DataError, load_eval_examples
    from harness.eval.lm_eval import SHORT_NAMES, task_items
    from harness.eval.perplexity import load_documents

    used = _suites()
    sets, skipped = [], []
    for name in group_options("data"):
        dc = _data_config(name, split_seed)
        if FORMATS[dc.format].prompt is None:
            continue  # no prompts (format text): its file is scored as a perplexity corpus below
        where = ", ".join(f"eval={e}" for e in used["generation"].get(name, [])) or NO_SUITE
        label = f"{name}: " + (dc.eval_path if dc.eval_path else f"val split (split_seed {dc.split_seed})")
        try:
            sets.append(_EvalSet(label, where, texts_of_rows(load_eval_examples(dc))))
        except DataError as exc:
            skipped.append(f"{label}: {str(exc).splitlines()[0]}")
    for task in [t for t in SHORT_NAMES if t != "wikitext"] + sorted(set(used["lm_eval"]) - set(SHORT_NAMES)):
        where = ", ".join(f"eval={e}" for e in used["lm_eval"].get(task, [])) or "eval.lm_eval.tasks only"
        if task not in SHORT_NAMES:
            skipped.append(f"lm-eval {task}: a built-in lm-eval task; its data comes from the Hub, not the data root")
            continue
        try:
            sets.append(_EvalSet(f"lm-eval {task}", where, task_items(task)))
        except FileNotFoundError as exc:
            skipped.append(f"lm-eval {task}: {exc}")
    for path, evals in used["perplexity"].items():
        docs = load_documents(PerplexitySuite(name="wikitext2" if "wikitext" in path else "corpus", path=path))
        sets.append(_EvalSet(f"perplexity {path}", ", ".join(f"eval={e}" for e in evals), [d.page for d in docs]))
    return sets, skipped


def _cell(res: dict) -> str:
    return f"{res['share']:.1%}" + (f" ({res['contaminated']})" if res["contaminated"] else "")


def table(n: int = DEFAULT_N, min_words: int = DEFAULT_MIN_WORDS, split_seed: int | None = None, log=print) -> str:
    """The Markdown contamination table: every shipped eval set (rows) against the training split of every
    shipped data config that can be trained on (columns), split by each config's data.split_seed (or by
    `split_seed` for all). Reads the data kit; `log` gets progress lines."""
    import time

    from harness.config import group_options
    from harness.data import DataError

    indices: dict[str, NgramIndex] = {}
    notes = []
    for name in group_options("data"):
        dc = _data_config(name, split_seed)
        try:
            from harness.data.prepare import training_rows

            rows = training_rows(dc)
        except DataError as exc:
            notes.append(f"training data `{name}`: {dc.notes or str(exc).splitlines()[0]}")
            continue
        t0 = time.perf_counter()
        indices[name] = index = build_index(texts_of_rows(rows), n, min_words)
        log(f"index {name}: {index.texts} texts, {index.words} words, {index.ngrams} {n}-grams, "
            f"{len(index.short_hashes)} {min_words}-grams, {time.perf_counter() - t0:.1f} s")
    sets, skipped = _eval_sets(split_seed)
    sets.sort(key=lambda es: es.used_by == NO_SUITE)  # stable: sets no shipped suite scores go last
    head = ["eval set", "items", "scored by"] + [f"`{t}` ({indices[t].texts})" for t in indices]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for es in sets:
        t0 = time.perf_counter()
        known: dict[str, int] = {}
        grams = [_item_grams(t, n, min_words, known) for t in es.items]  # once, for every index
        cells = [_cell(_score(grams, idx)) for idx in indices.values()]
        short = sum(g is None for g in grams)
        items = f"{len(es.items):,}" + (f" ({short} under {min_words} words)" if short else "")
        lines.append(f"| {es.name} | {items} | {es.used_by} | " + " | ".join(cells) + " |")
        log(f"{es.name}: {time.perf_counter() - t0:.1f} s")
    notes += [f"eval set {s}" for s in skipped]
    if notes:
        lines += ["", "Not in the table:", ""] + [f"- {x}" for x in notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from harness.config import ConfigError
    from harness.data import DataError

    parser = argparse.ArgumentParser(prog="python -m harness.eval.contamination", description=__doc__.split("\n")[0])
    parser.add_argument("--table", action="store_true", required=True,
                        help="print the Markdown table: every shipped eval set x every shipped training set")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="n-gram length in normalised words (default 13)")
    parser.add_argument("--min-words", type=int, default=DEFAULT_MIN_WORDS,
                        help="shorter items are never counted (default 8)")
    parser.add_argument("--split-seed", type=int, default=None,
                        help="data.split_seed of every train/validation split (default: each data config's own, 0)")
    args = parser.parse_args(argv)
    if not 1 <= args.min_words <= args.n:
        parser.error(f"--min-words {args.min_words} --n {args.n}: need 1 <= min-words <= n")
    try:
        print(table(args.n, args.min_words, args.split_seed, log=lambda s: print(s, file=sys.stderr)))
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
