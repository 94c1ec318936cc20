"""Dataset formats behind one small interface and a registry: each knows its rows by their keys
and turns a row into chat messages, or says what is wrong with it.

Adding a format is one subclass of `Format` and one entry in `FORMATS`."""

from __future__ import annotations

from collections import Counter

ROLES = ("system", "user", "assistant")
DETECT_ROWS = 20  # rows that vote on the file's format


class RowProblem(ValueError):
    """What is wrong with one row, written for the person who will fix the file."""


class UnknownFormat(ValueError):
    """No row of the file has the shape of a known format; the message lists the accepted ones."""


def kind_of(value) -> str:
    """A JSON value's kind in words, for messages: "got a number"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _text(row: dict, key: str, *, required: bool = True) -> str:
    """The string under `key`: present and non-blank if required, else "" when absent."""
    if key not in row:
        if required:
            raise RowProblem(f"missing field {key!r}")
        return ""
    value = row[key]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise RowProblem(f"{key!r} must be text, got {kind_of(value)}")
    if required and not value.strip():
        raise RowProblem(f"{key!r} is empty")
    return value


class Format:
    """One dataset shape: `matches` recognizes its rows by their keys, `to_messages` converts one
    row to chat messages or raises RowProblem."""

    name = ""
    label = ""  # the shape, for messages that list the accepted formats
    keys: tuple[str, ...] = ()  # any of these marks a row of this format

    def matches(self, row: dict) -> bool:
        return any(key in row for key in self.keys)

    def to_messages(self, row: dict) -> list[dict]:
        raise NotImplementedError


class Messages(Format):
    """OpenAI chat style: an optional system message, then user and assistant taking turns."""

    name = "messages"
    label = '{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}'
    keys = ("messages",)

    def to_messages(self, row: dict) -> list[dict]:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise RowProblem(
                f"'messages' must be a non-empty list of {{role, content}} objects, got {kind_of(messages)}"
            )
        out = [self._message(index, message) for index, message in enumerate(messages, start=1)]
        offset = 1 if out[0]["role"] == "system" else 0
        for index, message in enumerate(out[offset:], start=offset + 1):
            if message["role"] == "system":
                raise RowProblem(f"message {index}: a system message may only come first")
            expected = "user" if (index - offset) % 2 == 1 else "assistant"
            if message["role"] != expected:
                raise RowProblem(
                    f"message {index} is from {message['role']!r} but {expected!r} was expected "
                    "(after an optional system message, user and assistant take turns, starting with user)"
                )
        if len(out) == offset:
            raise RowProblem("there is only a system message: add a user message and the assistant's answer")
        if out[-1]["role"] != "assistant":
            raise RowProblem("the last message must be the assistant's answer")
        return out

    @staticmethod
    def _message(index: int, message) -> dict:
        if not isinstance(message, dict):
            raise RowProblem(f"message {index} must be an object with 'role' and 'content', got {kind_of(message)}")
        role = message.get("role")
        if role not in ROLES:
            raise RowProblem(f"message {index}: role {role!r} is not one of system, user, assistant")
        content = message.get("content")
        if not isinstance(content, str):
            raise RowProblem(f"message {index}: 'content' must be text, got {kind_of(content)}")
        if not content.strip():
            who = "the assistant's answer" if role == "assistant" else f"the {role} message"
            raise RowProblem(f"message {index}: {who} is empty")
        return {"role": role, "content": content}


class Alpaca(Format):
    """instruction (+ optional input) → output."""

    name = "alpaca"
    label = '{"instruction": ..., "input": ... (optional), "output": ...}'
    keys = ("instruction", "output")

    def to_messages(self, row: dict) -> list[dict]:
        instruction = _text(row, "instruction")
        extra = _text(row, "input", required=False)
        output = _text(row, "output")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


class PromptCompletion(Format):
    """prompt → completion."""

    name = "prompt_completion"
    label = '{"prompt": ..., "completion": ...}'
    keys = ("prompt", "completion")

    def to_messages(self, row: dict) -> list[dict]:
        return [
            {"role": "user", "content": _text(row, "prompt")},
            {"role": "assistant", "content": _text(row, "completion")},
        ]


FORMATS: dict[str, Format] = {f.name: f for f in (Messages(), Alpaca(), PromptCompletion())}


def accepted_shapes() -> str:
    return "; ".join(f"{f.name}: {f.label}" for f in FORMATS.values())


def format_of(row) -> Format | None:
    """The first format whose keys the row has (messages, then alpaca, then prompt_completion)."""
    if not isinstance(row, dict):
        return None
    return next((f for f in FORMATS.values() if f.matches(row)), None)


def detect(rows: list) -> Format:
    """The format most of the first 20 recognizable object rows have. Raises UnknownFormat
    (naming the first row's fields and the accepted shapes) when no row is recognized."""
    votes: Counter[str] = Counter()
    for row in rows:
        fmt = format_of(row)
        if fmt is not None:
            votes[fmt.name] += 1
            if votes.total() == DETECT_ROWS:
                break
    if votes:
        return FORMATS[votes.most_common(1)[0][0]]
    first = next((row for row in rows if isinstance(row, dict)), None)
    fields = ", ".join(repr(key) for key in list(first)[:8]) if first else ""
    seen = f" (the first row has {fields})" if fields else ""
    raise UnknownFormat(f"No row has a known shape{seen}. Accepted rows: {accepted_shapes()}.")
