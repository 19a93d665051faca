"""Loglikelihood engine: lm-eval's requests scored with every shared token prefix computed once.

    lm = build_lm(model, tokenizer)           # harness/eval/lm_eval.py: a PackedHFLM around the model in memory
    simple_evaluate(model=lm, tasks=[...])    # lm-eval's tasks, prompts and metrics; only the scoring differs

lm-eval's HFLM scores each (context, continuation) pair as its own right-padded row and projects every position
onto the vocabulary. A multiple-choice item sends one pair per choice with the same context (hellaswag, arc, piqa,
openbookqa) or the same sentence start (winogrande). PackedHFLM overrides one method, `_loglikelihood_tokens`
(every loglikelihood and loglikelihood_rolling request goes through it), because that is where the work is:

  1. group requests whose inputs share a token prefix (sorted order; a request joins a group while that saves
     tokens: plan_groups);
  2. pack each group into one row, prefix + branch_1 + branch_2 ..., with explicit position ids and a 4D attention
     mask in which each branch sees the prefix and its own earlier tokens only (sliding-window layers, gemma3's,
     get their own mask);
  3. logits only at the positions whose next token is a continuation token: the decoder over the batch and the
     output layer over SOFTMAX_ROWS of those positions at a time when the model's logits are output_layer(decoder)
     (split_head, checked once), else the model's own boolean `logits_to_keep` (final_logit_softcapping stays
     the model's own); log-softmax only those rows, SOFTMAX_ROWS at a time;
  4. put short groups together into rows of similar length (each group still sees only itself), and batch the
     rows longest first, like lm-eval (little padding); a batch of rows that each hold one request
     (loglikelihood_rolling's windows) gets the model's own causal mask (sdpa's causal kernel skips the upper
     triangle) and default positions.

The inputs are lm-eval's own encoded pairs (its _encode_pair: its tokenisation and its token boundary between
context and continuation; within one loglikelihood call every distinct string is tokenised once, all in one batched
tokenizer call, so a context shared by four choices is not tokenised four times, one encode() each); each result
is lm-eval's (sum of log-probabilities, all tokens greedy), in request order,
and lm-eval's cache hook gets it as HFLM gives it. What cannot be packed goes through HFLM's own method unchanged:
requests that need left truncation or have an empty context or continuation, and models other than decoder-only
ones with sdpa, eager or fast mode's blocked attention (harness/eval/attention.py) and a `logits_to_keep` argument
(seq2seq, peft prompt learning, flash/flex), and a model without a split head whose forward does not take a boolean
`logits_to_keep` (transformers before 5.23).
lm_eval is imported only here and in lm_eval.py.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix
from tqdm import tqdm

from harness.eval.attention import NAME as BLOCKED
from harness.model.scoring import base_model, split_head, supports_logits_to_keep, takes_logits_to_keep

PACK_TOKENS = 1024  # the longest group row (a single request longer than this still gets its own row)
ROW_TOKENS = 256  # groups are put together into rows of max(this, the longest group) tokens, at most PACK_TOKENS / 2
BATCH_TOKENS_PER_ROW = 512  # a batch holds at most batch_size x this many (padded) tokens
ENCODE_CHUNK = 4096  # strings per batched tokenizer call: the tokenizer's per-string records (offsets, masks) live
#   until the call returns (the full HellaSwag's 50,164 strings, SmolLM2: peak RSS +165 MB in chunks, +548 MB at once)
SOFTMAX_ROWS = 64  # kept positions log-softmaxed at a time (64 x 49,152 fp32: 12.6 MB, not a [kept, vocab] matrix)


# ------------------------------------------------------------------------------------ planning (pure)
@dataclass
class Row:
    """One packed row: tokens, their positions, their group (a row holds one or more groups) and segment within it
    (0 = the group's shared prefix, k >= 1 = its branch k), and, per request packed here, (request index, indices
    into the row of its scored positions, its target tokens)."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    scored: list[tuple[int, list[int], list[int]]] = field(default_factory=list)


