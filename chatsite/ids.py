"""Whole numbers read from what a client sent (ids, limits, periods): ASCII digits only.

`str.isdigit()` is true for "²" and "١٢", which `int()` then refuses or reads, and an id of 30
digits overflows the database's integer: a 500 either way. Every parser of a number in a URL,
query string or form field uses these instead."""

from __future__ import annotations

import re

ID = re.compile(r"[0-9]{1,18}")
SIGNED = re.compile(r"-?[0-9]{1,18}")


def parse_id(value) -> int | None:
    """The number `value` writes in 1 to 18 ASCII digits (an int is taken as is if it fits),
    else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < 10**18 else None
    if isinstance(value, str) and ID.fullmatch(value):
        return int(value)
    return None


def parse_signed(value: str) -> int | None:
    """A whole number with an optional minus sign, in ASCII digits (surrounding spaces allowed)."""
    if isinstance(value, str) and SIGNED.fullmatch(value.strip()):
        return int(value.strip())
    return None
