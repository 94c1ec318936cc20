"""Matching moderation rules against text: normalization, compiled rules, masking.

Text is normalized before matching, character by character, keeping a map back to the
original positions (so a match can be masked in the text people see): NFKC (full-width and
other compatibility letters become plain ones, ligatures are split), case folding, common
Cyrillic and Greek look-alike letters mapped to Latin, and invisible format characters
(zero-width spaces and joiners, soft hyphens) dropped.

Patterns run on RE2 (google-re2): matching takes linear time whatever the pattern, so a
catastrophic pattern such as `(a+)+$` cannot hang a worker. RE2 refuses look-around and
back-references; the admin form says so when a rule is saved.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass

import re2

logger = logging.getLogger(__name__)

# Look-alike letters NFKC keeps apart from Latin ones (Cyrillic and Greek lower case, after
# case folding), mapped to the Latin letter they imitate.
LOOKALIKES = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "ё": "e", "з": "3", "и": "u", "к": "k", "м": "m", "н": "h", "о": "o",
        "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d",
        "ɡ": "g", "ӏ": "l", "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
        "τ": "t", "υ": "u", "χ": "x", "ω": "w",
    }
)  # fmt: skip


class RuleError(ValueError):
    """A rule that cannot be used; the message is for the admin who wrote it."""


def normalize(text: str) -> tuple[str, list[int]]:
    """The text as rules see it, and for each of its characters the index of the original
    character it came from."""
    out: list[str] = []
    origin: list[int] = []
    for i, char in enumerate(text):
        if char.isascii():
            folded = char.lower()
        elif unicodedata.category(char) == "Cf":  # zero-width space/joiners, soft hyphen, BOM
            continue
        else:
            folded = unicodedata.normalize("NFKC", char).casefold().translate(LOOKALIKES)
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
        word_start, word_end = _wordy(keyword[0]), _wordy(keyword[-1])
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
