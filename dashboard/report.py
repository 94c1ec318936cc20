"""What the dashboard shows for a period: read from the rollup (`DailyUsage`) for messages, and
straight from the small, indexed tables for moderation events, feedback and fine-tuning jobs.
See docs/dashboard.md for how each number is defined."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, time, timedelta

from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.functions import TruncDate
from django.utils import timezone

from chat.models import Feedback
from finetuning.models import Job
from inference.models import LanguageModel
from moderation.models import Event, Rule

from . import histograms
from .models import DailyUsage, RatedReply, RollupState

PERIODS = (7, 30, 90)
QUANTILES = (50, 90, 99)
NO_MODEL = "no model"  # people's own messages, and replies of a deleted model


def build(days: int, today: date | None = None) -> dict:
    """The dashboard's numbers for the `days` days up to and including `today` (UTC), as JSON."""
    if days not in PERIODS:
        raise ValueError(f"the period is one of {PERIODS} days, not {days}")
    today = today or timezone.localdate()
    first = today - timedelta(days=days - 1)
    day_list = [first + timedelta(days=i) for i in range(days)]
    index = {day: i for i, day in enumerate(day_list)}
    since = timezone.make_aware(datetime.combine(first, time.min))
    until = timezone.make_aware(datetime.combine(today + timedelta(days=1), time.min))

    usage = list(DailyUsage.objects.filter(day__gte=first, day__lte=today).order_by())
    names = dict(LanguageModel.objects.filter(id__in={u.model_id for u in usage}).values_list("id", "name"))
    feedback = _feedback_by_model(since, until)

    user_messages = [0] * days
    all_ttft: list[histograms.Histogram] = [{} for _ in day_list]
    all_tps: list[histograms.Histogram] = [{} for _ in day_list]
    per_model: dict[int | None, dict] = {}
    for row in usage:
        i = index[row.day]
        user_messages[i] += row.user_messages
        histograms.merge(all_ttft[i], row.ttft_histogram)
        histograms.merge(all_tps[i], row.tps_histogram)
        if not row.replies:
            continue
        model = per_model.setdefault(row.model_id, _model_entry(row.model_id, names, days))
        model["replies"][i] += row.replies
        model["tokens"][i] += row.prompt_tokens + row.completion_tokens
        model["totals"]["replies"] += row.replies
        model["totals"]["failed_replies"] += row.failed_replies
        model["totals"]["prompt_tokens"] += row.prompt_tokens
        model["totals"]["completion_tokens"] += row.completion_tokens
        histograms.merge(model["_ttft"], row.ttft_histogram)
        histograms.merge(model["_tps"], row.tps_histogram)
    for model_id in feedback:
        per_model.setdefault(model_id, _model_entry(model_id, names, days))
    for model_id, model in per_model.items():
        model["ttft_ms"] = _quantiles(model.pop("_ttft"))
        model["tokens_per_s"] = _quantiles(model.pop("_tps"))
        model["feedback"] = _score(feedback.get(model_id, {}))

    messages = [user_messages[i] + sum(m["replies"][i] for m in per_model.values()) for i in range(days)]
    flagged, blocked = _moderation_by_day(since, until, index, days)
    return {
        "period_days": days,
        "days": [day.isoformat() for day in day_list],
        "refreshed_at": _refreshed_at(),
        "empty": not any(messages),
        "user_messages": user_messages,
        "messages": messages,
        "models": sorted(per_model.values(), key=lambda m: (-m["totals"]["replies"], m["name"])),
        "latency": {
            "ttft_ms": {f"p{q}": [histograms.percentile(h, q) for h in all_ttft] for q in QUANTILES},
            "tokens_per_s": {f"p{q}": [histograms.percentile(h, q) for h in all_tps] for q in QUANTILES},
            "ttft_ms_period": _quantiles(histograms.total(all_ttft)),
            "tokens_per_s_period": _quantiles(histograms.total(all_tps)),
        },
        "moderation": {
            "flagged": flagged,
            "blocked": blocked,
            "flagged_rate": [_rate(f, m) for f, m in zip(flagged, messages, strict=True)],
            "blocked_rate": [_rate(b, m) for b, m in zip(blocked, messages, strict=True)],
            "flagged_rate_period": _rate(sum(flagged), sum(messages)),
            "blocked_rate_period": _rate(sum(blocked), sum(messages)),
        },
        "jobs": _jobs_by_state(since, until),
    }


def _model_entry(model_id: int | None, names: dict[int, str], days: int) -> dict:
    if model_id is None:
        name = NO_MODEL
    else:
        name = names.get(model_id, f"model #{model_id}")
    return {
        "id": model_id,
        "name": name,
        "replies": [0] * days,
        "tokens": [0] * days,
        "totals": {"replies": 0, "failed_replies": 0, "prompt_tokens": 0, "completion_tokens": 0},
        "_ttft": {},
        "_tps": {},
    }


def _quantiles(histogram: histograms.Histogram) -> dict[str, float | None]:
    return {f"p{q}": histograms.percentile(histogram, q) for q in QUANTILES}


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _feedback_by_model(since: datetime, until: datetime) -> dict[int | None, dict[str, int]]:
    """Thumbs up and down given in the period (by when they were given), per the reply's model
    (from `RatedReply`: ratings given since the last refresh are not in it yet)."""
    models = RatedReply.objects.filter(message_id=OuterRef("message_id")).values("model_id")
    rows = (
        Feedback.objects.filter(created_at__gte=since, created_at__lt=until)
        .exclude(rating=Feedback.Rating.NONE)
        .filter(message_id__in=RatedReply.objects.values("message_id"))
        .annotate(reply_model=Subquery(models))
        .values("reply_model")
        .annotate(
            up=Count("id", filter=Q(rating=Feedback.Rating.UP)), down=Count("id", filter=Q(rating=Feedback.Rating.DOWN))
        )
        .order_by()
    )
    return {row["reply_model"]: {"up": row["up"], "down": row["down"]} for row in rows}


def _score(votes: dict[str, int]) -> dict:
    up, down = votes.get("up", 0), votes.get("down", 0)
    return {"up": up, "down": down, "score": (up - down) / (up + down) if up + down else None}


def _moderation_by_day(since: datetime, until: datetime, index: dict[date, int], days: int) -> tuple[list, list]:
    flagged, blocked = [0] * days, [0] * days
    rows = (
        Event.objects.filter(
            created_at__gte=since, created_at__lt=until, action__in=[Rule.Action.FLAG, Rule.Action.BLOCK]
        )
        .annotate(day=TruncDate("created_at"))
        .values("day", "action")
        .annotate(n=Count("id"))
        .order_by()
    )
    for row in rows:
        target = flagged if row["action"] == Rule.Action.FLAG else blocked
        target[index[row["day"]]] += row["n"]
    return flagged, blocked


def _jobs_by_state(since: datetime, until: datetime) -> list[dict]:
    """Fine-tuning jobs created in the period, by the state they are in now."""
    counts = defaultdict(int)
    rows = Job.objects.filter(created_at__gte=since, created_at__lt=until).values("state").annotate(n=Count("id"))
    for row in rows.order_by():
        counts[row["state"]] = row["n"]
    return [{"state": state, "label": label, "count": counts[state]} for state, label in Job.State.choices]


def _refreshed_at() -> str | None:
    state = RollupState.objects.filter(pk=1).only("refreshed_at").first()
    return state.refreshed_at.isoformat() if state and state.refreshed_at else None
