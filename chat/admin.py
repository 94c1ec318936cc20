from django.contrib import admin

from .models import Conversation, LanguageModel, Message


@admin.register(LanguageModel)
class LanguageModelAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "source", "location", "device", "dtype", "enabled", "is_default")
    list_filter = ("enabled", "source")
    list_editable = ("enabled",)
    search_fields = ("name", "slug", "location")
    prepopulated_fields = {"slug": ("name",)}
    actions = ["make_default", "disable"]
    fieldsets = (
        (None, {"fields": ("name", "slug", "enabled", "is_default")}),
        ("Source", {"fields": ("source", "location", "device", "dtype")}),
        (
            "Generation",
            {
                "fields": (
                    "system_prompt",
                    "temperature",
                    "top_p",
                    "max_tokens",
                    "max_new_tokens_cap",
                    "max_input_tokens",
                )
            },
        ),
    )

    @admin.action(description="Make the selected model the default")
    def make_default(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one model to make it the default.", level="error")
            return
        model = queryset.get()
        if not model.enabled:
            self.message_user(request, "Enable the model before making it the default.", level="error")
            return
        model.is_default = True
        model.save(update_fields=["is_default", "updated_at"])
        self.message_user(request, f"{model} is now the default model.")

    @admin.action(description="Disable the selected models")
    def disable(self, request, queryset):
        if queryset.filter(is_default=True).exists():
            self.message_user(
                request, "The default model cannot be disabled; make another the default first.", level="error"
            )
            return
        count = queryset.update(enabled=False)
        self.message_user(request, f"Disabled {count} model(s).")


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
