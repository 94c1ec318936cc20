"""Per-user limits: a message rate and a daily token quota. Each comes from the user's own Quota
row, else the most generous of their groups' rows, else the settings (CHAT_RATE_LIMIT,
CHAT_DAILY_TOKEN_QUOTA). 0 means unlimited. Used by the chat socket; the API can call `check`.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.conf import settings
from django.db.models import F, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from chat import ratelimit
from chat.models import Message

from .models import Quota


class QuotaExceeded(Exception):
    """Over a limit; `message` says which and when to retry, `retry_after` in seconds."""

    def __init__(self, code: str, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class Limits:
    messages_per_window: int  # 0: unlimited
    window_s: int
    daily_tokens: int  # 0: unlimited


def _pick(user_value, group_values: list, default: int) -> int:
    if user_value is not None:
        return user_value
    values = [v for v in group_values if v is not None]
    if not values:
        return default
    return 0 if 0 in values else max(values)  # the most generous group wins; 0 is unlimited


def limits_for(user) -> Limits:
    """The user's limits: their own row beats their groups', which beat the settings."""
    own = Quota.objects.filter(user=user).first()
    groups = list(Quota.objects.filter(group__user=user))
    return Limits(
        messages_per_window=_pick(
            None if own is None else own.messages_per_window,
            [g.messages_per_window for g in groups],
            settings.CHAT_RATE_LIMIT,
        ),
        window_s=settings.CHAT_RATE_WINDOW_S,
        daily_tokens=_pick(
            None if own is None else own.daily_tokens, [g.daily_tokens for g in groups], settings.CHAT_DAILY_TOKEN_QUOTA
        ),
    )


def day_start(now: dt.datetime | None = None) -> dt.datetime:
    """Midnight UTC of today: when the daily quota's day began."""
    now = now or timezone.now()
    return now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def tokens_today(user, now: dt.datetime | None = None) -> int:
    """Prompt + completion tokens of the user's replies since midnight UTC (the conversation's
    user index, then its messages' conversation index)."""
    total = Message.objects.filter(
        conversation__user=user, role=Message.Role.ASSISTANT, created_at__gte=day_start(now)
    ).aggregate(total=Sum(Coalesce(F("prompt_tokens"), 0) + Coalesce(F("completion_tokens"), 0)))["total"]
    return int(total or 0)


def _when(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes = math.ceil(rest / 60)
    if minutes == 60:
        hours, minutes = hours + 1, 0
    return f"{hours} h {minutes} min" if hours else f"{max(minutes, 1)} min"


def check_daily_tokens(user, limits: Limits, now: dt.datetime | None = None) -> None:
    """Raise QuotaExceeded when the user has used their daily tokens."""
    if limits.daily_tokens <= 0:
        return
    now = now or timezone.now()
    used = tokens_today(user, now)
    if used < limits.daily_tokens:
        return
    reset = day_start(now) + dt.timedelta(days=1)
    wait = max(1, math.ceil((reset - now).total_seconds()))
    raise QuotaExceeded(
        "quota_exceeded",
        f"You have used your daily token quota ({used} of {limits.daily_tokens} tokens today). "
        f"It resets at {reset:%H:%M} UTC; retry in {_when(wait)}.",
        wait,
    )


async def check(user) -> None:
    """Count one message against the user's limits; raise QuotaExceeded if over either."""
    limits = await database_sync_to_async(limits_for)(user)
    wait = await ratelimit.retry_after(user.pk, limits.messages_per_window, limits.window_s)
    if wait is not None:
        raise QuotaExceeded(
            "rate_limited",
            f"You are sending messages too fast (limit {limits.messages_per_window} per {limits.window_s} s). "
            f"Retry in {wait} s.",
            wait,
        )
    await database_sync_to_async(check_daily_tokens)(user, limits)
