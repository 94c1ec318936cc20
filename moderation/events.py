"""Storing what the rules did (the review queue), and reviewing it."""

from __future__ import annotations

from django.utils import timezone

from .models import Event, Rule

REVIEWED_ACTIONS = (Rule.Action.BLOCK, Rule.Action.FLAG)


def record(records: list[dict], *, source: str, user=None, conversation=None, message=None) -> list[Event]:
    """One Event per rule and stage of the text (matching.Match.record), with how many times it
    matched (a reply with the word 8 times is one row to review, not 8); blocks and flags wait for
    review, masks are only logged. Rules deleted meanwhile keep their name on the event."""
    if not records:
        return []
    grouped: dict[tuple, dict] = {}
    for r in records:
        key = (r.get("rule"), r["rule_name"], r["stage"], r["action"])
        if key in grouped:
            grouped[key]["count"] += 1
        else:
            grouped[key] = {**r, "count": 1}
    records = list(grouped.values())
    existing = set(
        Rule.objects.filter(pk__in=[r["rule"] for r in records if r.get("rule")]).values_list("pk", flat=True)
    )
    events = [
        Event(
            source=source,
            stage=r["stage"],
            action=r["action"],
            rule_id=r["rule"] if r.get("rule") in existing else None,
            rule_name=r["rule_name"][:100],
            category=r.get("category", "")[:60],
            excerpt=r.get("excerpt", "")[:300],
            user=user,
            conversation=conversation,
            message=message,
            status=Event.Status.PENDING if r["action"] in REVIEWED_ACTIONS else Event.Status.LOGGED,
            count=r["count"],
        )
        for r in records
    ]
    return Event.objects.bulk_create(events)


def review(events, status: str, reviewer) -> int:
    """Approve or dismiss pending events; returns how many changed."""
    if status not in (Event.Status.APPROVED, Event.Status.DISMISSED):
        raise ValueError(f"Not a review decision: {status!r}")
    return events.filter(status=Event.Status.PENDING).update(
        status=status, reviewed_by=reviewer, reviewed_at=timezone.now()
    )
