from django.contrib import admin

from .models import Conversation, Message


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class MessageInline(admin.TabularInline):
    model = Message
    fields = ("role", "status", "content", "model", "completion_tokens", "ttft_ms", "tokens_per_s", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdmin):
    list_display = ("title", "user", "model", "created_at", "updated_at")
    list_select_related = ("user", "model")
    search_fields = ("title", "user__username")
    list_filter = ("model",)
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "conversation",
        "role",
        "status",
        "finish_reason",
        "model",
        "completion_tokens",
        "ttft_ms",
        "tokens_per_s",
        "worker",
        "created_at",
    )
    list_select_related = ("conversation", "model")
    list_filter = ("role", "status", "finish_reason", "model")
    search_fields = ("content", "conversation__title", "conversation__user__username")


admin.site.index_template = "admin/chat/index.html"
admin.site.site_header = "Chat studio administration"
