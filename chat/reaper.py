"""Replies whose worker died are marked interrupted (keeping their partial text), and queued
replies that no worker can serve are failed — never left "generating" forever.

Called by the consumer when a stream goes quiet, by the chat page on load, and periodically by
every inference worker (any live worker reaps the orphans of a dead one).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from . import replies, streams
from .models import Conversation, Message

logger = logging.getLogger(__name__)

INTERRUPTED_TEXT = (
    "The inference worker running this reply stopped. The partial reply is kept; regenerate to try again."
)
NO_WORKER_TEXT = "No inference worker is running, so this reply could not start. Start one (make run does) and retry."
LOST_TEXT = "This request was lost before a worker took it (Redis restarted). Send it again."


def _partial(message_id: int) -> tuple[str, int]:
    """The text streamed so far and the next free seq, from the reply's Redis stream."""
    text, last = [], 0
    for seq, kind, data in streams.read_all(message_id):
        last = seq
        if kind == "delta":
            text.append(data["text"])
    return "".join(text), last + 1


def reap_message(message: Message) -> bool:
    """Finish `message` if nothing can ever finish it. True if it was reaped."""
    if message.status == Message.Status.GENERATING:
        if streams.worker_alive(message.worker):
            return False
        if streams.redis_uptime_s() <= settings.INFERENCE_HEARTBEAT_TTL_S:
            return False  # Redis just restarted: live workers have not re-sent their heartbeat yet
        content, next_seq = _partial(message.pk)
        logger.warning("Reaping reply %s: worker %s is gone", message.pk, message.worker)
        return (
            replies.finish(
                message.pk, content=content, finish_reason="interrupted", next_seq=next_seq, error=INTERRUPTED_TEXT
            )
            is not None
        )
    if message.status == Message.Status.QUEUED:
        waited = timezone.now() - message.created_at
        if waited < timedelta(seconds=settings.INFERENCE_QUEUE_TIMEOUT_S):
            return False
        if not streams.live_workers():
            error = NO_WORKER_TEXT
        elif message.pk not in streams.queued_message_ids():
            # Workers are alive but the request is in no queue: it was lost with a Redis restart
            # (or popped by a worker that died before claiming it).
            message.refresh_from_db(fields=["status"])
            if message.status != Message.Status.QUEUED:
                return False
            error = LOST_TEXT
        else:
            return False  # still waiting its turn
        return replies.finish(message.pk, content="", finish_reason="error", next_seq=1, error=error) is not None
    return False


def reap_conversation(conversation: Conversation) -> None:
    for message in conversation.messages.filter(status__in=Message.ACTIVE_STATUSES):
        reap_message(message)


def reap_all() -> int:
    count = 0
    for message in Message.objects.filter(status__in=Message.ACTIVE_STATUSES):
        count += reap_message(message)
    return count
