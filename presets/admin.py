from django.contrib import admin

from .models import Preset, PromptTemplate, Quota


@admin.register(Preset)
class PresetAdmin(admin.ModelAdmin):
    list_display = ("name", "description", "temperature", "max_tokens", "enabled")
    list_filter = ("enabled",)
    search_fields = ("name", "description", "system_prompt")


@admin.register(PromptTemplate)
class PromptTemplateAdmin(admin.ModelAdmin):
    list_display = ("title", "name", "version", "enabled", "updated_at")
    list_filter = ("enabled",)
    search_fields = ("name", "title", "text")
    readonly_fields = ("version", "updated_at")


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = ("__str__", "messages_per_window", "daily_tokens")
    list_select_related = ("user", "group")
    autocomplete_fields = ("user",)
    search_fields = ("user__username", "group__name")
