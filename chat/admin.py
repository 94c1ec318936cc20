"""The admin's conversation logs (read-only): conversations and messages with search and filters,
the whole thread as it was, each reply's reproducibility record, streamed exports, and feedback
turned into fine-tuning datasets. Deleting happens only through LOGS_RETENTION_DAYS
(chat.retention), never from here."""

from django.contrib import admin, messages
from django.db.models import Exists, OuterRef
from django.urls import reverse
from django.utils.html import format_html

from finetuning.datasets import DatasetError
from moderation.models import Event

from . import export, feedback_datasets, logs
from .models import Conversation, Feedback, Message

LOGS_MEDIA = {"all": ("chat/admin-logs.css",)}


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # logs are purged by chat.retention after LOGS_RETENTION_DAYS


def _user_link(user) -> str:
    return format_html('<a href="{}">{}</a>', reverse("admin:auth_user_change", args=[user.pk]), user.get_username())


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdmin):
    list_display = ("title", "user", "model", "source", "updated_at", "deleted")
    list_select_related = ("user", "model")
    search_fields = ("title", "user__username", "messages__content")
    list_filter = (
        ("user", admin.RelatedOnlyFieldListFilter),
        ("model", admin.RelatedOnlyFieldListFilter),
        "created_at",
        logs.FlaggedFilter,
        logs.RatingFilter,
        "source",
        logs.DeletedFilter,
    )
    date_hierarchy = "created_at"
    view_on_site = False  # the chat page shows a conversation to its owner only
    fields = ("title", "user", "model", "source", "system_prompt", "created_at", "updated_at", "deleted_at", "thread")
    readonly_fields = fields
    actions = ["export_jsonl", "export_csv"]

    class Media:
        css = LOGS_MEDIA

    @admin.display(description="deleted", boolean=True)
    def deleted(self, obj: Conversation) -> bool:
        return obj.deleted_at is not None

    @admin.display(description="Thread")
    def thread(self, obj: Conversation) -> str:
        return logs.render_thread(obj)

    @admin.action(description="Export the selected conversations as JSON Lines", permissions=["view"])
    def export_jsonl(self, request, queryset):
        return export.response(queryset, "jsonl")

    @admin.action(description="Export the selected conversations as CSV (one message a row)", permissions=["view"])
    def export_csv(self, request, queryset):
        return export.response(queryset, "csv")


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "excerpt", "role", "model", "rating", "flagged", "created_at")
    list_display_links = ("id", "excerpt")
    list_select_related = ("conversation__user", "model", "feedback")
    list_filter = (
        ("conversation__user", admin.RelatedOnlyFieldListFilter),
        ("model", admin.RelatedOnlyFieldListFilter),
        "created_at",
        logs.FlaggedFilter,
        logs.RatingFilter,
        "conversation__source",
        logs.HiddenFilter,
        "role",
        "status",
    )
    search_fields = ("content", "conversation__title", "conversation__user__username")
    fields = ("conversation_link", "user", "role", "status", "created_at", "shown", "rendered", "reproducibility")
    readonly_fields = fields

    class Media:
        css = LOGS_MEDIA

    def get_queryset(self, request):
        flagged = Exists(Event.objects.filter(message=OuterRef("pk")))
        return super().get_queryset(request).annotate(is_flagged=flagged)

    @admin.display(description="user", ordering="conversation__user__username")
    def user(self, obj: Message) -> str:
        return obj.conversation.user.get_username()

    @admin.display(description="content")
    def excerpt(self, obj: Message) -> str:
        return logs.text_excerpt(obj) or f"({obj.status})"

    @admin.display(description="rating")
    def rating(self, obj: Message) -> str:
        feedback = getattr(obj, "feedback", None)
        return feedback.get_rating_display() if feedback else ""

    @admin.display(description="flagged", boolean=True, ordering="is_flagged")
    def flagged(self, obj: Message) -> bool:
        return obj.is_flagged

    @admin.display(description="conversation")
    def conversation_link(self, obj: Message) -> str:
        url = reverse("admin:chat_conversation_change", args=[obj.conversation_id])
        return format_html('<a href="{}#message-{}">{}</a>', url, obj.pk, obj.conversation.title)

    @admin.display(description="shown to the user")
    def shown(self, obj: Message) -> str:
        if obj.conversation.deleted_at:
            return f"no: the conversation was deleted {obj.conversation.deleted_at:%Y-%m-%d %H:%M}"
        if obj.replaced_at:
            return f"no: replaced by #{obj.replaced_by_id} at {obj.replaced_at:%Y-%m-%d %H:%M}"
        return "yes"

    @admin.display(description="message")
    def rendered(self, obj: Message) -> str:
        return format_html('<div class="chat-log-body">{}</div>', logs.html_of(obj))

    @admin.display(description="reproducibility record")
    def reproducibility(self, obj: Message) -> str:
        return logs.render_record(obj) if obj.role == Message.Role.ASSISTANT else "-"


