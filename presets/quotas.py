"""Per-user limits: a message rate and a daily token quota. Each comes from the user's own Quota
row, else the most generous of their groups' rows, else the settings (CHAT_RATE_LIMIT,
CHAT_DAILY_TOKEN_QUOTA). 0 means unlimited. Used by the chat socket; the API can call `check`.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from asgiref.sync import sync_to_async
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
    user index, then its messages' conversation index); a reply still queued or generating counts
    as its new-token cap, reserved until it ends and settles at what it used."""
    replies = Message.objects.filter(
        conversation__user=user, role=Message.Role.ASSISTANT, created_at__gte=day_start(now)
    )
    total = replies.exclude(status__in=Message.ACTIVE_STATUSES).aggregate(
        total=Sum(Coalesce(F("prompt_tokens"), 0) + Coalesce(F("completion_tokens"), 0))
    )["total"]
    in_flight = replies.filter(status__in=Message.ACTIVE_STATUSES).values_list("params", flat=True)
    reserved = sum(int((params or {}).get("max_tokens") or 0) for params in in_flight)
    return int(total or 0) + reserved


def _when(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes = math.ceil(rest / 60)
    if minutes == 60:
        hours, minutes = hours + 1, 0
    return f"{hours} h {minutes} min" if hours else f"{max(minutes, 1)} min"


def check_daily_tokens(user, limits: Limits, now: dt.datetime | None = None, asked: int = 0) -> None:
    """Raise QuotaExceeded when the user has used their daily tokens, or when `asked` more
    (replies about to be queued, at their new-token caps) would pass them."""
    if limits.daily_tokens <= 0:
        return
    now = now or timezone.now()
    used = tokens_today(user, now)
    if used < limits.daily_tokens and (not asked or used + asked <= limits.daily_tokens):
        return
    reset = day_start(now) + dt.timedelta(days=1)
    wait = max(1, math.ceil((reset - now).total_seconds()))
    if used < limits.daily_tokens:
        said = (f"This request may use up to {asked} tokens and {limits.daily_tokens - used} of your daily "
                f"{limits.daily_tokens} are left (replies in progress count at their caps): ask for fewer max_tokens "
                f"or choices, or wait for the quota to reset at {reset:%H:%M} UTC.")  # fmt: skip
    else:
        said = (f"You have used your daily token quota ({used} of {limits.daily_tokens} tokens today). "
                f"It resets at {reset:%H:%M} UTC; retry in {_when(wait)}.")  # fmt: skip
    raise QuotaExceeded("quota_exceeded", said, wait)


async def check_rate(user, count: int = 1) -> Limits:
    """Count `count` messages against the account's message rate (the chat page and every API key
    of the account alike); raise QuotaExceeded when over it. Returns the user's limits."""
    limits = await sync_to_async(limits_for)(user)  # from an API view too: not channels' connection closing
    wait = await ratelimit.retry_after(user.pk, limits.messages_per_window, limits.window_s, amount=count)
    if wait is not None:
        raise QuotaExceeded(
            "rate_limited",
            f"You are sending messages too fast (limit {limits.messages_per_window} per {limits.window_s} s, "
            f"the chat page and API keys together). Retry in {wait} s.",
            wait,
        )
    return limits


async def check(user) -> None:
    """Count one message against the user's limits; raise QuotaExceeded if over either."""
    limits = await check_rate(user)
    await database_sync_to_async(check_daily_tokens)(user, limits)
