"""The user's API keys page: create (the key is shown once; optional expiry, scopes, read-only)
and revoke."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from . import keys
from .models import SCOPES, ApiKey

EXPIRY_DAYS = {"": "never", "7": "in 7 days", "30": "in 30 days", "90": "in 90 days", "365": "in a year"}


@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request):
    new_key = None
    if request.method == "POST":
        try:
            _, new_key = keys.create(request.user, request.POST.get("name", ""), **_settings(request.POST))
        except keys.KeyLimitError as exc:
            messages.error(request, str(exc))
    rows = ApiKey.objects.filter(user=request.user)
    context = {"keys": rows, "new_key": new_key, "scopes": SCOPES, "expiry_choices": EXPIRY_DAYS}
    return render(request, "api/keys.html", context)


def _settings(data) -> dict:
    """A new key's expiry, scopes and read-only flag from the form (every scope ticked, or none:
    everything)."""
    days = data.get("expires_in", "")
    if days not in EXPIRY_DAYS:
        raise keys.KeyLimitError(f"Choose when the key expires: {', '.join(EXPIRY_DAYS.values())}.")
    scopes = data.getlist("scopes")
    return {
        "expires_at": timezone.now() + timedelta(days=int(days)) if days else None,
        "scopes": [] if set(scopes) == set(SCOPES) else scopes,
        "read_only": data.get("read_only") == "on",
    }


@login_required
@require_POST
def revoke_key(request, key_id: int):
    row = get_object_or_404(ApiKey, pk=key_id, user=request.user)  # another user's key: 404
    keys.revoke(row)
    messages.success(request, f"The key {row.prefix}… is revoked; programs using it get 401 from now on.")
    return redirect("api_keys")
