"""A job's settings: the one place for their defaults, bounds and help. Every setting may be
"auto" (or left out), which takes the default measured to work on the default model
(docs/finetuning.md): LoRA r=16 on all linear layers at lr 2e-4 for 8 epochs, batch 8."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    label: str
    kind: type
    lo: float
    hi: float
    help: str


RULES = {
    "epochs": Rule("Epochs", int, 1, 100, "Passes over the training rows."),
    "learning_rate": Rule("Learning rate", float, 1e-7, 1e-2, "2e-4 for LoRA, 2e-5 for full fine-tuning when auto."),
    "batch_size": Rule("Batch size", int, 1, 256, "Rows per optimizer step."),
    "lora_rank": Rule("LoRA rank", int, 1, 256, "Size of the adapter (LoRA only); alpha is twice the rank."),
    "validation_split": Rule(
        "Validation split", float, 0.0, 0.5, "Share of rows held out to measure the validation loss."
    ),
    "seed": Rule("Seed", int, 0, 2**31 - 1, "The same seed, data and settings train the same weights."),
}

DEFAULTS = {
    "epochs": 8,
    "learning_rate": {"lora": 2e-4, "full": 2e-5},
    "batch_size": 8,
    "lora_rank": 16,
    "validation_split": 0.1,
    "seed": 0,
}


class HyperparameterError(ValueError):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def default(name: str, method: str):
    value = DEFAULTS[name]
    return value[method] if isinstance(value, dict) else value


def describe(resolved: dict) -> str:
    """Settings as a person reads them: "epochs 8, learning rate 0.0002, batch size 8, …"."""
    parts = []
    for name, value in resolved.items():
        label = RULES[name].label if name in RULES else name.replace("_", " ")
        label = label if label.startswith("LoRA") else label[0].lower() + label[1:]
        if name == "validation_split":
            value = f"{value:.0%}"
        parts.append(f"{label} {value:g}" if isinstance(value, float) else f"{label} {value}")
    return ", ".join(parts)


def resolve(method: str, asked: dict | None) -> dict:
    """The settings a job runs with: what was asked, else the default. Raises HyperparameterError."""
    asked = dict(asked or {})
    unknown = sorted(set(asked) - set(RULES))
    errors = {name: "Unknown setting." for name in unknown}
    resolved = {}
    for name, rule in RULES.items():
        raw = asked.get(name)
        if raw is None or raw == "" or raw == "auto":
            resolved[name] = default(name, method)
            continue
        value = _number(raw, rule.kind)
        if value is None:
            errors[name] = f"{rule.label} must be {'a whole number' if rule.kind is int else 'a number'} or auto."
        elif not rule.lo <= value <= rule.hi:
            errors[name] = f"{rule.label} must be between {rule.lo:g} and {rule.hi:g}."
        else:
            resolved[name] = value
    if errors:
        raise HyperparameterError(errors)
    return resolved


def _number(raw, kind: type):
    if isinstance(raw, bool):
        return None
    try:
        value = float(raw) if not isinstance(raw, (int, float)) else raw
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    if kind is int:
        return int(value) if float(value).is_integer() else None
    return float(value)


def split_sizes(rows: int, validation_split: float) -> tuple[int, int]:
    """(train, validation) row counts: at least one validation row when a split is asked and
    there are 10 rows or more; never fewer than one training row."""
    if validation_split <= 0 or rows < 10:
        return rows, 0
    held_out = min(max(1, round(rows * validation_split)), rows - 1)
    return rows - held_out, held_out


def total_steps(train_rows: int, batch_size: int, epochs: int) -> int:
    return math.ceil(train_rows / batch_size) * epochs
