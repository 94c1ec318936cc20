"""Dataset formats behind one small interface and a registry: each knows its rows by their keys
and turns a row into chat messages, or says what is wrong with it."""

from __future__ import annotations

from collections import Counter

ROLES = ("system", "user", "assistant")


class RowProblem(ValueError):
    """What is wrong with one row, written for the person who will fix the file."""


def _text(row: dict, key: str, *, required: bool = True) -> str:
    if key not in row or row[key] is None:
        if required:
            raise RowProblem(f"missing field {key!r}")
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise RowProblem(f"{key!r} must be text, got {kind_of(value)}")
    if required and not value.strip():
        raise RowProblem(f"{key!r} is empty")
    return value


def kind_of(value) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class Format:
    name = ""
    label = ""
    keys: tuple[str, ...] = ()

    def matches(self, row: dict) -> bool:
        return all(key in row for key in self.keys)

    def to_messages(self, row: dict) -> list[dict]:
        raise NotImplementedError


class Messages(Format):
    name = "messages"
    label = 'chat messages: {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}'
    keys = ("messages",)

    def to_messages(self, row: dict) -> list[dict]:
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RowProblem("'messages' must be a non-empty list of {role, content} objects")
        out = []
        for index, message in enumerate(messages, start=1):
            if not isinstance(message, dict):
                raise RowProblem(f"message {index} must be an object with 'role' and 'content'")
            role = message.get("role")
            if role not in ROLES:
                raise RowProblem(f"message {index}: role {role!r} is not one of system, user, assistant")
            content = message.get("content")
            if not isinstance(content, str):
                raise RowProblem(f"message {index}: 'content' must be text, got {kind_of(content)}")
            if not content.strip():
                who = "the assistant's answer" if role == "assistant" else f"the {role} message"
                raise RowProblem(f"message {index}: {who} is empty")
            out.append({"role": role, "content": content})
        body = out[1:] if out[0]["role"] == "system" else out
        if any(m["role"] == "system" for m in body):
            raise RowProblem("a system message may only come first")
        if not body:
            raise RowProblem("there is no user message and no answer")
        for index, message in enumerate(body):
            expected = "user" if index % 2 == 0 else "assistant"
            if message["role"] != expected:
                position = index + 1 + (len(out) - len(body))
                raise RowProblem(
                    f"message {position} is from {message['role']!r} but {expected!r} was expected "
                    "(user and assistant take turns, starting with user)"
                )
        if body[-1]["role"] != "assistant":
            raise RowProblem("the last message must be the assistant's answer")
        return out


class Alpaca(Format):
    name = "alpaca"
    label = 'alpaca: {"instruction": ..., "input": ..., "output": ...}'
    keys = ("instruction", "output")

    def matches(self, row: dict) -> bool:
        return "instruction" in row or ("output" in row and "input" in row)

    def to_messages(self, row: dict) -> list[dict]:
        instruction = _text(row, "instruction")
        extra = _text(row, "input", required=False)
        output = _text(row, "output")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


class PromptCompletion(Format):
    name = "prompt_completion"
    label = 'prompt/completion: {"prompt": ..., "completion": ...}'
    keys = ("prompt", "completion")

    def matches(self, row: dict) -> bool:
        return "prompt" in row or "completion" in row

    def to_messages(self, row: dict) -> list[dict]:
        return [
            {"role": "user", "content": _text(row, "prompt")},
            {"role": "assistant", "content": _text(row, "completion")},
        ]


FORMATS: dict[str, Format] = {f.name: f for f in (Messages(), Alpaca(), PromptCompletion())}


def accepted_shapes() -> str:
    return "; ".join(f.label for f in FORMATS.values())


def detect(rows: list) -> Format | None:
    """The format most of the first 20 object rows have (by their keys), or None."""
    votes = Counter()
    for row in [r for r in rows if isinstance(r, dict)][:20]:
        for fmt in FORMATS.values():
            if fmt.matches(row):
                votes[fmt.name] += 1
                break
    if not votes:
        return None
    return FORMATS[votes.most_common(1)[0][0]]
