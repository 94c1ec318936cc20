"""Output rules while a reply streams, in the inference worker: what of the model's text may be
shown now.

The worker holds back the tail of a reply that a rule could still match when the next tokens
arrive (as long as the longest keyword, or MODERATION_STREAM_WINDOW characters for regular
expressions), so a masked word never reaches a client, not even for one frame, and a match
split across two deltas is still caught. A block ends the reply before the match.

The worker asks at every flush with the whole reply so far. The filter keeps what is decided
for good (the matches that start further back than a rule reaches, and the masked text before
them) and normalizes and scans only the tail, so a reply costs time in proportion to its length,
not its square (a 20,000-character reply viewed every 5 characters under two rules: 0.56 s, where
reading the whole text at each view takes 41.6 s: bench/moderation_stream.py, docs/performance.md). The
final view reads the whole reply once more: a match longer than the rules' reach is still
caught in the stored reply (docs/moderation.md).
"""

from __future__ import annotations

import dataclasses
import unicodedata
from bisect import bisect_left

from .matching import Match, RuleSet, _wordy, masked, normalize

# Characters at the end of the text seen last that are normalized again with the text after
# them. normalize() maps each character on its own today, so this changes nothing; it keeps the
# filter right should normalization ever compose a character with the marks that follow it
# (Unicode's stream-safe text has at most 30 of them in a row).
RENORMALIZED = 32


