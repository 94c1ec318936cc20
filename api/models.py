"""API keys: shown once when created, stored as a SHA-256 digest (a key is 256 random bits, so a
fast digest is enough; nothing to brute-force), revoked rather than deleted so usage stays."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models

# What a key may reach (empty: everything): `@api_view(..., scope=...)` on each view.
SCOPES = {
    "chat": "Chat (chat completions, completions, models)",
    "files": "Files",
    "fine_tuning": "Fine-tuning jobs",
    "evals": "Evaluations",
}


class ApiKey(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True, help_text="What it is for (a script, a notebook).")
    prefix = models.CharField(max_length=16, help_text="The key's first characters, to recognise it.")
    digest = models.CharField(max_length=64, unique=True)
    rate_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Requests per minute for this key (1 or more); empty: the site's API_RATE_LIMIT.",
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="After this the key answers 401; empty: never.")
    scopes = models.JSONField(
        default=list, blank=True, help_text=f"What it may reach, of {', '.join(SCOPES)}; empty: everything."
    )
    read_only = models.BooleanField(default=False, help_text="Only GET requests (list and read, never change).")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    requests = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or 'unnamed'}, {self.user})"

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def expired(self) -> bool:
        from django.utils import timezone

        return self.expires_at is not None and self.expires_at <= timezone.now()

    def scope_labels(self) -> str:
        return ", ".join(self.scopes) if self.scopes else "everything"
