"""Conversation titles. A new conversation is titled with its first message cut at a word
boundary (`cut`); once its first reply is complete, the model that wrote it is asked for a short
title in the background (an inference request of its own, sink "chat.title", with the background
priority: it runs only when no person's reply wants the worker, and gives way to one that
arrives), so no reply is ever delayed. It is built from the person's first message only (cut to
PROMPT_CHARS: a title names what was asked, not what the model answered) and capped at CHAT_TITLE_MAX_TOKENS; one still waiting after CHAT_TITLE_WAIT_S (a
machine that stays busy) is dropped, and the cut title stays. The title replaces the cut one unless the user renamed the conversation first;
every tab's sidebar follows (a chat.sync "renamed" event). A failed or empty answer, one cut by
CHAT_TITLE_MAX_TOKENS or one longer than MAX_WORDS words keeps the cut title: the packaged
135M model mostly answers the question instead of titling it (measured in
tests/test_titles.py), larger models title well. CHAT_MODEL_TITLES=0 turns the model titles off.
"""

from __future__ import annotations

import logging
import re
import time

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError

from chatsite.ids import parse_id
from inference import sinks, streams
from inference.protocol import BACKGROUND, Done, Request

from . import sync
from .models import Conversation, Message

logger = logging.getLogger(__name__)

SINK = "chat.title"
PREFIX = "title-"
TITLE_CHARS = 60
MAX_WORDS = 8  # a longer answer is a sentence, not a title: the cut title stays
PROMPT_CHARS = 500  # of the first message and of the reply, at most, in the title request (a short read)
SYSTEM = "You write short titles. A title has two to five words."
ASK = "Write a title of two to five words for what this person asks. Answer with the title only."


def cut(content: str) -> str:
    """`content` on one line, cut at a word boundary (with an ellipsis) to TITLE_CHARS characters."""
    text = " ".join(content.split())
    if len(text) <= TITLE_CHARS:
        return text or "New chat"
    head = text[: TITLE_CHARS - 1]
    if " " in head and not text[TITLE_CHARS - 1].isspace():
        head = head.rsplit(" ", 1)[0]
    return head.rstrip(" ,;:.-") + "…"


def clean(answer: str) -> str:
    """The model's answer as a title: its first non-empty line, without a "Title:" label,
    Markdown markers, quotes or a final full stop; "" when nothing is left or when it is longer
    than MAX_WORDS words (small models tend to answer the question instead)."""
    line = next((part.strip() for part in answer.splitlines() if part.strip()), "")
    line = re.sub(r"^(?:#+\s*)?(?:\*\*)?title(?:\*\*)?\s*:\s*", "", line, flags=re.IGNORECASE)
    line = line.strip(" \t*_#`\"'“”‘’«»")
    line = line.rstrip(" .。:;,")
    if not any(ch.isalnum() for ch in line) or len(line.split()) > MAX_WORDS:
        return ""
    return cut(line)


def request_id(conversation_id: int) -> str:
    return f"{PREFIX}{conversation_id}"


def conversation_id_of(request_id_: str) -> int | None:
    rest = request_id_[len(PREFIX) :] if request_id_.startswith(PREFIX) else ""
    return parse_id(rest)


def build_request(conversation: Conversation, question: str, answer: str, model) -> Request:
    """The title request: the person's first message alone (a title names what was asked; from the
    reply, small models titled themselves: "I'm an AI assistant for all things tech"). `answer`
    only says that the first reply is complete."""
    text = f"{ASK}\n\nThe person asks:\n{question[:PROMPT_CHARS]}"
    return Request(
        id=request_id(conversation.pk),
        model=model.slug,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
        sampling={"temperature": 0.0, "max_tokens": settings.CHAT_TITLE_MAX_TOKENS},
        max_input_tokens=model.max_input_tokens,
        sink=SINK,
        user=str(conversation.user_id),
        priority=BACKGROUND,
        deadline=time.time() + settings.CHAT_TITLE_WAIT_S,
    )


def after_reply(message_id: int) -> None:
    """Called when a reply was stored complete (inside its transaction): if it is the first
    reply of a chat-page conversation still titled with its first message, queue a title
    request once the reply's transaction has committed."""
    if not settings.CHAT_MODEL_TITLES:
        return
    reply = Message.objects.select_related("conversation", "model", "parent").filter(pk=message_id).first()
    if reply is None or reply.model is None or reply.parent is None or reply.parent.parent_id is not None:
        return
    conversation = reply.conversation
    if conversation.source != Conversation.Source.CHAT:
        return
    claimed = Conversation.objects.filter(
        pk=conversation.pk, title_source=Conversation.TitleSource.MESSAGE, deleted_at__isnull=True
    ).update(title_source=Conversation.TitleSource.PENDING, title_requested_at=timezone.now())
    if claimed:
        request = build_request(conversation, reply.parent.content, reply.content, reply.model)
        transaction.on_commit(lambda: _submit(request))


def _submit(request: Request) -> None:
    try:
        streams.submit(request)
    except (RedisError, streams.QueueFull) as exc:
        logger.warning("No model title for %s: %s", request.id, exc)
        _give_up(conversation_id_of(request.id))


def _give_up(conversation_id: int | None) -> bool:
    """Keep the cut title (the title request failed or was refused)."""
    return bool(
        Conversation.objects.filter(pk=conversation_id, title_source=Conversation.TitleSource.PENDING).update(
            title_source=Conversation.TitleSource.MESSAGE
        )
    )


class TitleSink(sinks.Sink):
    """Stores a model title on its conversation, once, unless the user renamed it meanwhile."""

    def claim(self, request_id: str, worker_id: str) -> bool:
        cid = conversation_id_of(request_id)
        # Claimed: stamped again, so the reaper counts its time from here (see `pending`).
        return bool(
            Conversation.objects.filter(
                pk=cid, title_source=Conversation.TitleSource.PENDING, deleted_at__isnull=True
            ).update(title_requested_at=timezone.now())
        )

    def finish(self, request_id: str, content: str, done: Done, *, queued_only: bool = False) -> bool:
        cid = conversation_id_of(request_id)
        # An answer cut by the token limit is a sentence, not a title.
        title = clean(content) if done.finish_reason == "stop" else ""
        if not title:
            return _give_up(cid)
        updated = Conversation.objects.filter(pk=cid, title_source=Conversation.TitleSource.PENDING).update(
            title=title, title_source=Conversation.TitleSource.MODEL
        )
        if updated:
            user_id = Conversation.objects.filter(pk=cid).values_list("user_id", flat=True).first()
            transaction.on_commit(
                lambda: sync.publish(user_id, {"event": "renamed", "conversation": cid, "title": title})
            )
        return bool(updated)

    def pending(self, request_ids: list[str] | None = None) -> list[sinks.Pending]:
        # Not tracked per worker: a title whose worker died is failed by the reaper once it has
        # been out of the queue for INFERENCE_QUEUE_TIMEOUT_S (the cut title stays).
        waiting = Conversation.objects.filter(title_source=Conversation.TitleSource.PENDING)
        if request_ids is not None:
            waiting = waiting.filter(pk__in=[c for c in map(conversation_id_of, request_ids) if c is not None])
        return [
            sinks.Pending(request_id(pk), False, "", requested_at or timezone.now())
            for pk, requested_at in waiting.values_list("pk", "title_requested_at")
        ]
