"""Creating, checking and revoking API keys."""

from __future__ import annotations

import hashlib
import secrets

from django.db.models import F
from django.utils import timezone

from .models import ApiKey

PREFIX = "sk-"
MAX_KEYS_PER_USER = 20


class KeyLimitError(Exception):
    """A key that cannot be made; the message is for the person asking."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(user, name: str = "", *, enforce_limit: bool = True) -> tuple[ApiKey, str]:
    """A new key for `user`: the row, and the key itself (shown once, never stored)."""
    name = (name or "").strip()[:100]
    active = ApiKey.objects.filter(user=user, revoked_at__isnull=True).count()
    if enforce_limit and active >= MAX_KEYS_PER_USER:
        raise KeyLimitError(f"You have {MAX_KEYS_PER_USER} active keys already; revoke one first.")
    key = PREFIX + secrets.token_urlsafe(32)
    row = ApiKey.objects.create(user=user, name=name, prefix=key[:10], digest=digest(key))
    return row, key


def find(key: str) -> ApiKey | None:
    """The active key with this value (its user active too), or None."""
    if not key.startswith(PREFIX) or len(key) > 200:
        return None
    row = ApiKey.objects.select_related("user").filter(digest=digest(key), revoked_at__isnull=True).first()
    if row is None or not row.user.is_active:
        return None
    return row


def revoke(row: ApiKey) -> None:
    if row.revoked_at is None:
        row.revoked_at = timezone.now()
        row.save(update_fields=["revoked_at"])


def count_use(row: ApiKey, prompt_tokens: int = 0, completion_tokens: int = 0, request: bool = True) -> None:
    ApiKey.objects.filter(pk=row.pk).update(
        requests=F("requests") + (1 if request else 0),
        prompt_tokens=F("prompt_tokens") + prompt_tokens,
        completion_tokens=F("completion_tokens") + completion_tokens,
        last_used_at=timezone.now(),
    )
