"""Prompt templates: `{{variable}}` placeholders, checked when a template is saved and filled in
one pass when a message is sent.

Filling is a single `re.sub` over the template's text, so a value is inserted as plain text: a
value that contains `{{other}}` or `}}` is never read as a placeholder and cannot break the
template. Escaping for the page happens later, where every message is rendered (chat.rendering).
"""

from __future__ import annotations

import re

# A placeholder: two braces, a lowercase name, two braces (spaces inside the braces allowed).
NAME = r"[a-z][a-z0-9_]{0,39}"
PLACEHOLDER = re.compile(r"\{\{\s*(" + NAME + r")\s*\}\}")
NAME_RE = re.compile(r"^" + NAME + r"$")
MAX_VARIABLES = 10
MAX_VALUE_CHARS = 8000


class TemplateError(ValueError):
    """A template that cannot be saved or filled; `message` says what to fix and names the variable."""

    def __init__(self, message: str, variable: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.variable = variable


def variables(text: str) -> list[str]:
    """The placeholder names of `text`, in order of first use."""
    return list(dict.fromkeys(PLACEHOLDER.findall(text)))


def check_text(text: str) -> list[str]:
    """Validate a template's text (placeholder syntax and names); returns its variables."""
    leftover = PLACEHOLDER.sub("", text)
    for token in ("{{", "}}"):
        at = leftover.find(token)
        if at != -1:
            snippet = leftover[max(0, at - 10) : at + 20]
            raise TemplateError(
                f"Malformed placeholder near {snippet!r}: write {{{{name}}}} with a lowercase name "
                "(letters, digits, underscores; starting with a letter)."
            )
    names = variables(text)
    if not names:
        raise TemplateError("The template has no {{variable}} placeholder.")
    if len(names) > MAX_VARIABLES:
        raise TemplateError(f"The template has {len(names)} variables; the limit is {MAX_VARIABLES}.")
    return names


def render(text: str, values: dict) -> str:
    """Fill every placeholder of `text` from `values` (plain text, one pass). Raises
    TemplateError naming a missing, unknown or invalid variable."""
    if not isinstance(values, dict):
        raise TemplateError("values must be an object of variable names to text.")
    names = variables(text)
    unknown = sorted(k for k in values if k not in names)
    if unknown:
        raise TemplateError(
            f"Unknown variable {unknown[0]!r}: this template takes {', '.join(names)}.", variable=str(unknown[0])
        )
    for name in names:
        value = values.get(name)
        if not isinstance(value, str) or not value.strip():
            raise TemplateError(f"Fill in the variable {name!r}: it is missing or empty.", variable=name)
        if len(value) > MAX_VALUE_CHARS:
            raise TemplateError(
                f"The variable {name!r} is {len(value)} characters; the limit is {MAX_VALUE_CHARS}.", variable=name
            )
        if "\x00" in value:
            raise TemplateError(f"The variable {name!r} contains a NUL character (\\x00).", variable=name)
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)
