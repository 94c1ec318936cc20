"""Creating, checking and revoking API keys."""

from __future__ import annotations

import hashlib
import secrets

from django.db.models import F
from django.utils import timezone

from .models import SCOPES, ApiKey

PREFIX = "sk-"
MAX_KEYS_PER_USER = 20


class KeyLimitError(Exception):
    """A key that cannot be made; the message is for the person asking."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(user, name: str = "", *, enforce_limit: bool = True, expires_at=None, scopes=(), read_only: bool = False,
           rate_limit: int | None = None) -> tuple[ApiKey, str]:  # fmt: skip
    """A new key for `user`: the row, and the key itself (shown once, never stored). `scopes`:
    what it may reach (models.SCOPES; none: everything); `read_only`: GET requests only."""
    name = (name or "").strip()[:100]
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise KeyLimitError(f"Unknown scope {unknown[0]!r}: use {', '.join(SCOPES)}.")
    if rate_limit is not None and rate_limit < 1:
        raise KeyLimitError("A key's rate limit is 1 request a minute or more (leave it empty for the site's).")
    if expires_at is not None and expires_at <= timezone.now():
        raise KeyLimitError("The expiry must be in the future.")
    active = ApiKey.objects.filter(user=user, revoked_at__isnull=True).count()
    if enforce_limit and active >= MAX_KEYS_PER_USER:
        raise KeyLimitError(f"You have {MAX_KEYS_PER_USER} active keys already; revoke one first.")
    key = PREFIX + secrets.token_urlsafe(32)
    row = ApiKey.objects.create(
        user=user, name=name, prefix=key[:10], digest=digest(key), expires_at=expires_at,
        scopes=[s for s in SCOPES if s in set(scopes)], read_only=read_only, rate_limit=rate_limit,
    )  # fmt: skip
    return row, key


def check_reach(row: ApiKey, scope: str, method: str) -> str | None:
    """Why this key may not make this request (its scopes, read-only), or None."""
    if row.scopes and scope not in row.scopes:
        return (f"This API key may not use {SCOPES[scope].lower()}: its scopes are {', '.join(row.scopes)}. "
                "Create a key with this scope on your API keys page.")  # fmt: skip
    if row.read_only and method not in ("GET", "HEAD", "OPTIONS"):
        return "This API key is read-only: it may list and read, not create, change or delete."
    return None


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
