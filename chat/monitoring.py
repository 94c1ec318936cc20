"""Views for people who run the service: Prometheus metrics and the admin's metrics page."""

import hmac

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from inference import metrics


def _token_ok(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


@require_GET
def prometheus(request: HttpRequest) -> HttpResponse:
    if not (_token_ok(request) or (request.user.is_authenticated and request.user.is_staff)):
        return HttpResponse(
            "Metrics need a staff login or 'Authorization: Bearer <METRICS_TOKEN>'.\n",
            status=401,
            content_type="text/plain",
        )
    return HttpResponse(metrics.prometheus_text(metrics.snapshot()), content_type="text/plain; version=0.0.4")


@staff_member_required
@require_GET
def admin_metrics(request: HttpRequest) -> HttpResponse:
    snap = metrics.snapshot()
    rows = [
        {
            "model": s.model,
            "worker": s.worker,
            "ttft": [s.ttft[q] * 1000 if s.ttft[q] is not None else None for q in metrics.QUANTILES],
            "itl": [s.itl[q] * 1000 if s.itl[q] is not None else None for q in metrics.QUANTILES],
            "tokens_per_s": s.tokens_per_s,
            "tokens": int(s.totals.get("tokens", 0)),
            "replies": {k.removeprefix("replies_"): int(v) for k, v in s.totals.items() if k.startswith("replies_")},
            "recent": s.recent,
        }
        for s in snap.series
    ]
    context = {
        **admin.site.each_context(request),
        "title": "Inference metrics",
        "rows": rows,
        "queue_length": snap.queue_length,
        "background_queue_length": snap.background_queue_length,
        "workers": sorted(snap.workers.items()),
    }
    return render(request, "admin/chat/metrics.html", context)
