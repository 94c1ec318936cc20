import logging

from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils import timezone

from . import keys
from .models import SCOPES, ApiKey

logger = logging.getLogger(__name__)


class ApiKeyForm(forms.ModelForm):
    """Who may get a key from whom: staff make keys for themselves; only a superuser makes one for
    another user, and never for another superuser (a key acts as its user everywhere in the API)."""

    request = None  # set per request by ApiKeyAdmin.get_form

    scopes = forms.MultipleChoiceField(
        choices=list(SCOPES.items()), required=False, widget=forms.CheckboxSelectMultiple,
        help_text="What the key may reach; none ticked: everything.",
    )  # fmt: skip

    class Meta:
        model = ApiKey
        fields = ("user", "name", "rate_limit", "expires_at", "scopes", "read_only")

    def clean_user(self):
        target = self.cleaned_data["user"]
        actor = self.request.user
        if target.pk != actor.pk:
            if not actor.is_superuser:
                raise forms.ValidationError("Only a superuser may create a key for another user; you may create one "
                                            "for yourself.")  # fmt: skip
            if target.is_superuser:
                raise forms.ValidationError("A key for another superuser cannot be made here: a superuser makes "
                                            "their own.")  # fmt: skip
        return target

    def clean_expires_at(self):
        value = self.cleaned_data.get("expires_at")
        if value is not None and value <= timezone.now() and self.instance.pk is None:
            raise forms.ValidationError("The expiry must be in the future (empty: never).")
        return value


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Usage per key; an admin creates a key (for whom: ApiKeyForm), shown once on the page that
    answers the form: never in a message, which travels in a cookie."""

    form = ApiKeyForm
    list_display = ("prefix", "name", "user", "scope_labels", "read_only", "created_at", "expires_at", "last_used_at",
                    "requests", "prompt_tokens", "completion_tokens", "rate_limit", "revoked_at")  # fmt: skip
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "name", "user__username")
    list_select_related = ("user",)
    actions = ("revoke",)
    fields = ("user", "name", "rate_limit", "expires_at", "scopes", "read_only")
    autocomplete_fields = ()

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        return type(form.__name__, (form,), {"request": request})

    def get_changeform_initial_data(self, request):
        return {"user": request.user.pk, **super().get_changeform_initial_data(request)}

    def get_readonly_fields(self, request, obj=None):
        return ("user",) if obj is not None else ()

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        row, key = keys.create(obj.user, obj.name, enforce_limit=False, expires_at=obj.expires_at, scopes=obj.scopes,
                               read_only=obj.read_only, rate_limit=obj.rate_limit)  # fmt: skip
        obj.pk = row.pk
        obj.prefix = row.prefix
        request.new_api_key = key  # shown by response_add, once
        logger.warning("API key %s created by %s for %s", row.prefix, request.user.username, obj.user.username)

    def construct_change_message(self, request, form, formsets, add=False):
        if add:  # the admin's history says who made which key for whom
            return f"Created the key {form.instance.prefix}… for {form.instance.user.username}."
        return super().construct_change_message(request, form, formsets, add)

    def response_add(self, request, obj, post_url_continue=None):
        key = getattr(request, "new_api_key", None)
        if key is None:
            return super().response_add(request, obj, post_url_continue)
        context = {**self.admin_site.each_context(request), "title": "New API key", "key": key, "row": obj,
                   "opts": self.model._meta}  # fmt: skip
        response = TemplateResponse(request, "admin/api/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # revoke instead: usage stays

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"{count} key(s) revoked.", messages.SUCCESS)
