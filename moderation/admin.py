"""Rules (validated when saved) and the review queue: flagged and blocked messages with their
conversation, rule and user, approved or dismissed by an admin."""

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from . import events
from .models import Event, Rule


@admin.register(Rule)
class RuleAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "pattern", "applies_to", "action", "category", "enabled")
    list_filter = ("enabled", "action", "applies_to", "kind")
    list_editable = ("enabled",)
    search_fields = ("name", "pattern", "category")
    fields = ("name", "kind", "pattern", "word_forms", "applies_to", "action", "category", "replacement", "enabled")


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """The review queue: pending first (filter by status), newest first."""

    list_display = ("created_at", "status", "action", "stage", "rule_name", "count", "category", "excerpt", "user",
                    "thread")  # fmt: skip
    list_filter = ("status", "action", "stage", "source", "category")
    search_fields = ("excerpt", "rule_name", "user__username")
    list_select_related = ("user", "conversation")
    actions = ("approve", "dismiss")
    readonly_fields = [f.name for f in Event._meta.fields]
    date_hierarchy = "created_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="conversation")
    def thread(self, event: Event):
        if event.conversation_id is None:
            return "—"
        url = reverse("admin:chat_conversation_change", args=[event.conversation_id])
        return format_html('<a href="{}">#{}</a>', url, event.conversation_id)

    @admin.action(description="Approve: the rule was right")
    def approve(self, request, queryset):
        done = events.review(queryset, Event.Status.APPROVED, request.user)
        self.message_user(request, f"{done} event(s) approved.", messages.SUCCESS)

    @admin.action(description="Dismiss: a false alarm")
    def dismiss(self, request, queryset):
        done = events.review(queryset, Event.Status.DISMISSED, request.user)
        self.message_user(request, f"{done} event(s) dismissed.", messages.SUCCESS)
