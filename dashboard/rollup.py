"""Fills `DailyUsage` from `chat.Message`, incrementally.

Messages are counted once, when they are finished, in primary-key order: `RollupState` keeps the
highest id counted so far, and a refresh counts the messages above it up to (not including) the
first one still queued or generating, whose numbers are not known yet. Reading "id above N" walks
the primary-key index, so a refresh costs what was added since the last one, not the whole table,
and `chat.Message` needs no new index. Each message is added to the day of its own `created_at`,
so ids and timestamps need not be in the same order.

The rollup is a ledger of usage: a message deleted later (a conversation deleted, a reply
regenerated) stays counted, as the tokens it used were spent. `rebuild()` starts over from the
messages that exist now.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max, Min, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from chat.models import Feedback, Message

from . import histograms
from .models import DailyUsage, RatedReply, RollupState

BATCH_IDS = 200_000  # ids counted per transaction: bounds one transaction's time and memory
FAILED = (Message.Status.ERROR, Message.Status.INTERRUPTED)

Key = tuple[date, int | None]  # (day, model id)


def refresh(batch_ids: int = BATCH_IDS) -> RollupState:
    """Counts every finished message not counted yet; returns the state it reached."""
    while True:
        with transaction.atomic():
            state = _locked_state()
            upper = _countable_through(state.counted_through_id, batch_ids)
            counted = upper > state.counted_through_id
            if counted:
                _add(_aggregate(state.counted_through_id, upper))
                state.counted_through_id = upper
            state.feedback_through_id = _note_rated_replies(state.feedback_through_id)
            state.refreshed_at = timezone.now()
            state.save(update_fields=["counted_through_id", "feedback_through_id", "refreshed_at"])
        if not counted:
            return state


def rebuild(batch_ids: int = BATCH_IDS) -> RollupState:
    """Forgets the rollup and counts every message that exists now."""
    with transaction.atomic():
        state = _locked_state()
        DailyUsage.objects.all().delete()
        RatedReply.objects.all().delete()
        state.counted_through_id = state.feedback_through_id = 0
        state.save(update_fields=["counted_through_id", "feedback_through_id"])
    return refresh(batch_ids)


def _locked_state() -> RollupState:
    # Two refreshes at once (two admins loading the page) would count the same messages twice:
    # the row lock makes the second wait, then it starts from the first one's watermark.
    # (SQLite: transactions here start IMMEDIATE, which serializes writers the same way.)
    state, _ = RollupState.objects.select_for_update().get_or_create(pk=1)
    return state


def _settling() -> Q:
    """Rows too young to count: an insert that took a lower id may not have committed yet."""
    if not settings.DASHBOARD_SETTLE_S:
        return Q(id__lt=0)  # none
    return Q(created_at__gt=timezone.now() - timedelta(seconds=settings.DASHBOARD_SETTLE_S))


def _countable_through(after: int, batch_ids: int) -> int:
    """The highest id that can be counted now: below the first unfinished (or settling)
    message, at most `batch_ids` ids on."""
    newer = Message.objects.filter(id__gt=after)
    waiting = Q(status__in=Message.ACTIVE_STATUSES) | _settling()
    bounds = newer.aggregate(last=Max("id"), first_unfinished=Min("id", filter=waiting))
    if bounds["last"] is None:
        return after
    upper = min(bounds["last"], after + batch_ids)
    if bounds["first_unfinished"] is not None:
        upper = min(upper, bounds["first_unfinished"] - 1)
    return upper


def _note_rated_replies(after: int) -> int:
    """Notes the model of every reply rated since feedback id `after`; returns the new mark."""
    newer = Feedback.objects.filter(id__gt=after)
    last = newer.aggregate(last=Max("id"), first_settling=Min("id", filter=_settling()))
    if last["last"] is None:
        return after
    upper = last["last"] if last["first_settling"] is None else last["first_settling"] - 1
    rated = newer.filter(id__lte=upper).values_list("message_id", "message__model_id")
    RatedReply.objects.bulk_create(
        [RatedReply(message_id=message_id, model_id=model_id) for message_id, model_id in rated],
        batch_size=1000,
        ignore_conflicts=True,  # a rating deleted and given again: the reply is noted already
    )
    return max(after, upper)


def _aggregate(after: int, upper: int) -> dict[Key, dict]:
    """The sums and histograms of messages after < id <= upper, per (day, model)."""
    messages: QuerySet = Message.objects.filter(id__gt=after, id__lte=upper).annotate(day=TruncDate("created_at"))
    found: dict[Key, dict] = defaultdict(_empty)
    counts = messages.values("day", "model_id", "role").annotate(
        n=Count("id"),
        failed=Count("id", filter=Q(status__in=FAILED)),
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
    )
    for row in counts.order_by():
        item = found[(row["day"], row["model_id"])]
        if row["role"] == Message.Role.USER:
            item["user_messages"] += row["n"]
        else:
            item["replies"] += row["n"]
            item["failed_replies"] += row["failed"]
        item["prompt_tokens"] += row["prompt"] or 0
        item["completion_tokens"] += row["completion"] or 0
    replies = messages.filter(role=Message.Role.ASSISTANT)
    for field, column in (("ttft_histogram", "ttft_ms"), ("tps_histogram", "tokens_per_s")):
        buckets = (
            replies.filter(**{f"{column}__isnull": False})
            .annotate(bucket=histograms.bucket_expression(column))
            .values("day", "model_id", "bucket")
            .annotate(n=Count("id"))
            .order_by()
        )
        for row in buckets:
            histograms.merge(found[(row["day"], row["model_id"])][field], {row["bucket"]: row["n"]})
    return found


def _empty() -> dict:
    return {
        "user_messages": 0,
        "replies": 0,
        "failed_replies": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "ttft_histogram": {},
        "tps_histogram": {},
    }


def _add(found: dict[Key, dict]) -> None:
    """Adds the new sums to the stored rows (one row per key; strays are folded in)."""
    if not found:
        return
    rows: dict[Key, DailyUsage] = {}
    strays: list[int] = []
    for row in DailyUsage.objects.filter(day__in={day for day, _ in found}).order_by("id"):
        key = (row.day, row.model_id)
        if key in rows:
            _fold(rows[key], _as_sums(row))
            strays.append(row.pk)
        else:
            rows[key] = row
    new: list[DailyUsage] = []
    for (day, model_id), sums in found.items():
        if (day, model_id) in rows:
            _fold(rows[(day, model_id)], sums)
        else:
            row = DailyUsage(day=day, model_id=model_id)
            _fold(row, sums)
            new.append(row)
    if strays:
        DailyUsage.objects.filter(pk__in=strays).delete()
    changed = [row for key, row in rows.items() if key in found] if not strays else list(rows.values())
    DailyUsage.objects.bulk_update(changed, list(_empty()), batch_size=500)
    DailyUsage.objects.bulk_create(new, batch_size=500)


def _as_sums(row: DailyUsage) -> dict:
    return {field: getattr(row, field) for field in _empty()}


def _fold(row: DailyUsage, sums: dict) -> None:
    for field, value in sums.items():
        if field.endswith("_histogram"):
            setattr(row, field, histograms.merge(histograms.total([getattr(row, field)]), value))
        else:
            setattr(row, field, getattr(row, field) + value)
