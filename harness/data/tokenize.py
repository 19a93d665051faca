"""Prompts and tokens, the same for every data format: the prompt templates (the tokenizer's chat template, or
data.prompt_template alpaca / plain), tokenising a prompt and its completion with an exact boundary, a
conversation turn by turn with the loss on the assistant turns, and packing rows into fixed windows.
The data formats (harness/data/formats.py) build their rows' prompts and encodings from these pieces.
"""

from __future__ import annotations

from harness.config import DataConfig
from harness.data.read import BadRow, DataError


# ------------------------------------------------------------------------------- prompts
def alpaca_prompt(instruction: str, inp: str, preamble: str = "") -> str:
    if inp.strip():
        head = preamble or ("Below is a task instruction, paired with input that gives more context. "
                            "Write a response that completes the task.")
        return f"{head}\n\n### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n### Response:\n"
    head = preamble or "Below is a task instruction. Write a response that completes the task."
    return f"{head}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def plain_chat(messages: list[dict], add_generation_prompt: bool, template: str) -> str:
    """Role-tagged conversation text for chat data when the chat template is not used."""
    heads = ({"user": "### User:\n", "assistant": "### Assistant:\n"} if template == "alpaca"
             else {"user": "User: ", "assistant": "Assistant: "})
    sep = "\n\n" if template == "alpaca" else "\n"
    out = "".join((m["content"] if m["role"] == "system" else heads[m["role"]] + m["content"]) + sep for m in messages)
    return out + (heads["assistant"] if add_generation_prompt else "")


def prompt_messages(msgs: list[dict]) -> list[dict]:
    """The conversation up to (not including) its last assistant turn: what the model is prompted with."""
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))
    return msgs[:last]


def plain_prompt(system: str, user: str) -> str:
    """The `plain` template: the system prompt and a blank line (if any), the user text, a newline."""
    return (f"{system}\n\n" if system else "") + user + "\n"


def single_turn(system: str, user: str) -> list[dict]:
    """[system?, user] chat messages."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def uses_chat_template(tokenizer, data: DataConfig) -> bool:
    return bool(data.use_chat_template and getattr(tokenizer, "chat_template", None))


def apply_template(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as exc:
        # Templates without a system role (e.g. Gemma's) raise: fold the system text into the first user turn.
        if len(messages) > 1 and messages[0]["role"] == "system" and messages[1]["role"] == "user":
            merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
            return apply_template(tokenizer, merged + messages[2:], add_generation_prompt)
        raise DataError(f"the tokenizer's chat template rejected the messages ({exc}); "
                        "set data.use_chat_template=false to use data.prompt_template instead.") from None


def with_bos(text: str, tokenizer, add_bos: bool) -> str:
    if not add_bos:
        return text
    bos = getattr(tokenizer, "bos_token", None)
    if not bos:
        raise DataError("model.add_bos=true but the tokenizer has no bos_token; set model.add_bos=false.")
    return text if text.startswith(bos) else bos + text


def render(messages: list[dict], plain: str, tokenizer, data: DataConfig, add_bos: bool) -> str:
    """The generation prompt: the chat template applied to `messages` (assistant turn opened) when the tokenizer
    has one and data.use_chat_template, else `plain`; BOS in front when add_bos."""
    text = apply_template(tokenizer, messages, True) if uses_chat_template(tokenizer, data) else plain
    return with_bos(text, tokenizer, add_bos)


# ---------------------------------------------------------------------------- tokenising
def token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return list(tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"])


def eos_token_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError("the tokenizer has no eos_token; completions must end with one. Set tokenizer.eos_token.")
    return int(eos)


def n_loss(labels: list[int]) -> int:
    """Label positions that carry loss after the causal shift (position 0 is never predicted)."""
    return sum(1 for x in labels[1:] if x != -100)


def make_example(ids: list[int], labels: list[int]) -> dict:
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


def encode_prompt_completion(prompts: list[str], completions: list[str], tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + EOS) for rendered prompts and their completions. The prompt is tokenised on
    its own (what generation sees); the completion keeps the joint tokenisation when the prompt's tokens are a
    prefix of it, else it is tokenised on its own, so the boundary is exact either way."""
    eos = eos_token_id(tokenizer)
    p_ids = token_ids(tokenizer, prompts)
    joint = token_ids(tokenizer, [p + o for p, o in zip(prompts, completions)])
    alone = token_ids(tokenizer, completions)
    out = []
    for p, j, o in zip(p_ids, joint, alone):
        comp = j[len(p):] if j[: len(p)] == p and len(j) > len(p) else o
        out.append((p, comp + [eos]))
    return out


def encode_conversation(msgs: list[dict], tokenizer, data: DataConfig, add_bos: bool) -> tuple[list[int], list[int]]:
    """(ids, labels) of a conversation; only assistant turns carry loss when completion_only_loss. Raises BadRow
    when the template does not render the conversation turn by turn."""
    if uses_chat_template(tokenizer, data):
        def render(m: list[dict], gen: bool) -> str:
            return apply_template(tokenizer, m, gen)
    else:
        def render(m: list[dict], gen: bool) -> str:
            return plain_chat(m, gen, data.prompt_template)
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before, upto = render(msgs[:i], True), render(msgs[: i + 1], False)
        if not before.startswith(done) or not upto.startswith(before):
            raise BadRow("the chat template does not render this conversation turn by turn (earlier text changes "
                       "when a turn is added); set data.use_chat_template=false")
        segments += [(before[len(done):], False), (upto[len(before):], True)]
        done = upto
    full = render(msgs, False)
    if full.startswith(done) and len(full) > len(done):
        segments.append((full[len(done):], False))
    if add_bos:
        segments[0] = (with_bos(segments[0][0], tokenizer, True), segments[0][1])
    ids: list[int] = []
    labels: list[int] = []
    for (text, loss), seg_ids in zip(segments, token_ids(tokenizer, [s for s, _ in segments])):
        ids += seg_ids
        labels += seg_ids if (loss or not data.completion_only_loss) else [-100] * len(seg_ids)
    eos = eos_token_id(tokenizer)
    if not ids or ids[-1] != eos:
        ends_with_answer = msgs[-1]["role"] == "assistant"
        ids.append(eos)
        labels.append(eos if (ends_with_answer or not data.completion_only_loss) else -100)
    return ids, labels


def pack_chunks(examples: list[dict], max_length: int, eos_id: int, sep_label: int) -> tuple[list[dict], dict]:
    """Concatenate examples (EOS between, unless one already ends with it) and cut max_length blocks.
    Blocks with no loss-bearing label are dropped and counted."""
    ids: list[int] = []
    labels: list[int] = []
    for ex in examples:
        ids += ex["input_ids"]
        labels += ex["labels"]
        if ex["input_ids"] and ex["input_ids"][-1] != eos_id:
            ids.append(eos_id)
            labels.append(sep_label)
    blocks, dropped, dropped_tokens = [], 0, 0
    for s in range(0, len(ids), max_length):
        b_ids, b_labels = ids[s: s + max_length], labels[s: s + max_length]
        if n_loss(b_labels) == 0:
            dropped += 1
            dropped_tokens += len(b_ids)
            continue
        blocks.append(make_example(b_ids, b_labels))
    return blocks, {"stream_tokens": len(ids), "blocks_without_loss": dropped, "tokens_without_loss": dropped_tokens}
