"""Replay of logged conversations: the last N replies people were given, as eval items, so that a
candidate model answers the same turns again and the run shows its answer beside the one the
person saw, and that answer's rating ("would the new model have done better on our real traffic?").

A run's source `{"type": "logs", "limit": 50, "model": "<slug>", "since": "2026-12-01",
"until": "2026-12-07", "rating": "down"}` (an extension, docs/evals.md). Whose conversations:
an admin who may read the conversation logs (`chat.view_conversation`) replays everyone's,
anyone else only their own. Deleted conversations, failed replies and replies with no text are
left out. Each item is `{"messages": [the prompt the reply was given: its system prompt and its
branch up to the person's turn], "answer": the reply they saw, "rating": "up" | "down" | "",
"model": the model that gave it, "conversation": id, "message": id}`; newest first."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from chat.branches import history_before
from chat.models import Feedback, Message

from .errors import EvalError

PARAM = "data_source.source"
RATINGS = ("any", "up", "down", "rated", "unrated")
FIELDS = {"type", "limit", "model", "since", "until", "rating"}
DEFAULT_LIMIT = 50
SCHEMA = {
    "type": "object",
    "properties": {
        "messages": {"type": "array"},
        "answer": {"type": "string"},
        "rating": {"type": "string"},
        "model": {"type": "string"},
        "conversation": {"type": "number"},
        "message": {"type": "number"},
    },
    "required": ["messages", "answer", "rating", "model", "conversation", "message"],
}
RATING_TEXT = {Feedback.Rating.UP: "up", Feedback.Rating.DOWN: "down"}


def may_replay_everyone(user) -> bool:
    return user.has_perm("chat.view_conversation")


def _date(source: dict, name: str) -> dt.date | None:
    value = source.get(name)
    if value in (None, ""):
        return None
    try:
        return dt.date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        pass
    raise EvalError(f"source.{name} must be a date written YYYY-MM-DD (got {value!r}).", PARAM)


def check(source: dict) -> dict:
    """The filters of a logs source, checked; raise EvalError naming what to change."""
    unknown = sorted(set(source) - FIELDS)
    if unknown:
        raise EvalError(f"source.{unknown[0]} is not a filter of a logs source; use {', '.join(sorted(FIELDS - {'type'}))}.",
                        PARAM)  # fmt: skip
    limit = source.get("limit", DEFAULT_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= settings.EVALS_MAX_ITEMS:
        raise EvalError(f"source.limit must be a whole number from 1 to {settings.EVALS_MAX_ITEMS}.", PARAM)
    rating = source.get("rating") or "any"
    if rating not in RATINGS:
        raise EvalError(f"source.rating must be one of {', '.join(RATINGS)} (got {rating!r}).", PARAM)
    model = source.get("model") or ""
    if not isinstance(model, str):
        raise EvalError("source.model must be a model's id.", PARAM)
    since, until = _date(source, "since"), _date(source, "until")
    if since and until and since > until:
        raise EvalError("source.since must not come after source.until.", PARAM)
    return {"limit": limit, "rating": rating, "model": model, "since": since, "until": until}


def _day_start(day: dt.date) -> dt.datetime:
    return timezone.make_aware(dt.datetime.combine(day, dt.time.min))


def replies(user, filters: dict) -> QuerySet[Message]:
    """The logged replies a logs source picks, newest first (not yet cut to its limit)."""
    rows = (
        Message.objects.filter(
            role=Message.Role.ASSISTANT,
            status__in=(Message.Status.COMPLETE, Message.Status.STOPPED),
            conversation__deleted_at__isnull=True,
            parent__isnull=False,
        )
        .exclude(content="")
        .exclude(worker="")
    )  # worker: generated, not an assistant turn an API client typed
    if not may_replay_everyone(user):
        rows = rows.filter(conversation__user=user)
    if filters["model"]:
        rows = rows.filter(model__slug=filters["model"])
    if filters["since"]:
        rows = rows.filter(created_at__gte=_day_start(filters["since"]))
    if filters["until"]:
        rows = rows.filter(created_at__lt=_day_start(filters["until"] + dt.timedelta(days=1)))
    rating = filters["rating"]
    if rating in ("up", "down"):
        rows = rows.filter(feedback__rating=Feedback.Rating.UP if rating == "up" else Feedback.Rating.DOWN)
    elif rating == "rated":
        rows = rows.filter(feedback__rating__in=(Feedback.Rating.UP, Feedback.Rating.DOWN))
    elif rating == "unrated":
        rows = rows.exclude(feedback__rating__in=(Feedback.Rating.UP, Feedback.Rating.DOWN))
    return rows.select_related("conversation", "model", "feedback").order_by("-created_at", "-pk")


def item(reply: Message) -> dict:
    feedback = getattr(reply, "feedback", None)
    return {
        "messages": history_before(reply),
        "answer": reply.content,
        "rating": RATING_TEXT.get(feedback.rating, "") if feedback else "",
        "model": reply.model.slug if reply.model else "",
        "conversation": reply.conversation_id,
        "message": reply.pk,
    }


def rows(user, source: dict) -> list[dict]:
    """The items of a logs source (see the module's docstring), as a run's source rows."""
    filters = check(source)
    picked = [{"item": item(reply)} for reply in replies(user, filters)[: filters["limit"]]]
    if not picked:
        whose = "the logs" if may_replay_everyone(user) else "your conversations"
        raise EvalError(f"No logged replies in {whose} match these filters: widen the dates, the model or the rating.",
                        PARAM)  # fmt: skip
    return picked