@admin.register(Feedback)
class FeedbackAdmin(ReadOnlyAdmin):
    list_display = ("id", "rating", "user", "reply_model", "reply", "comment_excerpt", "edited", "created_at")
    list_display_links = ("id", "reply")
    list_select_related = ("user", "message__model")
    list_filter = ("rating", ("message__model", admin.RelatedOnlyFieldListFilter), logs.EditedFilter, "created_at")
    search_fields = ("comment", "edited_content", "message__content", "user__username")
    fields = ("rating", "user", "conversation", "rendered_reply", "comment", "edited_content", "created_at")
    readonly_fields = fields
    actions = ["build_dataset"]

    class Media:
        css = LOGS_MEDIA

    @admin.display(description="model", ordering="message__model__slug")
    def reply_model(self, obj: Feedback) -> str:  # not `model`: ModelAdmin.model is the admin's model class
        return obj.message.model.slug if obj.message.model else "-"

    @admin.display(description="reply")
    def reply(self, obj: Feedback) -> str:
        return logs.text_excerpt(obj.message, 60)

    @admin.display(description="comment")
    def comment_excerpt(self, obj: Feedback) -> str:
        return logs.excerpt(obj.comment, 60)

    @admin.display(description="edited", boolean=True)
    def edited(self, obj: Feedback) -> bool:
        return bool(obj.edited_content)

    @admin.display(description="conversation")
    def conversation(self, obj: Feedback) -> str:
        url = reverse("admin:chat_conversation_change", args=[obj.message.conversation_id])
        return format_html('<a href="{}#message-{}">{}</a>', url, obj.message_id, obj.message.conversation.title)

    @admin.display(description="the reply")
    def rendered_reply(self, obj: Feedback) -> str:
        return format_html('<div class="chat-log-body">{}</div>', logs.html_of(obj.message))

    def has_build_permission(self, request) -> bool:
        return self.has_view_permission(request) and request.user.has_perm("finetuning.add_dataset")

    @admin.action(description="Build a fine-tuning dataset from the selected feedback", permissions=["build"])
    def build_dataset(self, request, queryset):
        try:
            built = feedback_datasets.build(request.user, queryset)
        except (feedback_datasets.NothingToBuild, DatasetError) as exc:
            self.message_user(request, f"No dataset was built: {exc}", level=messages.ERROR)
            return
        url = reverse("finetuning:dataset", args=[built.dataset.pk])
        notes = []
        if built.skipped:
            notes.append(f"{built.skipped} selected feedback had neither a thumbs up nor an edited answer")
        if built.dropped_count:
            reasons = "; ".join(f"{e['where']}: {e['reason']}" for e in built.dropped[:3])
            notes.append(f"{built.dropped_count} row(s) failed the dataset check ({reasons})")
        self.message_user(
            request,
            format_html(
                'Built the dataset <a href="{}">{}</a> with {} row(s).{}',
                url,
                built.dataset.name,
                built.dataset.rows,
                (" Left out: " + "; ".join(notes) + ".") if notes else "",
            ),
            level=messages.SUCCESS,
        )


admin.site.index_template = "admin/chat/index.html"
admin.site.site_header = "Chat studio administration"
# The navigation sidebar takes a quarter of a 1280 px screen from every list, which then hides its
# last columns behind a sideways scroll; the breadcrumbs and the index page lead everywhere.
admin.site.enable_nav_sidebar = False
