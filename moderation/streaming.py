"""Output rules while a reply streams, in the inference worker: what of the model's text may be
shown now.

The worker holds back the tail of a reply that a rule could still match when the next tokens
arrive (as long as the longest keyword, or MODERATION_STREAM_WINDOW characters for regular
expressions), so a masked word never reaches a client, not even for one frame, and a match
split across two deltas is still caught. A block ends the reply before the match.
"""

from __future__ import annotations

from .matching import Match, RuleSet, masked, normalize


class OutputFilter:
    """One reply's view of the output rules."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.reach = rules.reach("output")
        self.records: dict[tuple, dict] = {}  # what matched, once each, for moderation.Event
        self.block: Match | None = None

    def view(self, raw: str, cut: int, final: bool) -> tuple[str, bool]:
        """The text of `raw[:cut]` that may be shown now (masked), and whether a block rule
        matched (the text then ends before its match, for good)."""
        norm, origin = normalize(raw)
        if not final:
            first_open = len(norm) - (self.reach - 1)  # a later match could start here
            if first_open <= 0:
                cut = 0
            elif first_open < len(norm):
                cut = min(cut, origin[first_open])
        decided = []
        for match in self.rules.find(raw, "output", (norm, origin)):
            if final or match.end < len(raw):
                decided.append(match)
            else:  # touches the end: the next tokens may lengthen or undo it
                cut = min(cut, match.start)
        for match in decided:
            if match.start < cut:
                self.records.setdefault((match.rule.pk, match.rule.name, match.start), match.record("output"))
        blocks = [m for m in decided if m.rule.action == "block" and m.start < cut]
        if blocks:
            self.block = self.block or blocks[0]
            return masked(raw, decided, upto=self.block.start), True
        for match in decided:  # a masked match the cut falls inside is shown whole (replaced)
            if match.rule.action == "mask" and match.start < cut < match.end:
                cut = match.end
        return masked(raw, decided, upto=cut), False

    @property
    def moderation(self) -> list[dict]:
        return list(self.records.values())
