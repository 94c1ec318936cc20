"""The tokens training sees: a conversation rendered with the base model's chat template, with
labels on the assistants' tokens only; and the token statistics the upload page shows.

The template is the one serving uses (inference/prompts.py: apply_chat_template with
add_generation_prompt=True), so a tuned model is trained on the markup it is prompted with;
SmolLM2's adds its default system message when a conversation has none, in both places. The
rendered text carries its own special tokens (SmolLM2's BOS is `<|im_start|>`, written by the
template at each turn), so it is tokenized with add_special_tokens=False, as
apply_chat_template(tokenize=True) does: no second BOS for templates that start with one."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .datasets import RowError

IGNORE = -100  # the label of a token the loss skips


def _render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as exc:  # e.g. a template that refuses system messages
        raise ValueError(f"this model's chat template refuses the conversation: {exc}") from exc


def assistant_spans(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant reply in it.

    A reply starts where the conversation before it, rendered with the generation prompt, ends,
    and ends where the conversation through it ends (its end-of-turn markup included). Raises
    ValueError when the template renders a conversation's beginning differently from the whole."""
    renders = [
        (i, _render(tokenizer, messages[:i], generation_prompt=True), _render(tokenizer, messages[: i + 1]))
        for i, message in enumerate(messages)
        if message["role"] == "assistant"
    ]
    ends_with_reply = bool(renders) and renders[-1][0] == len(messages) - 1
    full = renders[-1][2] if ends_with_reply else _render(tokenizer, messages)  # one rendering fewer
    spans: list[tuple[int, int]] = []
    for i, before, through in renders:
        start, end = len(before), len(through)
        if (
            not (full.startswith(before) and full.startswith(through))
            or start > end
            or (spans and start < spans[-1][1])
        ):
            raise ValueError(
                f"message {i + 1}: this model's chat template renders the conversation up to this answer "
                "differently from the whole conversation, so the answer's tokens cannot be found"
            )
        spans.append((start, end))
    return full, spans


def encode_chat(messages: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """input_ids of the whole conversation rendered with the tokenizer's chat template, and labels
    equal to input_ids on the assistants' tokens (their content and the end-of-turn token that
    closes them) and -100 elsewhere (system, user, template markup).

    The text is tokenized piece by piece, cut where each reply starts and ends, so a reply's first
    token never merges with the markup before it (a reply starting with blank lines would): the
    prompt part is tokenized as serving tokenizes a prompt, and the spans are exact. For ordinary
    text this gives the same ids as tokenizing the whole rendering at once."""
    full, spans = assistant_spans(messages, tokenizer)
    pieces, trained, at = [], [], 0
    for start, end in spans:
        pieces += [full[at:start], full[start:end]]
        trained += [False, True]
        at = end
    pieces.append(full[at:])
    trained.append(False)
    input_ids, labels = [], []
    for ids, is_trained in zip(tokenizer(pieces, add_special_tokens=False)["input_ids"], trained, strict=True):
        input_ids += ids
        labels += ids if is_trained else [IGNORE] * len(ids)
    return input_ids, labels


@dataclass
class TokenStats:
    rows: int  # rows that fit the model's context
    turns: int  # their user and assistant messages
    min: int  # tokens of the shortest row
    median: float
    max: int
    total: int  # tokens of all rows: what one epoch reads
    trained_tokens: int  # the assistants' tokens: where the loss is computed


def token_stats(
    rows: list[list[dict]], tokenizer, lines: list[int], max_tokens: int, where: list[str] | None = None
) -> tuple[TokenStats, list[RowError]]:
    """Statistics over the rows that fit in `max_tokens`, and a RowError for each row that does not
    (or that the template cannot encode). `lines` (and `where`, "line 3"/"item 3", when given) say
    where each row came from."""
    sizes, errors, turns, trained = [], [], 0, 0
    for index, messages in enumerate(rows):
        place = where[index] if where else ""
        try:
            input_ids, labels = encode_chat(messages, tokenizer)
        except ValueError as exc:
            errors.append(RowError(lines[index], str(exc), place))
            continue
        if len(input_ids) > max_tokens:
            reason = f"{len(input_ids)} tokens, longer than the model's {max_tokens}-token context"
            errors.append(RowError(lines[index], reason, place))
            continue
        sizes.append(len(input_ids))
        turns += sum(1 for m in messages if m["role"] in ("user", "assistant"))
        trained += sum(1 for label in labels if label != IGNORE)
    stats = TokenStats(
        rows=len(sizes),
        turns=turns,
        min=min(sizes, default=0),
        median=float(statistics.median(sizes)) if sizes else 0.0,
        max=max(sizes, default=0),
        total=sum(sizes),
        trained_tokens=trained,
    )
    return stats, errors


def estimate_seconds(total_tokens: int, epochs: int, tokens_per_second: float) -> float:
    """Training time from a measured throughput (tokens seen per second, padding excluded)."""
    return total_tokens * epochs / tokens_per_second if tokens_per_second > 0 else 0.0
