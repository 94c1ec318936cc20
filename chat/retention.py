"""Purging the conversation logs: conversations users deleted are kept hidden for
LOGS_RETENTION_DAYS (for the admins), then deleted for real here, with their messages. Versions a
person edited or regenerated (chat.branches) stay as long as their conversation: the person can
still page back to them.

Run by the Celery beat schedule (`chat.purge_logs`, every LOGS_PURGE_INTERVAL_S) and by
`manage.py purgelogs`. Rows go in batches, so a large purge never holds one huge transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .models import Conversation

BATCH = 500


@dataclass
class Purged:
    conversations: int = 0

    def __str__(self) -> str:
        return f"{self.conversations} deleted conversation(s)"


def cutoff(days: int | None = None, now: datetime | None = None) -> datetime:
    """Rows hidden before this moment are purged."""
    days = settings.LOGS_RETENTION_DAYS if days is None else days
    if isinstance(days, bool) or not isinstance(days, int) or days < 0:
        raise ValueError(f"The retention must be a whole number of days, 0 or more (got {days!r}).")
    return (now or timezone.now()) - timedelta(days=days)


def expired(days: int | None = None, now: datetime | None = None):
    """The deleted conversations past the retention (a queryset; nothing deleted)."""
    return Conversation.objects.filter(deleted_at__lt=cutoff(days, now))


def _delete_in_batches(queryset) -> int:
    total = 0
    while True:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:BATCH])
        if not ids:
            return total
        with transaction.atomic():
            queryset.model.objects.filter(pk__in=ids).delete()
        total += len(ids)


def purge(days: int | None = None, now: datetime | None = None) -> Purged:
    """Delete the deleted conversations past the retention, with what hangs on them (feedback; moderation events keep their row with the link emptied)."""
    return Purged(conversations=_delete_in_batches(expired(days, now)))
