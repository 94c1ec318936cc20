"""The life of an assistant reply after it is queued: claimed by a worker, then finished exactly
once (by its worker, or by the reaper if that worker died). Shared by the worker and the reaper."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError

from . import streams
from .models import Conversation, Message
from .rendering import render_markdown

STATUS_FOR_REASON = {
    "stop": Message.Status.COMPLETE,
    "length": Message.Status.COMPLETE,
    "moderated": Message.Status.COMPLETE,
    "cancelled": Message.Status.STOPPED,
    "interrupted": Message.Status.INTERRUPTED,
    "error": Message.Status.ERROR,
}


def claim(message_id: int, worker_id: str) -> bool:
    """Mark a queued reply as generating on `worker_id`. False if it is gone or already ended
    (deleted conversation, stopped while queued, reaped): the worker then drops the request."""
    return bool(
        Message.objects.filter(pk=message_id, status=Message.Status.QUEUED).update(
            status=Message.Status.GENERATING, worker=worker_id, updated_at=timezone.now()
        )
    )


def done_payload(message: Message) -> dict:
    return {
        "type": "chat.done",
        "message": message.pk,
        "finish_reason": message.finish_reason,
        "usage": {"prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens},
        "html": message.html,
        "timing": {"ttft_ms": message.ttft_ms, "tokens_per_s": message.tokens_per_s},
        "error": message.error,
    }


def finish(
    message_id: int,
    *,
    content: str,
    finish_reason: str,
    next_seq: int,
    error: str = "",
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    ttft_ms: float | None = None,
    tokens_per_s: float | None = None,
) -> dict | None:
    """End a reply once: store its text, status and numbers, then append `done` to its stream.

    Race: the worker finishing a reply while the reaper declares its worker dead. The update is
    conditional on the reply still being active, so exactly one of them wins; the loser returns
    None and writes nothing.
    """
    with transaction.atomic():
        updated = Message.objects.filter(pk=message_id, status__in=Message.ACTIVE_STATUSES).update(
            status=STATUS_FOR_REASON[finish_reason],
            finish_reason=finish_reason,
            content=content,
            html=render_markdown(content),
            error=error,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            ttft_ms=ttft_ms,
            tokens_per_s=tokens_per_s,
            updated_at=timezone.now(),
        )
        if not updated:
            return None
        message = Message.objects.select_related("conversation").get(pk=message_id)
        Conversation.objects.filter(pk=message.conversation_id).update(updated_at=timezone.now())
    payload = done_payload(message)
    try:
        pipe = streams.client().pipeline()
        streams.append(pipe, message_id, next_seq, "done", payload)
        pipe.execute()
    except RedisError:
        # Redis down, or an id clash (a done entry exists already): the database is the truth,
        # and a client that resumes gets this done frame from it.
        pass
    return payload
