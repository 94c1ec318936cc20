from django.contrib import admin, messages
from django.utils import timezone

from . import keys
from .models import ApiKey


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Usage per key; an admin creates a key for a user (shown once, in the page's message)."""

    list_display = ("prefix", "name", "user", "created_at", "last_used_at", "requests", "prompt_tokens",
                    "completion_tokens", "rate_limit", "revoked_at")  # fmt: skip
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "name", "user__username")
    list_select_related = ("user",)
    actions = ("revoke",)
    fields = ("user", "name", "rate_limit")
    autocomplete_fields = ()

    def get_readonly_fields(self, request, obj=None):
        return ("user",) if obj is not None else ()

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        row, key = keys.create(obj.user, obj.name, enforce_limit=False)
        if obj.rate_limit is not None:
            row.rate_limit = obj.rate_limit
            row.save(update_fields=["rate_limit"])
        obj.pk = row.pk
        self.message_user(request, f"The new key (copy it now, it is not shown again): {key}", messages.WARNING)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # revoke instead: usage stays

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"{count} key(s) revoked.", messages.SUCCESS)
