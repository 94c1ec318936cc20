"""Evals in the admin: read what each run answered and how it was graded (runs are made and
cancelled through /v1/evals)."""

from django.contrib import admin

from . import runs
from .models import Eval, OutputItem, Run


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Eval)
class EvalAdmin(ReadOnly):
    list_display = ("name", "owner", "created_at")
    search_fields = ("name", "owner__username")
    readonly_fields = ("owner", "name", "metadata", "item_schema", "include_sample_schema", "testing_criteria")


class OutputItemInline(admin.TabularInline):
    model = OutputItem
    fields = ("index", "status", "output_text", "results", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0
    show_change_link = False


@admin.register(Run)
class RunAdmin(ReadOnly):
    list_display = ("name", "eval", "owner", "model_name", "status", "summary", "created_at")
    list_filter = ("status",)
    search_fields = ("name", "eval__name", "owner__username", "model_name")
    readonly_fields = ("eval", "owner", "name", "model_name", "status", "summary", "sampling", "error_message",
                       "created_at", "started_at", "finished_at")  # fmt: skip
    exclude = ("data_source", "metadata", "model", "worker", "heartbeat_at", "cancel_requested", "error_code")
    inlines = [OutputItemInline]

    @admin.display(description="results")
    def summary(self, run: Run) -> str:
        counts = runs.counts(run)
        result, progress = counts["result_counts"], counts["progress"]
        criteria = ", ".join(f"{c['testing_criteria']}: {c['passed']}/{c['passed'] + c['failed']}"
                             for c in counts["per_testing_criteria_results"])  # fmt: skip
        return (
            f"{result['passed']} passed, {result['failed']} failed, {result['errored']} errored; "
            f"{progress['graded']} of {progress['items']} graded" + (f" ({criteria})" if criteria else "")
        )
