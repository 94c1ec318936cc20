"""Prompt presets, prompt templates and per-user quotas (all managed in the admin)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models, transaction

from inference import sampling

from . import templating


class Preset(models.Model):
    """A named starting point for a conversation: a system prompt and default sampling settings.
    Choosing one in the chat page fills the settings panel (empty fields keep the model's default)."""

    name = models.CharField(max_length=80, unique=True)
    description = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(null=True, blank=True, help_text=sampling.RULES["temperature"].help)
    top_p = models.FloatField(null=True, blank=True, help_text=sampling.RULES["top_p"].help)
    top_k = models.PositiveIntegerField(null=True, blank=True, help_text=sampling.RULES["top_k"].help)
    min_p = models.FloatField(null=True, blank=True, help_text=sampling.RULES["min_p"].help)
    repetition_penalty = models.FloatField(null=True, blank=True, help_text=sampling.RULES["repetition_penalty"].help)
    frequency_penalty = models.FloatField(null=True, blank=True, help_text=sampling.RULES["frequency_penalty"].help)
    presence_penalty = models.FloatField(null=True, blank=True, help_text=sampling.RULES["presence_penalty"].help)
    max_tokens = models.PositiveIntegerField(null=True, blank=True, help_text="Reply length limit (tokens).")
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = {}
        if len(self.system_prompt) > settings.CHAT_MAX_SYSTEM_PROMPT_CHARS:
            errors["system_prompt"] = f"At most {settings.CHAT_MAX_SYSTEM_PROMPT_CHARS} characters."
        for name in sampling.SAMPLING_FIELDS:
            value = getattr(self, name)
            if value is not None:
                try:
                    sampling.check_setting(name, value)
                except sampling.SettingsError as exc:
                    errors[name] = exc.message
        if self.max_tokens is not None and self.max_tokens < 1:
            errors["max_tokens"] = "max_tokens must be at least 1 (each model caps it further)."
        if errors:
            raise ValidationError(errors)

    def settings(self) -> dict:
        """The settings it sets (the chat page fills these fields)."""
        names = (*sampling.SAMPLING_FIELDS, "max_tokens")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


class PromptTemplate(models.Model):
    """A prompt with `{{variable}}` placeholders (presets.templating). Its version goes up each
    time its text changes, and each message sent from it stores the name and version used."""

    name = models.SlugField(max_length=60, unique=True, help_text="Stored with each message sent from it.")
    title = models.CharField(max_length=100)
    description = models.CharField(max_length=200, blank=True)
    text = models.TextField(help_text="The prompt; {{name}} marks a variable (lowercase letters, digits, _).")
    version = models.PositiveIntegerField(default=1, editable=False)
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["title"]

    def __str__(self) -> str:
        return self.title

    def save(self, *args, **kwargs) -> None:
        with transaction.atomic():
            if self.pk is not None:
                # Race: two admins saving at once; the row lock makes each change count a version.
                stored = PromptTemplate.objects.select_for_update().filter(pk=self.pk).first()
                if stored is not None and stored.text != self.text:
                    self.version = stored.version + 1
                    if kwargs.get("update_fields") is not None:
                        kwargs["update_fields"] = {*kwargs["update_fields"], "version"}
            super().save(*args, **kwargs)

    def clean(self) -> None:
        try:
            templating.check_text(self.text)
        except templating.TemplateError as exc:
            raise ValidationError({"text": exc.message}) from exc

    @property
    def variables(self) -> list[str]:
        return templating.variables(self.text)


class Quota(models.Model):
    """Limits for one user or one group; an empty field falls back (user → groups → settings).
    0 means unlimited."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="quota"
    )
    group = models.OneToOneField(Group, null=True, blank=True, on_delete=models.CASCADE, related_name="quota")
    messages_per_window = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Messages per rate window (a minute unless the site sets another); empty: inherit; 0: unlimited.",
    )
    daily_tokens = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Prompt + completion tokens per UTC day; empty: inherit; 0: unlimited."
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(user__isnull=False, group__isnull=True) | models.Q(user__isnull=True, group__isnull=False)
                ),
                name="quota_for_user_or_group",
            )
        ]

    def __str__(self) -> str:
        return f"Quota for {self.user or self.group}"

    def clean(self) -> None:
        if (self.user_id is None) == (self.group_id is None):
            raise ValidationError("Choose either a user or a group (not both).")
