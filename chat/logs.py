"""Conversation logs for the admins: what each list can be filtered by, the thread as it was
(replaced replies included, marked) and each reply's reproducibility record. Read-only: nothing
here changes a row."""

from __future__ import annotations

import json
from html import unescape

from django.contrib import admin
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.template.loader import render_to_string
from django.utils.html import strip_tags
from django.utils.safestring import SafeString, mark_safe

from moderation.models import Event

from .models import Conversation, Feedback, Message
from .rendering import render_markdown

EXCERPT_CHARS = 80


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def text_excerpt(message: Message, limit: int = EXCERPT_CHARS) -> str:
    """The start of a message as plain text: its rendered HTML without the tags, so a list shows
    "Here is bold text", not Markdown's "Here is **bold** text"."""
    return excerpt(unescape(strip_tags(html_of(message))), limit)


def html_of(message: Message) -> SafeString:
    """The message's sanitized HTML (rendered from its Markdown now if it was never stored, e.g.
    a reply still generating). Never the raw Markdown, never unsanitized."""
    # Message.html is only ever written by render_markdown (bleach-sanitized), in chat.turns and chat.replies.
    return mark_safe(message.html or render_markdown(message.content))


# --- the reproducibility record ----------------------------------------------------------------
SAMPLING_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
    "max_tokens",
    "stop",
)


def _version(message: Message) -> str:
    version = message.model_version or {}
    if not version:
        model = message.model
        return f"not recorded (the model now: {model.source} {model.location})" if model else "not recorded"
    parts = [version.get("source", ""), version.get("location", "")]
    parts += [f"{key} {version[key]}" for key in ("backend", "gguf_file", "adapter", "dtype") if version.get(key)]
    if version.get("updated_at"):
        parts.append(f"as of {version['updated_at']}")
    return ", ".join(p for p in parts if p)


def _lineage(message: Message) -> str:
    version = message.model_version or {}
    lineage = version.get("lineage") or {}
    base = version.get("base")
    if not base and not lineage:
        return "a base model (not fine-tuned here)"
    shown = {key: lineage[key] for key in ("job", "dataset", "dataset_sha256", "method") if key in lineage}
    return f"fine-tuned from {base or '?'}" + (f": {json.dumps(shown, ensure_ascii=False)}" if shown else "")


def record(message: Message) -> list[tuple[str, str]]:
    """What it takes to generate this reply again, as (label, value) rows."""
    params = message.params or {}
    slug = (message.model_version or {}).get("slug") or (message.model.slug if message.model else "(model deleted)")
    sampling = {key: params[key] for key in SAMPLING_KEYS if key in params}
    return [
        ("Model", slug),
        ("Version", _version(message)),
        ("Lineage", _lineage(message)),
        ("System prompt", message.system_prompt or "(none recorded)"),
        ("Sampling", ", ".join(f"{k}={v}" for k, v in sampling.items()) or "(none recorded)"),
        ("Seed", str(params["seed"]) if params.get("seed") is not None else "random (none set)"),
        ("Tokens", f"{message.prompt_tokens} in, {message.completion_tokens} out"),
        ("Time to first token", f"{message.ttft_ms:.0f} ms" if message.ttft_ms is not None else "-"),
        ("Speed", f"{message.tokens_per_s:.1f} tokens/s" if message.tokens_per_s is not None else "-"),
        ("Worker", message.worker or "-"),
        ("Finish", message.finish_reason or message.status),
    ]


def render_record(message: Message) -> str:
    return render_to_string("admin/chat/record.html", {"rows": record(message)})


def thread_messages(conversation: Conversation) -> QuerySet[Message]:
    """Every message of the conversation, replaced ones too, with what the thread shows of each."""
    return (
        conversation.messages.select_related("model", "feedback")
        .annotate(flagged=Exists(Event.objects.filter(message=OuterRef("pk"))))
        .order_by("created_at", "id")
    )


def render_thread(conversation: Conversation) -> str:
    items = [
        {"message": m, "html": html_of(m), "record": record(m) if m.role == Message.Role.ASSISTANT else None}
        for m in thread_messages(conversation)
    ]
    return render_to_string("admin/chat/thread.html", {"items": items, "conversation": conversation})


# --- list filters ----------------------------------------------------------------------------
def flagged_conversations() -> Q:
    events = Event.objects.filter(Q(conversation=OuterRef("pk")) | Q(message__conversation=OuterRef("pk")))
    return Q(Exists(events))


class FlaggedFilter(admin.SimpleListFilter):
    """Has moderation events (blocked, masked or flagged text)."""

    title = "moderation"
    parameter_name = "flagged"

    def lookups(self, request, model_admin):
        return [("yes", "flagged"), ("no", "not flagged")]

    def queryset(self, request, queryset):
        if self.value() not in ("yes", "no"):
            return queryset
        if queryset.model is Conversation:
            condition = flagged_conversations()
        else:
            condition = Q(Exists(Event.objects.filter(message=OuterRef("pk"))))
        return queryset.filter(condition if self.value() == "yes" else ~condition)


class RatingFilter(admin.SimpleListFilter):
    """The feedback rating a reply got (a conversation: any of its replies)."""

    title = "rating"
    parameter_name = "rating"

    def lookups(self, request, model_admin):
        return [("up", "thumbs up"), ("down", "thumbs down"), ("any", "any feedback"), ("none", "no feedback")]

    def queryset(self, request, queryset):
        value = self.value()
        ratings = {"up": Feedback.Rating.UP, "down": Feedback.Rating.DOWN}
        if value not in (*ratings, "any", "none"):
            return queryset
        link = "message__conversation" if queryset.model is Conversation else "message"
        feedback = Feedback.objects.filter(**{link: OuterRef("pk")})
        if value in ratings:
            feedback = feedback.filter(rating=ratings[value])
        return queryset.filter(~Q(Exists(feedback)) if value == "none" else Q(Exists(feedback)))


class DeletedFilter(admin.SimpleListFilter):
    """Conversations: shown to their user, or deleted by them (kept for LOGS_RETENTION_DAYS)."""

    title = "deleted by the user"
    parameter_name = "deleted"

    def lookups(self, request, model_admin):
        return [("no", "shown to the user"), ("yes", "deleted")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(deleted_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(deleted_at__isnull=True)
        return queryset


class HiddenFilter(admin.SimpleListFilter):
    """Messages: shown, replaced by a regenerated reply, or in a deleted conversation."""

    title = "shown to the user"
    parameter_name = "hidden"

    def lookups(self, request, model_admin):
        return [("no", "shown"), ("replaced", "replaced by regenerate"), ("deleted", "in a deleted conversation")]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "no":
            return queryset.visible()
        if value == "replaced":
            return queryset.filter(replaced_at__isnull=False)
        if value == "deleted":
            return queryset.filter(conversation__deleted_at__isnull=False)
        return queryset


class EditedFilter(admin.SimpleListFilter):
    """Feedback with an answer the person wrote instead of the reply."""

    title = "edited answer"
    parameter_name = "edited"

    def lookups(self, request, model_admin):
        return [("yes", "has an edited answer"), ("no", "no edited answer")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.exclude(edited_content="")
        if self.value() == "no":
            return queryset.filter(edited_content="")
        return queryset
