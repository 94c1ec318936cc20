"""Admin: datasets (read-only rows, files are managed by the studio) and jobs with their logs."""

from django.contrib import admin

from . import jobs
from .models import Dataset, Job, JobEvent


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "format", "rows", "dropped_rows", "created_at")
    list_filter = ("format",)
    search_fields = ("name", "original_filename", "owner__username", "sha256")
    readonly_fields = [f.name for f in Dataset._meta.fields]

    def has_add_permission(self, request):
        return False  # uploads go through the studio's checks: /finetune/datasets/upload/


class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    can_delete = False
    readonly_fields = ("created_at", "level", "message")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "state", "base_model", "dataset", "step", "total_steps", "created_at")
    list_filter = ("state", "method")
    search_fields = ("name", "owner__username")
    readonly_fields = [f.name for f in Job._meta.fields if f.name != "name"]
    inlines = [JobEventInline]
    actions = ["cancel"]

    def has_add_permission(self, request):
        return False  # jobs start from the studio's page, which checks their settings

    @admin.action(description="Cancel the selected jobs")
    def cancel(self, request, queryset):
        for job in queryset:
            jobs.request_cancel(job)
        self.message_user(request, f"Cancel requested for {queryset.count()} job(s).")
