"""Chat's sink for the inference service: an assistant Message is claimed by a worker, then
finished exactly once (by its worker, or by the reaper if that worker died). Registered under
the name "chat" when the app is ready; request ids are "chat-<message id>"."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from chatsite.ids import parse_id
from inference import sinks, streams
from inference.protocol import Done
from moderation import events as moderation_events

from . import titles
from .models import Conversation, Message
from .rendering import render_markdown

SINK = "chat"
PREFIX = "chat-"

STATUS_FOR_REASON = {
    "stop": Message.Status.COMPLETE,
    "length": Message.Status.COMPLETE,
    "moderated": Message.Status.COMPLETE,
    "cancelled": Message.Status.STOPPED,
    "interrupted": Message.Status.INTERRUPTED,
    "error": Message.Status.ERROR,
}


def request_id(message_id: int) -> str:
    return f"{PREFIX}{message_id}"


def message_id_of(request_id: str) -> int | None:
    return parse_id(request_id[len(PREFIX) :]) if request_id.startswith(PREFIX) else None


def done_frame(message: Message) -> dict:
    """The chat.done frame of an ended reply, from its stored row."""
    return {
        "type": "chat.done",
        "message": message.pk,
        "finish_reason": message.finish_reason,
        "usage": {"prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens},
        "html": message.html,
        "timing": {"ttft_ms": message.ttft_ms, "tokens_per_s": message.tokens_per_s},
        "error": message.error,
    }


def end(message_id: int, *, content: str, done: Done, queued_only: bool = False) -> bool:
    """Store a reply's end once: its text, status and numbers.

    Race: the worker finishing a reply while the reaper declares its worker dead. The update is
    conditional on the reply still being active, so exactly one of them wins; the loser gets
    False and writes nothing.
    """
    statuses = [Message.Status.QUEUED] if queued_only else list(Message.ACTIVE_STATUSES)
    with transaction.atomic():
        updated = Message.objects.filter(pk=message_id, status__in=statuses).update(
            status=STATUS_FOR_REASON[done.finish_reason],
            finish_reason=done.finish_reason,
            content=content,
            html=render_markdown(content),
            error=done.error,
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            ttft_ms=done.ttft_ms,
            tokens_per_s=done.tokens_per_s,
            updated_at=timezone.now(),
        )
        if not updated:
            return False
        if STATUS_FOR_REASON[done.finish_reason] == Message.Status.COMPLETE and done.finish_reason != "moderated":
            titles.after_reply(message_id)
        conversation_id = Message.objects.filter(pk=message_id).values_list("conversation_id", flat=True).first()
        Conversation.objects.filter(pk=conversation_id).update(updated_at=timezone.now())
        if done.moderation:  # output rules that matched while it streamed: the review queue
            conversation = Conversation.objects.select_related("user").get(pk=conversation_id)
            moderation_events.record(
                done.moderation,
                source=getattr(conversation, "source", "chat"),
                user=conversation.user,
                conversation=conversation,
                message=Message(pk=message_id),
            )
    return True


class ChatSink(sinks.Sink):
    def claim(self, request_id: str, worker_id: str) -> bool:
        message_id = message_id_of(request_id)
        return message_id is not None and bool(
            Message.objects.filter(pk=message_id, status=Message.Status.QUEUED).update(
                status=Message.Status.GENERATING, worker=worker_id, updated_at=timezone.now()
            )
        )

    def finish(self, request_id: str, content: str, done: Done, *, queued_only: bool = False) -> bool:
        message_id = message_id_of(request_id)
        return message_id is not None and end(message_id, content=content, done=done, queued_only=queued_only)

    def pending(self, request_ids: list[str] | None = None) -> list[sinks.Pending]:
        active = Message.objects.filter(status__in=Message.ACTIVE_STATUSES)
        if request_ids is not None:
            active = active.filter(pk__in=[m for m in map(message_id_of, request_ids) if m is not None])
        return [
            sinks.Pending(request_id(pk), status == Message.Status.GENERATING, worker, created_at)
            for pk, status, worker, created_at in active.values_list("pk", "status", "worker", "created_at")
        ]


@dataclass(frozen=True)
class Ended:
    """A quiet reply found ended: its stored row, or None when the reply is gone."""

    message: Message | None


def settle_quiet_reply(message_id: int | None, after: int, *, visible_only: bool = False) -> Ended | None:
    """For a reply whose stream has been quiet a while for a reader that has read up to seq
    `after`: reap it if its worker is gone and, if it has ended with nothing left in its stream
    for that reader (the stream expired, or it was reaped just now), say so with its row. None
    while it is still active, or while its stream holds entries after `after`: the worker appends
    a reply's last deltas, stores its row, then appends its `done`, so a reply that ended while
    the reader asked still has text to send, and the reader gets it (and the `done`) there. With
    `visible_only`, a reply its user deleted is gone (the chat page); the API sees every reply."""
    messages = Message.objects.visible() if visible_only else Message.objects.all()
    message = None if message_id is None else messages.filter(pk=message_id).first()
    if message is None:
        return Ended(None)
    if message.is_active:
        reap([message])
        message.refresh_from_db()
        if message.is_active:
            return None
    if streams.has_after(request_id(message.pk), after):
        return None
    return Ended(message)


def reap(messages) -> None:
    """Reap these replies if nothing can ever end them (a dead worker, no worker at all)."""
    from inference import reaper

    reaper.reap(SINK, [request_id(m.pk) for m in messages if m.is_active])
