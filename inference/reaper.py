"""Requests whose worker died are ended as interrupted (keeping their partial text), and queued
requests that no worker can serve are failed: never left "generating" forever.

Run by every inference worker every few seconds (any live worker reaps the orphans of a dead
one) and by callers when a stream goes quiet or a page loads.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.utils import timezone

from . import results, sinks, streams
from .protocol import Done
from .sinks import Pending

logger = logging.getLogger(__name__)

INTERRUPTED_TEXT = (
    "The inference worker running this reply stopped. The partial reply is kept; regenerate to try again."
)
NO_WORKER_TEXT = "No inference worker is running, so this reply could not start. Start one (make run does) and retry."
LOST_TEXT = "This request was lost before a worker took it (Redis restarted). Send it again."


def partial(request_id: str) -> tuple[str, int]:
    """The text streamed so far and the next free seq, from the request's Redis stream."""
    text, last = [], 0
    for seq, kind, data in streams.read_all(request_id):
        last = seq
        if kind == "delta":
            text.append(data["text"])
    return "".join(text), last + 1


def reap_one(sink_name: str, item: Pending) -> bool:
    """End `item` if nothing can ever end it. True if it was reaped."""
    if item.running:
        if streams.worker_alive(item.worker):
            return False
        if streams.redis_uptime_s() <= settings.INFERENCE_HEARTBEAT_TTL_S:
            return False  # Redis just restarted: live workers have not re-sent their heartbeat yet
        content, next_seq = partial(item.request_id)
        logger.warning("Reaping %s: worker %s is gone", item.request_id, item.worker)
        done = Done("interrupted", error=INTERRUPTED_TEXT, worker=item.worker)
        return results.finish(sink_name, item.request_id, content, done, next_seq)
    waited = (timezone.now() - item.created_at).total_seconds()
    if waited < settings.INFERENCE_QUEUE_TIMEOUT_S:
        return False
    if not streams.live_workers():
        error = NO_WORKER_TEXT
    elif item.request_id not in streams.queued_request_ids():
        # Workers are alive but the request is in no queue: lost with a Redis restart (or popped
        # by a worker that died before claiming it). Only a still-queued request is failed.
        error = LOST_TEXT
    else:
        return False  # still waiting its turn
    return results.finish(sink_name, item.request_id, "", Done("error", error=error), 1, queued_only=True)


def reap(sink_name: str, request_ids: list[str] | None = None) -> int:
    """Reap what one sink waits for (all, or only `request_ids`)."""
    sink = sinks.get(sink_name)
    if sink is None:
        return 0
    return sum(reap_one(sink_name, item) for item in sink.pending(request_ids))


def reap_all() -> int:
    return sum(reap(name) for name in sinks.all_sinks())
