"""Template placeholders in eval graders and prompts: ``{{item.answer}}``, ``{{ sample.output_text }}``.

A placeholder is a dotted path between double braces; whitespace inside the braces is ignored.
The first part names where the value comes from:

- ``item``: the data-source row being evaluated (``{{item.question}}``, ``{{ item.context.title }}``);
- ``sample``: what the model produced for that row, e.g. ``{{sample.output_text}}`` (its reply text).
  Only graders see a sample; the prompt that produces it cannot.

Each further part is a field of an object (``item.context.title``) or, on a list, a 0-based index
(``item.choices.0``). ``{{item}}`` alone renders the whole row.

Rendering: a string value is inserted as it is; a dict or list as JSON (``json.dumps``, non-ASCII kept);
any other value with ``str()`` (``42``, ``1.5``, ``True``, ``None``). A path that leads nowhere raises
`PlaceholderError`, whose message names the placeholder and the fields that do exist, e.g.
``{{item.answr}}: the item has no field 'answr' (it has: answer, question)``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from chatsite.ids import parse_id

__all__ = ["NAMESPACES", "PlaceholderError", "check", "names", "render", "value"]

#: Where a placeholder's value can come from.
NAMESPACES = ("item", "sample")

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SEGMENT = re.compile(r"[^\s.{}]+")
_NOUN = {"item": "the item", "sample": "the sample"}


class PlaceholderError(ValueError):
    """A placeholder that cannot be used or rendered; the message says which one and why."""


def _paths(template: str) -> list[tuple[str, list[str]]]:
    """Each placeholder of *template* as (its text as written, its path split on dots), in order.

    Raises PlaceholderError for a placeholder that is not a dotted path (``{{ }}``, ``{{item..a}}``).
    """
    found = []
    for match in _PLACEHOLDER.finditer(template):
        raw = match.group(0)
        path = match.group(1).strip()
        parts = path.split(".")
        if not path or not all(_SEGMENT.fullmatch(part) for part in parts):
            raise PlaceholderError(
                f"{raw}: not a placeholder path; write a dotted path such as {{{{item.answer}}}} "
                "or {{sample.output_text}}"
            )
        found.append((raw, parts))
    return found


def names(template: str) -> list[str]:
    """The paths *template* refers to, e.g. ``["item.question", "sample.output_text"]``.

    In order of first appearance, each once, with the whitespace inside the braces removed.
    Raises PlaceholderError for a placeholder that is not a dotted path.
    """
    seen: list[str] = []
    for _raw, parts in _paths(template):
        path = ".".join(parts)
        if path not in seen:
            seen.append(path)
    return seen


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def _lookup(raw: str, parts: list[str], item: dict, sample: dict | None) -> Any:
    namespace = parts[0]
    if namespace not in NAMESPACES:
        raise PlaceholderError(f"{raw}: unknown namespace '{namespace}'; a placeholder starts with item. or sample.")
    if namespace == "sample" and sample is None:
        raise PlaceholderError(
            f"{raw}: there is no sample here; {{{{sample.…}}}} can only be used in graders, "
            "after the model has answered"
        )
    value: Any = item if namespace == "item" else sample
    where = _NOUN[namespace]
    for depth, part in enumerate(parts[1:], start=1):
        if isinstance(value, dict):
            if part not in value:
                fields = ", ".join(sorted(str(key) for key in value)) or "no fields"
                raise PlaceholderError(f"{raw}: {where} has no field '{part}' (it has: {fields})")
            value = value[part]
        elif isinstance(value, list):
            index = parse_id(part)
            if index is None:
                raise PlaceholderError(f"{raw}: {where} is a list, so '{part}' must be a 0-based index such as 0")
            if index >= len(value):
                raise PlaceholderError(f"{raw}: {where} has {len(value)} element(s), so there is no index {part}")
            value = value[index]
        else:
            raise PlaceholderError(f"{raw}: {where} is {_kind(value)}, not an object, so it has no field '{part}'")
        where = ".".join(parts[: depth + 1])
    return value


def value(path: str, *, item: dict, sample: dict | None = None) -> Any:
    """The value a dotted path (``item.messages``, with or without braces) leads to, as it is
    (not rendered as text). Raises PlaceholderError like `render`."""
    path = path.strip().removeprefix("{{").removesuffix("}}").strip()
    raw = "{{" + path + "}}"
    (_raw, parts), *_ = _paths(raw) or [(raw, [])]
    if not parts:
        raise PlaceholderError(f"{path!r} is not a path such as item.messages")
    return _lookup(raw, parts, item, sample)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def render(template: str, *, item: dict, sample: dict | None = None) -> str:
    """*template* with each ``{{…}}`` placeholder replaced by its value from *item* or *sample*.

    Text outside placeholders is kept as it is. Raises PlaceholderError (a ValueError) for a
    placeholder that is not a path, names another namespace, uses ``sample`` where *sample* is None,
    or leads to a field or index that does not exist.
    """
    placeholders = dict(_paths(template))
    if not placeholders:
        return template

    def replace(match: re.Match) -> str:
        raw = match.group(0)
        return _text(_lookup(raw, placeholders[raw], item, sample))

    return _PLACEHOLDER.sub(replace, template)


def check(template: str, *, item_schema: dict | None = None, allow_sample: bool) -> None:
    """Check *template*'s placeholders before any row is evaluated; raises PlaceholderError.

    Refused: a placeholder that is not a dotted path; a namespace other than ``item`` and ``sample``;
    ``sample`` where *allow_sample* is false (in the prompt that produces the sample); and, when
    *item_schema* is a JSON schema with ``properties``, an ``item`` field that is not one of them
    (only the top-level field is checked, and not when the schema says ``"additionalProperties": true``).
    """
    properties = None
    if isinstance(item_schema, dict) and isinstance(item_schema.get("properties"), dict):
        if item_schema.get("additionalProperties") is not True:
            properties = item_schema["properties"]
    for raw, parts in _paths(template):
        namespace = parts[0]
        if namespace not in NAMESPACES:
            raise PlaceholderError(
                f"{raw}: unknown namespace '{namespace}'; a placeholder starts with item. "
                + ("or sample." if allow_sample else "(sample. is not available here)")
            )
        if namespace == "sample" and not allow_sample:
            raise PlaceholderError(
                f"{raw}: the sample does not exist yet here; {{{{sample.…}}}} can only be used in graders"
            )
        if namespace == "item" and properties is not None and len(parts) > 1 and parts[1] not in properties:
            fields = ", ".join(sorted(properties)) or "no fields"
            raise PlaceholderError(f"{raw}: the item schema has no field '{parts[1]}' (it has: {fields})")
