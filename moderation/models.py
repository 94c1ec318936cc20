"""Moderation rules the admins write, and the events they produce (the review queue).

Rules apply to what people send (input: before the model sees it) and to what the model writes
(output: while it streams, in the inference worker), on the chat page and the API alike.
Matching is in `moderation.matching` (normalized text, RE2: linear time, no catastrophic
patterns).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models


class Rule(models.Model):
    class Kind(models.TextChoices):
        KEYWORD = "keyword", "keyword or phrase"
        REGEX = "regex", "regular expression (RE2 syntax)"

    class AppliesTo(models.TextChoices):
        INPUT = "input", "user input"
        OUTPUT = "output", "model output"
        BOTH = "both", "both"

    class Action(models.TextChoices):
        BLOCK = "block", "block"
        FLAG = "flag", "flag (let it through, mark it for review)"
        MASK = "mask", "mask (replace the match)"

    name = models.CharField(max_length=100)
    pattern = models.CharField(
        max_length=500,
        help_text="A keyword or phrase, or a regular expression (RE2: no look-around or back-references). "
        'A keyword matches whole words only: "banana" does not match "bananas" unless "Longer words too" '
        "is ticked. Matching ignores case, width (full-width letters), accents, invisible characters and "
        "look-alike letters.",
    )
    word_forms = models.BooleanField(
        "Longer words too",
        default=False,
        help_text='A keyword also matches words that start with it: plurals and other forms ("banana" matches '
        '"bananas", "bananarama"). Keywords only.',
    )
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.KEYWORD)
    applies_to = models.CharField(max_length=10, choices=AppliesTo.choices, default=AppliesTo.BOTH)
    action = models.CharField(max_length=10, choices=Action.choices, default=Action.FLAG)
    category = models.CharField(max_length=60, blank=True, help_text="Shown to the user when a message is blocked.")
    replacement = models.CharField(
        max_length=100, blank=True, default="[removed]", help_text="What a masked match is replaced with."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from .matching import RuleError, compile_rule

        if not self.pattern.strip():
            raise ValidationError({"pattern": "The pattern is empty."})
        try:
            compile_rule(self)
        except RuleError as exc:
            raise ValidationError({"pattern": str(exc)}) from exc


class Event(models.Model):
    """A rule that matched: blocked or masked text, or a flag; flagged and blocked ones wait in
    the review queue until an admin approves (the rule was right) or dismisses them."""

    class Stage(models.TextChoices):
        INPUT = "input", "user input"
        OUTPUT = "output", "model output"

    class Status(models.TextChoices):
        PENDING = "pending", "pending review"
        APPROVED = "approved", "approved (the rule was right)"
        DISMISSED = "dismissed", "dismissed (a false alarm)"
        LOGGED = "logged", "logged (masked, no review needed)"

    class Source(models.TextChoices):
        CHAT = "chat", "chat page"
        API = "api", "API"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.CHAT)
    stage = models.CharField(max_length=10, choices=Stage.choices)
    action = models.CharField(max_length=10, choices=Rule.Action.choices)
    rule = models.ForeignKey(Rule, null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    rule_name = models.CharField(max_length=100, help_text="The rule's name when it matched.")
    category = models.CharField(max_length=60, blank=True)
    excerpt = models.CharField(max_length=300, blank=True, help_text="The matched text (admins only).")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    conversation = models.ForeignKey(
        "chat.Conversation", null=True, blank=True, on_delete=models.SET_NULL, related_name="moderation_events"
    )
    message = models.ForeignKey(
        "chat.Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="moderation_events"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    count = models.PositiveIntegerField(default=1, help_text="How many times the rule matched in this text.")
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "moderation event"
        indexes = [models.Index(fields=["status", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.action} by {self.rule_name} ({self.stage})"