def _lcp(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan_groups(inputs: list[list[int]], max_row: int = PACK_TOKENS) -> list[tuple[int, list[int]]]:
    """Requests' model inputs -> groups (shared prefix length, request indices). Inputs are taken in sorted order, so
    those sharing a prefix are neighbours; one joins the current group when that saves tokens: with prefix p,
    m members and q tokens in common with the newcomer, the row shrinks by p - m (p - q) tokens against a row of its
    own (the members' branches grow when the prefix shrinks). It joins when that saving is at least 2 tokens and a
    quarter of its own length, and the row stays within max_row."""
    groups: list[list] = []  # [prefix length, members, packed length]
    for i in sorted(range(len(inputs)), key=lambda j: inputs[j]):
        seq = inputs[i]
        if groups:
            p, members, total = groups[-1]
            q = _lcp(seq, inputs[members[0]], p)
            saving = p - len(members) * (p - q)
            new_total = total - p + len(members) * (p - q) + len(seq)
            if saving >= 2 and 4 * saving >= len(seq) and new_total <= max(max_row, len(seq)):
                groups[-1] = [q, [*members, i], new_total]
                continue
        groups.append([len(seq), [i], len(seq)])
    return [(p, members) for p, members, _ in groups]


def pack_group(prefix: int, members: list[int], inputs: list[list[int]], starts: list[int],
               targets: list[list[int]]) -> Row:
    """One group -> its Row. starts[i]: the first scored position of request i in its input (len(context) - 1);
    targets[i]: its continuation tokens (the tokens at positions starts[i] + 1 ... of context + continuation)."""
    row = Row()
    first = inputs[members[0]]
    row.tokens += first[:prefix]
    row.positions += list(range(prefix))
    row.segments += [0] * prefix
    for k, i in enumerate(members, start=1):
        offset = len(row.tokens)
        branch = inputs[i][prefix:]
        row.tokens += branch
        row.positions += list(range(prefix, prefix + len(branch)))
        row.segments += [k] * len(branch)
        where = [t if t < prefix else offset + t - prefix for t in range(starts[i], starts[i] + len(targets[i]))]
        row.scored.append((i, where, targets[i]))
    row.groups = [0] * len(row.tokens)
    return row


def fill_rows(rows: list[Row], capacity: int) -> list[Row]:
    """Put several short rows (groups) into one row of at most `capacity` tokens, first fit, longest first, so that
    batches carry little padding; each keeps its own group id, so the mask keeps them apart. Rows at or above
    capacity stay as they are."""
    out: list[Row] = []
    open_rows: list[Row] = []
    for r in sorted(rows, key=lambda r: -len(r.tokens)):
        if len(r.tokens) >= capacity:
            out.append(r)
            continue
        for b in open_rows[-64:]:  # the newest rows: older ones are nearly full (groups come longest first)
            if len(b.tokens) + len(r.tokens) <= capacity:
                break
        else:
            b = Row()
            open_rows.append(b)
        offset, gid = len(b.tokens), (b.groups[-1] + 1 if b.groups else 0)
        b.tokens += r.tokens
        b.positions += r.positions
        b.segments += r.segments
        b.groups += [gid] * len(r.tokens)
        b.scored += [(i, [w + offset for w in where], tgt) for i, where, tgt in r.scored]
    return out + open_rows


def plan_rows(pairs: list[tuple[list[int], list[int]]]) -> list[Row]:
    """Encoded (context, continuation) requests -> the packed rows that score them: groups by shared prefix
    (plan_groups, pack_group), then short groups put together (fill_rows). Row.scored indexes into `pairs`."""
    inputs = [(c + t)[:-1] for c, t in pairs]
    starts = [len(c) - 1 for c, _ in pairs]
    targets = [list(t) for _, t in pairs]
    rows = [pack_group(p, m, inputs, starts, targets) for p, m in plan_groups(inputs)]
    return fill_rows(rows, min(max(ROW_TOKENS, max(len(r.tokens) for r in rows)), PACK_TOKENS // 2))


def plan_batches(rows: list[Row], batch_size: int, tokens_per_row: int = BATCH_TOKENS_PER_ROW) -> list[list[Row]]:
    """Rows longest first (like lm-eval: an out-of-memory shows at once), cut into batches of at most batch_size
    rows and batch_size x tokens_per_row padded tokens (one long row always fits)."""
    rows = sorted(rows, key=lambda r: -len(r.tokens))
    budget = max(batch_size, 1) * tokens_per_row
    batches: list[list[Row]] = []
    for r in rows:
        if batches and len(batches[-1]) < batch_size and len(batches[-1][0].tokens) * (len(batches[-1]) + 1) <= budget:
            batches[-1].append(r)
        else:
            batches.append([r])
    return batches


def allowed(groups: torch.Tensor, segments: torch.Tensor, positions: torch.Tensor,
            window: int | None = None) -> torch.Tensor:
    """[B, L] groups (-1 = padding), segments and positions -> [B, 1, L, L] bool, True where query q may attend
    key k: k at or before q in the row, in q's group, and in its prefix or in q's own branch; with a window, also
    position(q) - position(k) < window (transformers' sliding window). Padding attends to itself and earlier
    padding only (never an empty row: sdpa would give NaN)."""
    L = segments.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=segments.device).tril()
    same_group = groups[:, :, None] == groups[:, None, :]
    same_branch = segments[:, :, None] == segments[:, None, :]
    prefix = (segments == 0)[:, None, :]
    mask = causal & same_group & (same_branch | prefix)
    if window is not None:
        mask &= (positions[:, :, None] - positions[:, None, :]) < window
    return mask[:, None]


# ------------------------------------------------------------------------------------ the model side
def mask_layout(model) -> tuple[str, dict[str, int | None]] | None:
    """How this model takes a custom mask: (attention implementation, {layer type: sliding window or None}),
    or None when it cannot be packed for (the reason is in the code)."""
    inner = base_model(model)
    config = getattr(inner, "config", None)
    peft_cfg = getattr(model, "active_peft_config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    if peft_cfg is not None and getattr(peft_cfg, "is_prompt_learning", False):
        return None  # virtual tokens in front of the input
    impl = getattr(config, "_attn_implementation", None)
    if impl not in ("sdpa", "eager", BLOCKED):
        return None  # flash / flex attention take no dense 4D mask (the blocked kernel takes sdpa's bool masks)
    if not takes_logits_to_keep(model):
        return None
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        types = set(layer_types)
        if not types <= {"full_attention", "sliding_attention"}:
            return None
        return impl, {t: (window if t == "sliding_attention" else None) for t in types}
    if window is not None and getattr(config, "use_sliding_window", True):
        return impl, {"all": window}
    return impl, {"all": None}


def _model_mask(layout, groups, segments, positions, dtype):
    impl, windows = layout
    masks = {}
    for name, window in windows.items():
        m = allowed(groups, segments, positions, window)
        if impl == "eager":
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, torch.finfo(dtype).min)
        masks[name] = m
    return masks["all"] if "all" in masks else masks


@contextmanager
def collection_paused():
    """Python's cyclic garbage collector off for the block, back as it was after. A loglikelihood call allocates
    hundreds of thousands of small lists and tuples (token lists, planned rows); every few hundred allocations
    start a collection, and an older-generation one walks every object the process holds (lm-eval's documents and
    requests, ~490,000 objects at 1,000 HellaSwag items). Planning those items (Zen 4, idle, 7 alternations):
    0.109 s median with the collector, 0.072 s without, 0.36 s when a full collection fell inside. Nothing the
    call builds is cyclic, so reference counting frees it all the same."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class PackedHFLM(HFLM):
    """HFLM whose `_loglikelihood_tokens` packs requests that share a prefix (module docstring). Everything else,
    generation included, is HFLM's."""

    _encoded: dict | None = None  # tok_encode's results during one loglikelihood call
    _wanted: list | None = None  # tok_encode's arguments, while _encode_all finds what the call will encode

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        """HFLM's, with every string it will tokenise encoded first in one batched tokenizer call (_encode_all) and
        tok_encode remembered for the call: lm-eval's _encode_pair encodes each string on its own and a multiple-choice
        item's context once per choice (hellaswag: four times); on a GPU the tokenizer is a large share of the time."""
        try:
            with collection_paused():
                self._encoded = self._encode_all(requests)
                return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._encoded = None

    def _encode_all(self, requests) -> dict:
        """{tok_encode's arguments: its tokens} for every string lm-eval's _encode_pair asks for over these requests,
        from batched tokenizer calls (ENCODE_CHUNK strings each, per special-tokens setting): a fast tokenizer
        encodes a batch in Rust (threads unless TOKENIZERS_PARALLELISM=false) without the Python work of one encode()
        per string (SmolLM2, 1,000 HellaSwag items, one thread, Zen 4: 0.75 s -> 0.47 s). The strings are found by
        running _encode_pair itself with tok_encode recording its arguments, so its whitespace rule and boundary stay
        lm-eval's; each setting's first string is checked against HFLM's tok_encode, and any difference leaves the
        call to it (empty dict): a tokenizer whose batch call differs from encode() for every string (e.g. one that
        switches language mode) is caught, one that differs for particular strings only would not be (none of the
        shipped models' tokenizers does). Empty contexts (lm-eval's prefix-token path) and slow tokenizers are left
        to tok_encode as well."""
        if not getattr(self.tokenizer, "is_fast", False):
            return {}
        self._wanted = []
        try:
            for context, continuation in (r.args for r in requests):
                if context:
                    self._encode_pair(context, continuation)
            wanted = list(dict.fromkeys(self._wanted))
        finally:
            self._wanted = None
        bos = self.tokenizer.decode(self.prefix_token_id)
        settings: dict[tuple, list] = {}
        for key in wanted:  # HFLM.tok_encode's choice of add_special_tokens, string by string
            string, add_special_tokens, _ = key
            kwargs = _add_special_kwargs(add_special_tokens, self.add_bos_token)
            if add_special_tokens is None and has_bos_prefix(string, bos):
                kwargs["add_special_tokens"] = False
            settings.setdefault(tuple(sorted(kwargs.items())), []).append(key)
        encoded: dict = {}
        for kwargs, keys in settings.items():
            for a in range(0, len(keys), ENCODE_CHUNK):
                chunk = keys[a:a + ENCODE_CHUNK]
                ids = self.tokenizer([k[0] for k in chunk], **dict(kwargs))["input_ids"]
                for (string, add_special_tokens, left), enc in zip(chunk, ids, strict=True):
                    encoded[(string, add_special_tokens, left)] = enc[-left:] if left else enc
            string, add_special_tokens, left = keys[0]
            if encoded[keys[0]] != super().tok_encode(string, add_special_tokens=add_special_tokens,
                                                      left_truncate_len=left):
                return {}
        return encoded

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        if self._wanted is not None and not kwargs:  # _encode_all is collecting the strings: nothing encoded yet
            self._wanted.append((string, add_special_tokens, left_truncate_len))
            return []
        if self._encoded is None or kwargs:
            return super().tok_encode(string, add_special_tokens=add_special_tokens,
                                      left_truncate_len=left_truncate_len, **kwargs)
        key = (string, add_special_tokens, left_truncate_len)
        if key not in self._encoded:
            self._encoded[key] = super().tok_encode(string, add_special_tokens=add_special_tokens,
                                                    left_truncate_len=left_truncate_len)
        return list(self._encoded[key])  # a copy: the caller owns what it gets, as from HFLM

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        layout = mask_layout(self.model) if self.backend == "causal" else None
        if layout is None or (self._split() is None and not self._keeps_mask()):
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        windows = [w for w in layout[1].values() if w is not None]
        packable, rest = [], []
        for i, (_, ctx, cont) in enumerate(requests):
            n = len(ctx) + len(cont)
            ok = len(ctx) > 0 and len(cont) > 0 and n <= self.max_length + 1
            if ok and windows and "all" in layout[1] and n - 1 > min(windows):
                ok = False  # one sliding mask for every layer: keep it to inputs within the window
            (packable if ok else rest).append(i)
        results: list = [None] * len(requests)
        if rest:  # lm-eval's own path, in its own order; it feeds the cache hook itself
            for i, r in zip(rest, super()._loglikelihood_tokens([requests[i] for i in rest],
                                                                 disable_tqdm=True, override_bs=override_bs)):
                results[i] = r
        if packable:
            self._score_packed(requests, packable, layout, results, disable_tqdm, override_bs)
        return results

    def _score_packed(self, requests, indices, layout, results, disable_tqdm, override_bs) -> None:
        rows = plan_rows([(requests[i][1], requests[i][2]) for i in indices])
        bs = self.batch_size if isinstance(self.batch_size, int) else (override_bs or 8)
        pbar = tqdm(total=len(indices), disable=(disable_tqdm or self.rank != 0),
                    desc="Running loglikelihood requests (packed)")
        for batch in plan_batches(rows, bs):
            for j, answer in self._score_batch(batch, layout):
                i = indices[j]
                results[i] = answer
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
                pbar.update(1)
        pbar.close()

    def _split(self):
        """(decoder, output layer) when the model's logits are output_layer(decoder(...)) (harness/model/scoring.py
        split_head, checked once per engine), else None: then the model's own forward with logits_to_keep."""
        if not hasattr(self, "_harness_split"):
            self._harness_split = split_head(self.model)
        return self._harness_split

    def _keeps_mask(self) -> bool:
        """Whether the model's own forward takes the boolean logits_to_keep that _score_batch passes when there is no
        split head (harness/model/scoring.py supports_logits_to_keep, tried once per engine): transformers before
        5.23 raises IndexError on it, and such a model is scored by HFLM's own path."""
        if not hasattr(self, "_harness_keeps_mask"):
            self._harness_keeps_mask = supports_logits_to_keep(self.model)
        return self._harness_keeps_mask

    def _score_batch(self, batch: list[Row], layout) -> list[tuple[int, tuple[float, bool]]]:
        L = len(batch[0].tokens)
        pad = lambda seq, value: seq + [value] * (L - len(seq))  # noqa: E731
        dev = self.device
        ids = torch.tensor([pad(r.tokens, 0) for r in batch], dtype=torch.long, device=dev)
        pos = torch.tensor([pad(r.positions, 0) for r in batch], dtype=torch.long, device=dev)
        seg = torch.tensor([pad(r.segments, -1) for r in batch], dtype=torch.long, device=dev)
        grp = torch.tensor([pad(r.groups, -1) for r in batch], dtype=torch.long, device=dev)
        # Every (request, target) pair: its row of the batch, its position there and its target token. A kept row
        # can score several targets (requests sharing continuation tokens share positions). The index work is done
        # here on the CPU and crosses to the device once: on a GPU, per-request indexing and per-request .item()
        # reads were a launch or a synchronisation each (benchmarks/results/gpu.json: the engine was host-bound).
        owners, sizes, pair_b, pair_at, tgt_list = [], [], [], [], []
        for b, r in enumerate(batch):
            for j, where, tgt in r.scored:
                owners.append(j)
                sizes.append(len(tgt))
                pair_b += [b] * len(where)
                pair_at += where
                tgt_list += tgt
        keep_cpu = torch.zeros(len(batch), L, dtype=torch.bool)
        keep_cpu[pair_b, pair_at] = True
        n_kept = int(keep_cpu.sum())
        pair_row = (keep_cpu.flatten().cumsum(0) - 1).view(len(batch), L)[pair_b, pair_at]  # row of the kept logits
        pair_tgt = torch.tensor(tgt_list, dtype=torch.long)
        order = torch.argsort(pair_row, stable=True)  # pairs by kept row: each softmax slice takes a contiguous run
        row_sorted = pair_row[order]
        bounds = torch.searchsorted(row_sorted, torch.arange(0, n_kept + SOFTMAX_ROWS, SOFTMAX_ROWS)).tolist()
        row_sorted, tgt_sorted = row_sorted.to(dev), pair_tgt[order].to(dev)
        if all(len(r.scored) == 1 for r in batch):  # plain rows (rolling windows): the model's own causal mask
            lengths = {len(r.tokens) for r in batch}
            kwargs = {"attention_mask": None if len(lengths) == 1 else (grp >= 0).long()}
        else:
            dtype = next(p.dtype for p in self.model.parameters() if p.dtype.is_floating_point)
            kwargs = {"attention_mask": _model_mask(layout, grp, seg, pos, self.mixed_precision_dtype or dtype),
                      "position_ids": pos}
        parts = self._split()
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            if parts is None:  # the model's own output: [kept, vocab] logits
                logits = self.model(input_ids=ids, logits_to_keep=keep_cpu.to(dev), use_cache=False, **kwargs).logits
                slice_logits = lambda a, b: logits[a:b]  # noqa: E731
            else:  # the output layer SOFTMAX_ROWS kept positions at a time: no [kept, vocab] matrix, 100-200 MB per
                #    HellaSwag batch faulted in fresh each time (1,000 x 49,152 bf16: 121 ms fresh, 77 ms reused)
                kept = keep_cpu.flatten().nonzero().squeeze(1).to(dev)  # flat indices: a bool index would synchronise
                hidden = parts[0](input_ids=ids, use_cache=False, **kwargs).last_hidden_state.flatten(0, 1)[kept]
                slice_logits = lambda a, b: parts[1](hidden[a:b])  # noqa: E731
            # lm-eval's own normalisation (F.log_softmax, as HFLM), in slices of SOFTMAX_ROWS kept rows (row-wise:
            # the same numbers as one call). logit - torch.logsumexp, which would spare the [rows, vocab]
            # log-probabilities, put choices up to 6e-4 nats below HFLM's on smollm2-135m (the slow tests failed)
            lp_sorted = None  # in the log-softmax's dtype, as HFLM sums them
            best = torch.empty(n_kept, dtype=torch.long, device=dev)  # each kept position's greedy token
            for k, a in enumerate(range(0, n_kept, SOFTMAX_ROWS)):
                chunk = slice_logits(a, a + SOFTMAX_ROWS)
                part = F.log_softmax(chunk, dim=-1, dtype=self.softmax_dtype)
                if lp_sorted is None:
                    lp_sorted = torch.empty(row_sorted.shape[0], dtype=part.dtype, device=dev)
                lo, hi = bounds[k], bounds[k + 1]
                lp_sorted[lo:hi] = part[row_sorted[lo:hi] - a, tgt_sorted[lo:hi]]
                # max's index = argmax's (the first of equal maxima: tests/test_engine.py), 5x faster than argmax on bf16
                best[a:a + chunk.shape[0]] = chunk.max(dim=-1).indices
        pair_lp = torch.empty(lp_sorted.shape, dtype=lp_sorted.dtype)
        pair_lp[order] = lp_sorted.cpu()  # back in request order, on the CPU: one transfer for the batch
        pair_greedy = best.cpu()[pair_row] == pair_tgt
        return [(j, (float(lp.sum()), bool(g.all())))
                for j, lp, g in zip(owners, pair_lp.split(sizes), pair_greedy.split(sizes), strict=True)]
