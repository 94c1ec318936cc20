"""Conversations and messages. The models people chat with are `inference.LanguageModel`.

Nothing a user deletes or regenerates is deleted at once: it is hidden from them (`visible()`)
and kept for the admins' logs until LOGS_RETENTION_DAYS have passed (see docs/admin.md)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse

from inference.models import LanguageModel


class ConversationQuerySet(models.QuerySet):
    def visible(self) -> ConversationQuerySet:
        """What the user still sees: not deleted. Deleted ones stay for the admins' logs until
        LOGS_RETENTION_DAYS have passed (chat.retention purges them)."""
        return self.filter(deleted_at__isnull=True)

    def on_chat_page(self) -> ConversationQuerySet:
        """Visible ones started on the chat page: API calls are logged as conversations too
        (source "api") but are not listed or continued there."""
        return self.visible().filter(source=Conversation.Source.CHAT)


class MessageQuerySet(models.QuerySet):
    def visible(self) -> MessageQuerySet:
        """What the user still sees: not replaced by a regenerated reply, in a conversation
        they have not deleted."""
        return self.filter(replaced_at__isnull=True, conversation__deleted_at__isnull=True)


class Conversation(models.Model):
    class Source(models.TextChoices):
        CHAT = "chat", "chat page"
        API = "api", "API"
        COMPARE = "compare", "compare view"  # the studio's side-by-side replies: kept out of the chat list

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")

    class TitleSource(models.TextChoices):
        MESSAGE = "message", "cut from the first message"
        PENDING = "pending", "being written by the model"
        MODEL = "model", "written by the model"
        USER = "user", "set by the user"

    title = models.CharField(max_length=200, default="New chat")
    title_source = models.CharField(max_length=8, choices=TitleSource.choices, default=TitleSource.MESSAGE)
    title_requested_at = models.DateTimeField(
        null=True, blank=True, help_text="When the model was last asked for a title (chat.titles)."
    )
    model = models.ForeignKey(LanguageModel, null=True, blank=True, on_delete=models.SET_NULL)
    system_prompt = models.TextField(blank=True)
    # Sampling overrides; empty means the model's default (inference.sampling validates them).
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    top_k = models.PositiveIntegerField(null=True, blank=True)
    min_p = models.FloatField(null=True, blank=True)
    repetition_penalty = models.FloatField(null=True, blank=True)
    frequency_penalty = models.FloatField(null=True, blank=True)
    presence_penalty = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.CHAT, db_index=True)
    deleted_at = models.DateTimeField(
        null=True, blank=True, db_index=True, help_text="When the user deleted it; hidden from them since."
    )

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["user", "-updated_at"])]

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        return reverse("chat:conversation", args=[self.pk])


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", "user"
        ASSISTANT = "assistant", "assistant"

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        GENERATING = "generating", "generating"
        COMPLETE = "complete", "complete"
        STOPPED = "stopped", "stopped"
        INTERRUPTED = "interrupted", "interrupted"
        ERROR = "error", "error"

    ACTIVE_STATUSES = (Status.QUEUED, Status.GENERATING)

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    html = models.TextField(blank=True, help_text="Sanitized rendering of content.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE, db_index=True)
    finish_reason = models.CharField(max_length=16, blank=True)
    error = models.TextField(blank=True)
    model = models.ForeignKey(LanguageModel, null=True, blank=True, on_delete=models.SET_NULL)
    params = models.JSONField(default=dict, blank=True)
    # The reproducibility record of a reply, as it was when the reply was queued (the conversation
    # and the model may change later): the system prompt used and the model's version.
    system_prompt = models.TextField(blank=True, help_text="The system prompt the reply was generated with.")
    model_version = models.JSONField(
        default=dict, blank=True, help_text="The model as it was: slug, weights, adapter, base and lineage."
    )
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.FloatField(null=True, blank=True, help_text="Time to first token, from enqueue.")
    tokens_per_s = models.FloatField(null=True, blank=True)
    worker = models.CharField(max_length=100, blank=True, help_text="Inference worker that generated it.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    replaced_at = models.DateTimeField(
        null=True,
        blank=True,
        db_index=True,
        help_text="When another version (a regenerated reply, an edited message) took its place on the branch shown.",
    )
    replaced_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaces", editable=False
    )
    # The message this one follows (empty for a conversation's first message): a conversation is
    # a tree of versions (edits and regenerations), of which the page shows one branch.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children", editable=False
    )

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        # Not the content: it is Markdown, and the admin shows it rendered, never raw.
        return f"{self.role} message #{self.pk}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES


class Feedback(models.Model):
    """What a person thought of a reply: thumbs up or down, a comment, and the answer they
    wanted (an edited reply). Admins read it and turn it into fine-tuning data."""

    class Rating(models.IntegerChoices):
        DOWN = -1, "thumbs down"
        NONE = 0, "no rating"
        UP = 1, "thumbs up"

    message = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="feedback")
    rating = models.SmallIntegerField(choices=Rating.choices, default=Rating.NONE, db_index=True)
    comment = models.TextField(blank=True)
    edited_content = models.TextField(blank=True, help_text="The answer the person wanted instead of the reply.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "feedback"
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_rating_display()} on message {self.message_id}"
