"""Generation settings: the one place that defines them, their defaults and their validation.

Used by the chat socket, the chat settings page, the admin's model form and (later) the API, so
they cannot disagree. Both backends implement every setting here with the same meaning.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64
MAX_SEED = 2**31 - 1


class SettingsError(ValueError):
    """A refused setting; `field` names it and the message says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Rule:
    """One numeric setting: its bounds (lo, hi), whether lo itself is allowed, and its help."""

    lo: float
    hi: float
    help: str
    lo_open: bool = False
    integer: bool = False

    def check(self, name: str, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SettingsError(name, f"{name} must be a number. {self.help}")
        if self.integer and not float(value).is_integer():
            raise SettingsError(name, f"{name} must be a whole number. {self.help}")
        too_low = value <= self.lo if self.lo_open else value < self.lo
        if too_low or value > self.hi:
            span = f"above {self.lo:g} and at most {self.hi:g}" if self.lo_open else f"from {self.lo:g} to {self.hi:g}"
            raise SettingsError(name, f"{name} must be {span}. {self.help}")
        return int(value) if self.integer else float(value)


RULES: dict[str, Rule] = {
    "temperature": Rule(0, 2, "0 picks the likeliest token every time (greedy)."),
    "top_p": Rule(0, 1, "Keep the smallest set of tokens whose probability reaches top_p.", lo_open=True),
    "top_k": Rule(0, 1000, "Keep only the k likeliest tokens; 0 turns it off.", integer=True),
    "min_p": Rule(0, 1, "Drop tokens less likely than min_p times the likeliest; 0 turns it off."),
    "repetition_penalty": Rule(
        0.5, 2, "Above 1 makes tokens seen in the last 64 less likely (1 turns it off).", lo_open=False
    ),
    "frequency_penalty": Rule(-2, 2, "Subtracted once per earlier use of a token in the last 64 tokens."),
    "presence_penalty": Rule(-2, 2, "Subtracted once from every token used in the last 64 tokens."),
}
PENALTY_WINDOW = 64  # both backends look back this many tokens (llama.cpp's penalty_last_n)


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. The defaults here are the defaults of a new model row."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.05
    repetition_penalty: float = 1.1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Sampling:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


SAMPLING_FIELDS = tuple(f.name for f in fields(Sampling))
DEFAULTS = Sampling()
# Chosen with bench/loops.py on the packaged model (docs/performance.md): on llama.cpp the old
# registered settings (temperature 0.2, top_p 0.9, nothing else) looped on 6 of 16 prompts, these
# on none, and they answered as many known-answer questions right (6 of 8, as greedy decoding did).
PACKAGED_DEFAULTS = Sampling(
    temperature=0.5,
    top_p=0.9,
    top_k=40,
    min_p=0.05,
    repetition_penalty=1.1,
    frequency_penalty=0.0,
    presence_penalty=0.0,
)


def check_setting(name: str, value):
    return RULES[name].check(name, value)


def check_max_tokens(value, cap: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap:
        raise SettingsError("max_tokens", f"max_tokens must be a whole number from 1 to {cap} for this model.")
    return value


def check_seed(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise SettingsError("seed", f"seed must be a whole number from 0 to {MAX_SEED}, or left out for a random one.")
    return value


def check_stop(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise SettingsError("stop", "stop must be a non-empty string or a list of them.")
    if len(value) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in value):
        raise SettingsError(
            "stop", f"stop takes at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_CHARS} characters each."
        )
    return list(value)


def resolve(asked: dict, *fallbacks, cap: int) -> dict:
    """The settings of one request: each value from `asked`, else the first fallback (an object
    or a dict) that sets it; every value validated. Returns a plain dict of every setting plus
    max_tokens, seed and stop. Raises SettingsError."""
    if not isinstance(asked, dict):
        raise SettingsError("params", "params must be an object.")
    allowed = set(SAMPLING_FIELDS) | {"max_tokens", "seed", "stop"}
    unknown = set(asked) - allowed
    if unknown:
        raise SettingsError(
            "params", f"Unknown params: {', '.join(sorted(unknown))}. Known: {', '.join(sorted(allowed))}."
        )

    def pick(name):
        if asked.get(name) is not None:
            return asked[name]
        for source in fallbacks:
            value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
            if value is not None:
                return value
        return getattr(DEFAULTS, name, None)

    result = {name: check_setting(name, pick(name)) for name in SAMPLING_FIELDS}
    result["max_tokens"] = check_max_tokens(pick("max_tokens"), cap)
    seed = check_seed(asked.get("seed"))
    if seed is not None:
        result["seed"] = seed
    stop = check_stop(asked.get("stop"))
    if stop:
        result["stop"] = stop
    return result
