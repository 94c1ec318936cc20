"""The user's API keys page: create (the key is shown once) and revoke."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from . import keys
from .models import ApiKey


@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request):
    new_key = None
    if request.method == "POST":
        try:
            _, new_key = keys.create(request.user, request.POST.get("name", ""))
        except keys.KeyLimitError as exc:
            messages.error(request, str(exc))
    rows = ApiKey.objects.filter(user=request.user)
    return render(request, "api/keys.html", {"keys": rows, "new_key": new_key})


@login_required
@require_POST
def revoke_key(request, key_id: int):
    row = get_object_or_404(ApiKey, pk=key_id, user=request.user)  # another user's key: 404
    keys.revoke(row)
    messages.success(request, f"The key {row.prefix}… is revoked; programs using it get 401 from now on.")
    return redirect("api_keys")