class OutputFilter:
    """One reply's view of the output rules. Each `view` is given the text of the one before
    plus what came since; any other text (cut shorter at a stop string) starts it over."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.reach = rules.reach("output")
        self.records: dict[tuple, dict] = {}  # what matched, once each, for moderation.Event
        self.block: Match | None = None
        self._rules = rules.for_stage("output")
        self._start_over()

    def _start_over(self) -> None:
        self._raw = ""  # the text of the last view
        # The normalized text that later scans read: normalize(raw[_base:]), which starts at
        # index _norm_base of the whole text's normalized form; _origin maps it back to raw.
        self._base = self._norm_base = 0
        self._norm = ""
        self._origin: list[int] = []
        self._resume = [0] * len(self._rules)  # per rule: where its next scan starts (normalized)
        # Decided for good: every match that starts before _settled_upto (raw), and
        # masked(raw, those, upto) for any upto >= _settled_upto: _shown, then raw from _pos.
        self._settled_upto = 0
        self._settled: list[Match] = []
        self._settled_blocks: list[Match] = []
        self._settled_mask_end = 0
        self._shown = ""
        self._pos = 0

    def view(self, raw: str, cut: int, final: bool) -> tuple[str, bool]:
        """The text of `raw[:cut]` that may be shown now (masked), and whether a block rule
        matched (the text then ends before its match, for good)."""
        if final or not raw.startswith(self._raw):
            self._start_over()
        self._normalize(raw)
        length = self._norm_base + len(self._norm)
        if not final:
            first_open = length - (self.reach - 1)  # a later match could start here
            if first_open <= 0:
                cut = 0
            elif first_open < length:
                cut = min(cut, self._origin[first_open - self._norm_base])
        scanned = self._scan(raw)
        decided = []
        for match, _stop, _rule in scanned:
            if final or match.end < len(raw):
                decided.append(match)
            else:  # touches the end: the next tokens may lengthen or undo it
                cut = min(cut, match.start)
        for match in decided:
            if match.start < cut:
                self.records.setdefault((match.rule.pk, match.rule.name, match.start), match.record("output"))
        shown = self._show(raw, decided, cut)
        if not final:
            self._settle(raw, scanned, cut)
        return shown

    @property
    def moderation(self) -> list[dict]:
        return list(self.records.values())

    def _normalize(self, raw: str) -> None:
        """Normalize what is new since the last view (and the last few characters before it)."""
        start = max(self._base, len(self._raw) - RENORMALIZED)
        while self._base < start < len(raw) and unicodedata.combining(raw[start]):
            start -= 1  # from the character that begins a combining sequence
        keep = bisect_left(self._origin, start)
        norm, origin = normalize(raw[start:])
        self._norm = self._norm[:keep] + norm
        self._origin[keep:] = [start + i for i in origin]
        self._raw = raw

    def _scan(self, raw: str) -> list[tuple[Match, int, int]]:
        """The matches from where each rule's scan resumes, found as `RuleSet.find` finds them
        in the whole text; each with its end in the normalized text and its rule's index."""
        base, norm, origin = self._norm_base, self._norm, self._origin
        found = []
        for index, rule in enumerate(self._rules):
            for m in rule.regex.finditer(norm, self._resume[index] - base):
                begin, stop = m.start(), m.end()
                if stop == begin:
                    continue
                if rule.word_start and base + begin > 0 and _wordy(norm[begin - 1]):
                    continue
                if rule.word_end and stop < len(norm) and _wordy(norm[stop]):
                    continue
                start, end = origin[begin], origin[stop - 1] + 1
                found.append((Match(rule, start, end, raw[start:end]), base + stop, index))
        return sorted(found, key=lambda item: (item[0].start, -item[0].end))

    def _show(self, raw: str, decided: list[Match], cut: int) -> tuple[str, bool]:
        """The masked text up to the cut (or up to a block, and True)."""
        blocks = [m for m in (*self._settled_blocks, *decided) if m.rule.action == "block" and m.start < cut]
        if blocks:
            self.block = self.block or blocks[0]
            return self._masked(raw, decided, upto=self.block.start), True
        crossing = [m for m in self._settled if m.end > cut] if self._settled_mask_end > cut else []
        for match in (*crossing, *decided):  # a masked match the cut falls inside is shown whole (replaced)
            if match.rule.action == "mask" and match.start < cut < match.end:
                cut = match.end
        return self._masked(raw, decided, upto=cut), False

    def _masked(self, raw: str, decided: list[Match], upto: int) -> str:
        """masked(raw, settled and decided matches, upto), going on from the settled text."""
        if upto < self._settled_upto:  # shows less than the settled text (rare): from the start
            return masked(raw, [*self._settled, *decided], upto=upto)
        pos = self._pos
        return self._shown + masked(raw[pos : max(pos, upto)], _shifted(decided, pos), upto=upto - pos)

    def _settle(self, raw: str, scanned: list[tuple[Match, int, int]], cut: int) -> None:
        """Keep what no later text can change: the matches that start further back from the end
        than a rule reaches (and before the renormalized characters, and the cut, so each was
        recorded), and the masked text up to there; drop the normalized text before them."""
        stable = bisect_left(self._origin, len(raw) - RENORMALIZED) - self.reach - 1
        if stable <= 0:
            return
        upto = min(cut, self._origin[stable])
        if upto <= self._settled_upto:
            return
        upto_norm = self._norm_base + bisect_left(self._origin, upto)
        matches = []
        for match, stop, rule in scanned:
            if match.start < upto:
                matches.append(match)
                self._resume[rule] = max(self._resume[rule], stop)  # a scan goes on after a match
        self._resume = [max(resume, upto_norm) for resume in self._resume]
        self._settled += matches
        self._settled_blocks += [m for m in matches if m.rule.action == "block"]
        masks = [m for m in matches if m.rule.action == "mask"]
        pos = self._pos
        self._shown += masked(raw[pos : max(pos, upto)], _shifted(masks, pos), upto=upto - pos)
        self._pos = max(pos, upto, *(m.end for m in masks))
        self._settled_mask_end = max([self._settled_mask_end, *(m.end for m in masks)])
        self._settled_upto = upto
        if upto_norm > self._norm_base:  # keep one character before the scans, for whole words
            drop = bisect_left(self._origin, self._origin[upto_norm - 1 - self._norm_base])
            self._norm = self._norm[drop:]
            del self._origin[:drop]
            self._norm_base += drop
            self._base = self._origin[0]


def _shifted(matches: list[Match], by: int) -> list[Match]:
    """The mask matches, with positions in `text[by:]` rather than `text`."""
    return [dataclasses.replace(m, start=m.start - by, end=m.end - by) for m in matches if m.rule.action == "mask"]
