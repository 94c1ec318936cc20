"""The tokens training sees: a conversation rendered with the base model's chat template, with
labels on the assistants' tokens only; and the token statistics the upload page shows."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .datasets import RowError


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_chat(messages: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """input_ids of the whole conversation, and labels equal to them on each assistant's reply
    (its text and the end-of-turn markup that closes it) and -100 elsewhere.

    Each assistant span is found by rendering the conversation up to it (with the generation
    prompt: where a reply starts) and including it (where it ends), so any template works whose
    renderings of a prefix are prefixes of the whole."""
    input_ids = _render(tokenizer, messages, generation_prompt=False)
    labels = [-100] * len(input_ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _render(tokenizer, messages[:i], generation_prompt=True)
        end = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if input_ids[: len(start)] != start or input_ids[: len(end)] != end:
            raise ValueError(
                "This model's chat template renders a conversation differently from its beginning; "
                "the assistant's tokens cannot be found."
            )
        labels[len(start) : len(end)] = input_ids[len(start) : len(end)]
    return input_ids, labels


@dataclass
class TokenStats:
    rows: int
    turns: int  # user and assistant messages
    min: int
    median: float
    max: int
    total: int
    trained_tokens: int  # the assistants' tokens: where the loss is computed


def token_stats(
    rows: list[list[dict]], tokenizer, lines: list[int], max_tokens: int, where: list[str] | None = None
) -> tuple[TokenStats, list[RowError]]:
    """Statistics over the rows that fit in `max_tokens`, and an error for each row that does not."""
    sizes, errors, turns, trained = [], [], 0, 0
    for index, messages in enumerate(rows):
        input_ids, labels = encode_chat(messages, tokenizer)
        if len(input_ids) > max_tokens:
            place = where[index] if where else f"line {lines[index]}"
            reason = f"{len(input_ids)} tokens, longer than the model's {max_tokens}-token context"
            errors.append(RowError(line=lines[index], reason=reason, where=place))
            continue
        sizes.append(len(input_ids))
        turns += sum(1 for m in messages if m["role"] in ("user", "assistant"))
        trained += sum(1 for label in labels if label != -100)
    stats = TokenStats(
        rows=len(sizes),
        turns=turns,
        min=min(sizes, default=0),
        median=statistics.median(sizes) if sizes else 0,
        max=max(sizes, default=0),
        total=sum(sizes),
        trained_tokens=trained,
    )
    return stats, errors


def estimate_seconds(total_tokens: int, epochs: int, tokens_per_second: float) -> float:
    """Training time from a measured throughput (tokens seen per second, padding excluded)."""
    return total_tokens * epochs / tokens_per_second if tokens_per_second > 0 else 0.0
