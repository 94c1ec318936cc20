"""Conversation logs exported from the admin, streamed: JSONL (one conversation a line, its
messages inside) and CSV (one message a row). Conversations are read `CHUNK` at a time with their
messages prefetched per chunk, and each line is written out as soon as it is made, so an export of
any size holds one chunk in memory, never the whole selection. The response's body is an async
iterator (chatsite/streaming.py): under ASGI a synchronous one is read whole before it is sent."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator

from django.db.models import Prefetch, QuerySet
from django.http import StreamingHttpResponse
from django.utils import timezone

from chatsite.streaming import async_chunks

from .models import Conversation, Message

CHUNK = 500  # conversations read at a time
BATCH_BYTES = 64 * 1024  # sent at a time

CSV_COLUMNS = [
    "conversation_id",
    "conversation_title",
    "user",
    "source",
    "conversation_created_at",
    "conversation_deleted_at",
    "message_id",
    "role",
    "content",
    "status",
    "finish_reason",
    "model",
    "created_at",
    "replaced_at",
    "replaced_by",
    "prompt_tokens",
    "completion_tokens",
    "ttft_ms",
    "tokens_per_s",
    "worker",
    "params",
    "rating",
    "feedback_comment",
    "edited_content",
]


def _time(value) -> str | None:
    return value.isoformat() if value else None


def _conversations(queryset: QuerySet[Conversation]) -> Iterator[Conversation]:
    messages = Message.objects.select_related("model", "feedback").order_by("created_at", "id")
    return (
        queryset.select_related("user", "model")
        .prefetch_related(Prefetch("messages", queryset=messages))
        .order_by("pk")
        .iterator(chunk_size=CHUNK)
    )


def _feedback(message: Message) -> dict | None:
    feedback = getattr(message, "feedback", None)  # a reverse one-to-one: missing raises, getattr hides it
    if feedback is None:
        return None
    return {"rating": feedback.rating, "comment": feedback.comment, "edited_content": feedback.edited_content}


def message_record(message: Message) -> dict:
    return {
        "id": message.pk,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "finish_reason": message.finish_reason,
        "error": message.error,
        "model": message.model.slug if message.model else None,
        "created_at": _time(message.created_at),
        "replaced_at": _time(message.replaced_at),
        "replaced_by": message.replaced_by_id,
        "system_prompt": message.system_prompt,
        "model_version": message.model_version,
        "params": message.params,
        "usage": {"prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens},
        "timing": {"ttft_ms": message.ttft_ms, "tokens_per_s": message.tokens_per_s},
        "worker": message.worker,
        "feedback": _feedback(message),
    }


def conversation_record(conversation: Conversation) -> dict:
    return {
        "id": conversation.pk,
        "title": conversation.title,
        "user": conversation.user.get_username(),
        "source": conversation.source,
        "model": conversation.model.slug if conversation.model else None,
        "system_prompt": conversation.system_prompt,
        "created_at": _time(conversation.created_at),
        "updated_at": _time(conversation.updated_at),
        "deleted_at": _time(conversation.deleted_at),
        "messages": [message_record(m) for m in conversation.messages.all()],
    }


def jsonl_lines(queryset: QuerySet[Conversation]) -> Iterator[str]:
    for conversation in _conversations(queryset):
        yield json.dumps(conversation_record(conversation), ensure_ascii=False) + "\n"


EMPTY_MESSAGE = {
    **dict.fromkeys(["id", "role", "content", "status", "finish_reason", "model", "created_at", "replaced_at"]),
    **dict.fromkeys(["replaced_by", "worker", "feedback"]),
    "params": None,
    "usage": {"prompt_tokens": None, "completion_tokens": None},
    "timing": {"ttft_ms": None, "tokens_per_s": None},
}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str | None) -> str | None:
    """Text a spreadsheet would run as a formula (=, +, -, @ first) gets a leading apostrophe,
    so opening the CSV in a spreadsheet never executes a user's message. JSONL keeps text exact."""
    if text and text.startswith(FORMULA_START):
        return "'" + text
    return text


class _Line:
    """csv.writer's file: hands back what it was given to write."""

    def write(self, value: str) -> str:
        return value


def csv_lines(queryset: QuerySet[Conversation]) -> Iterator[str]:
    writer = csv.writer(_Line())
    yield writer.writerow(CSV_COLUMNS)
    for conversation in _conversations(queryset):
        head = conversation_record(conversation)
        # A conversation without messages still gets its row, with the message columns empty.
        for message in head.pop("messages") or [EMPTY_MESSAGE]:
            feedback = message["feedback"] or {}
            yield writer.writerow(
                [
                    head["id"],
                    _cell(head["title"]),
                    _cell(head["user"]),
                    head["source"],
                    head["created_at"],
                    head["deleted_at"],
                    message["id"],
                    message["role"],
                    _cell(message["content"]),
                    message["status"],
                    message["finish_reason"],
                    message["model"],
                    message["created_at"],
                    message["replaced_at"],
                    message["replaced_by"],
                    message["usage"]["prompt_tokens"],
                    message["usage"]["completion_tokens"],
                    message["timing"]["ttft_ms"],
                    message["timing"]["tokens_per_s"],
                    message["worker"],
                    json.dumps(message["params"], ensure_ascii=False) if message["params"] is not None else None,
                    feedback.get("rating"),
                    _cell(feedback.get("comment")),
                    _cell(feedback.get("edited_content")),
                ]
            )


FORMATS = {
    "jsonl": (jsonl_lines, "application/x-ndjson; charset=utf-8"),
    "csv": (csv_lines, "text/csv; charset=utf-8"),
}


def response(queryset: QuerySet[Conversation], fmt: str) -> StreamingHttpResponse:
    """A download of the selected conversations, written while it is sent."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; use one of: {', '.join(FORMATS)}.")
    lines, content_type = FORMATS[fmt]
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    streamed = StreamingHttpResponse(async_chunks(lines(queryset), BATCH_BYTES), content_type=content_type)
    streamed["Content-Disposition"] = f'attachment; filename="conversations-{stamp}.{fmt}"'
    return streamed
