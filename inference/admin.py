from django import forms
from django.contrib import admin

from .loading import ModelLoadError, check_location
from .models import LanguageModel
from .sampling import SAMPLING_FIELDS


class LanguageModelForm(forms.ModelForm):
    class Meta:
        model = LanguageModel
        fields = "__all__"  # noqa: DJ007 - the admin's fieldsets choose what is shown

    def clean(self):
        data = super().clean()
        if data.get("source") == LanguageModel.Source.LOCAL and data.get("location"):
            try:
                check_location(data["location"])
            except ModelLoadError as exc:
                self.add_error("location", str(exc))
        return data


class SourceFilter(admin.SimpleListFilter):
    """The source filter, with the short names the list shows (the long labels wrap)."""

    title = "source"
    parameter_name = "source"

    def lookups(self, request, model_admin):
        return [(value, value) for value in LanguageModel.Source.values]

    def queryset(self, request, queryset):
        return queryset.filter(source=self.value()) if self.value() in LanguageModel.Source.values else queryset


@admin.register(LanguageModel)
class LanguageModelAdmin(admin.ModelAdmin):
    form = LanguageModelForm
    # Few, short columns: the list fits a 1280 px screen next to the admin's sidebar and filters
    # (the slug, the backend and the choices' long labels are on the form; search finds slugs).
    list_display = ("name", "short_source", "owner", "published", "enabled", "is_default")
    list_filter = ("enabled", SourceFilter, "published")
    list_editable = ("enabled",)
    search_fields = ("name", "slug", "location")
    prepopulated_fields = {"slug": ("name",)}
    actions = ["make_default", "disable", "publish"]
    readonly_fields = ("base", "lineage")
    fieldsets = (
        (None, {"fields": ("name", "slug", "enabled", "is_default")}),
        ("Who may use it", {"fields": ("owner", "published", "base", "lineage")}),
        ("Source", {"fields": ("source", "location", "backend", "gguf_file", "adapter", "device", "dtype")}),
        (
            "Generation",
            {
                "fields": (
                    "system_prompt",
                    *SAMPLING_FIELDS,
                    "max_tokens",
                    "max_new_tokens_cap",
                    "max_input_tokens",
                )
            },
        ),
    )

    @admin.display(description="source", ordering="source")
    def short_source(self, obj: LanguageModel) -> str:
        return obj.source  # "packaged", "local" or "hub"

    @admin.action(description="Make the selected model the default")
    def make_default(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one model to make it the default.", level="error")
            return
        model = queryset.get()
        if not model.is_shared:
            self.message_user(request, "Publish this user's model before making it the default.", level="error")
            return
        if model.lineage.get("forgot_too_much") and not request.POST.get("confirm"):
            self.message_user(
                request,
                f"{model} lost more of the general-knowledge probe than FINETUNE_FORGET_LIMIT allows "
                "(see its job page); it was not made the default. Edit it and tick 'Is default' to insist.",
                level="error",
            )
            return
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

    @admin.action(description="Publish the selected models to everyone")
    def publish(self, request, queryset):
        count = queryset.exclude(owner__isnull=True).update(published=True)
        self.message_user(request, f"Published {count} model(s); every user can now chat with them.")
