"""The admin's usage dashboard: the page, and the JSON its charts are drawn from (staff only)."""

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from chatsite.ids import parse_id

from . import report, rollup

DEFAULT_PERIOD = 30


def _period(request: HttpRequest) -> int | None:
    value = request.GET.get("days", str(DEFAULT_PERIOD))
    days = parse_id(value)
    return days if days in report.PERIODS else None


@staff_member_required
@require_GET
def page(request: HttpRequest) -> HttpResponse:
    days = _period(request) or DEFAULT_PERIOD
    context = {
        **admin.site.each_context(request),
        "title": "Usage dashboard",
        "periods": report.PERIODS,
        "days": days,
        "config": {"data_url": request.path + "data/", "days": days},
    }
    return render(request, "admin/dashboard.html", context)


@require_GET
def data(request: HttpRequest) -> JsonResponse:
    if not (request.user.is_active and request.user.is_staff):
        return JsonResponse({"error": "The dashboard is for staff."}, status=403)
    days = _period(request)
    if days is None:
        return JsonResponse({"error": f"days is one of {', '.join(map(str, report.PERIODS))}"}, status=400)
    rollup.refresh()
    return JsonResponse(report.build(days))
