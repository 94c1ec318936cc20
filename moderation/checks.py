"""Input rules before generation, and the rules every process uses (cached briefly).

Check: `check_input` (what the model may see, or which rule blocks it). Do: `events.record`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django.conf import settings

from .matching import Match, RuleSet, masked

_cache: dict = {"rules": None, "at": 0.0}


def current_rules() -> RuleSet:
    """The enabled rules, compiled; reloaded at most every MODERATION_RELOAD_S seconds (a rule
    saved in the admin applies everywhere within that time) and at once in the process that
    saved it (see signals in apps.py)."""
    now = time.monotonic()
    if _cache["rules"] is None or now - _cache["at"] > settings.MODERATION_RELOAD_S:
        from .models import Rule

        _cache["rules"] = RuleSet(Rule.objects.filter(enabled=True), window=settings.MODERATION_STREAM_WINDOW)
        _cache["at"] = now
    return _cache["rules"]


def forget_rules(**_) -> None:
    _cache["rules"] = None


@dataclass
class InputOutcome:
    text: str  # what the model sees (masked)
    block: Match | None = None
    records: list[dict] = field(default_factory=list)

    @property
    def refusal(self) -> str:
        category = self.block.rule.category if self.block else ""
        about = f" ({category})" if category else ""
        return (
            f"This message was blocked by the moderation rules{about}. "
            "Rephrase it, or ask an administrator if you think this is a mistake."
        )


def check_input(text: str) -> InputOutcome:
    rules = current_rules()
    matches = rules.find(text, "input")
    records = [m.record("input") for m in matches]
    block = next((m for m in matches if m.rule.action == "block"), None)
    if block is not None:
        return InputOutcome(text, block, records)
    return InputOutcome(masked(text, matches), None, records)


def screen(text: str, *, source: str, user, conversation=None) -> InputOutcome:
    """The input rules on a piece of client-supplied text that reaches a model or a dataset
    besides the message itself (a system prompt, a feedback comment or edited answer): what they
    matched is recorded at once (a block waits in the review queue). The caller refuses on
    `outcome.block`, else keeps `outcome.text` (masked where a rule says so)."""
    from . import events

    outcome = check_input(text)
    events.record(outcome.records, source=source, user=user, conversation=conversation)
    return outcome


def output_filter():
    """An OutputFilter for one reply, or None when no rule applies to output (nothing held back)."""
    from .streaming import OutputFilter

    rules = current_rules()
    return OutputFilter(rules) if rules.for_stage("output") else None
