"""The studio's Evaluations pages: the list of one's evals and the "New evaluation" form, an eval
with its runs (live progress, cancel, run again, delete), one run's items (filter, CSV and JSONL
exports), and two runs side by side (word diff, win rates per grader, the person's votes).

Thin: forms.py reads the forms, actions.py does (through the API's own checks and functions),
reports.py reads. Every lookup is by owner: another user's evals and runs answer 404, like
unknown ones (staff see every eval in the admin, not here)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, OuterRef, Subquery
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chatsite.ids import parse_id

from . import actions, job_evals, presets, reports, runs
from .errors import EvalError
from .forms import NewEvalForm, RunAgainForm
from .models import Eval, Run

ITEMS_PER_PAGE = 100


def _owned_eval(request: HttpRequest, eval_id: int) -> Eval:
    return get_object_or_404(Eval, owner=request.user, pk=eval_id)


def _owned_run(request: HttpRequest, run_id: int) -> Run:
    return get_object_or_404(
        Run.objects.select_related("eval", "model"), owner=request.user, eval__owner=request.user, pk=run_id
    )


def _int(value, default: int = 0) -> int:
    number = parse_id(value)
    return default if number is None else number


# --- the list and the new evaluation ---------------------------------------------------------------
@login_required
@require_http_methods(["GET", "POST"])
def index(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = NewEvalForm(request.POST, request.FILES, user=request.user)
        if form.is_valid() and (evaluation := form.save()) is not None:
            count = len(form.models())
            messages.success(request, f"Made the evaluation {evaluation.name!r} and queued {count} run(s).")
            return redirect("evals:eval", evaluation.pk)
    else:
        form = NewEvalForm(user=request.user)
    latest = Run.objects.filter(eval=OuterRef("pk")).order_by("-pk").values("pk")[:1]
    evals = list(
        Eval.objects.filter(owner=request.user).annotate(run_count=Count("runs"), last_run_id=Subquery(latest))[:200]
    )
    ids = [e.last_run_id for e in evals if e.last_run_id]
    last_runs = Run.objects.in_bulk(ids)
    results = reports.last_results(ids)
    rows = [{"eval": e, "last_run": last_runs.get(e.last_run_id), "results": results.get(e.last_run_id)} for e in evals]
    context = {
        "rows": rows,
        "form": form,
        "grader_boxes": list(zip(form["graders"], presets.GRADERS.values(), strict=True)),
        "data_presets": presets.DATA,
        "max_items": settings.EVALS_MAX_ITEMS,
        "has_models": bool(form.fields["model_a"].choices),
    }
    return render(request, "evals/index.html", context, status=400 if form.is_bound else 200)


# --- one eval --------------------------------------------------------------------------------------
def default_pair(rows: list[Run]) -> tuple[Run, Run] | None:
    """The runs the compare link starts with: the latest two made together (compare_with),
    else the two latest completed ones, else the two latest; the older one is A."""
    by_id = {str(run.pk): run for run in rows}
    for run in rows:  # newest first
        other = by_id.get(str(run.metadata.get("compare_with", "")))
        if other is not None and other.pk != run.pk:
            return tuple(sorted((run, other), key=lambda r: r.pk))
    completed = [run for run in rows if run.status == Run.Status.COMPLETED]
    chosen = completed[:2] if len(completed) >= 2 else rows[:2]
    return tuple(sorted(chosen, key=lambda r: r.pk)) if len(chosen) == 2 else None


@login_required
@require_GET
def eval_detail(request: HttpRequest, eval_id: int) -> HttpResponse:
    evaluation = _owned_eval(request, eval_id)
    rows = list(evaluation.runs.select_related("eval", "model"))
    summaries = [(run, reports.summary(run)) for run in rows]
    # One group of bars per grader, one bar per run (a summary lists the graders in the eval's order).
    chart = [
        {"name": grader["name"], "bars": [(run, summary["criteria"][i]) for run, summary in summaries]}
        for i, grader in enumerate(evaluation.testing_criteria)
    ]
    context = {
        "evaluation": evaluation,
        "summaries": summaries,
        "chart": chart,
        "pair": default_pair(rows),
        "run_again": RunAgainForm(user=request.user, evaluation=evaluation),
    }
    return render(request, "evals/eval.html", context)


@login_required
@require_POST
def delete_eval(request: HttpRequest, eval_id: int) -> HttpResponse:
    evaluation = _owned_eval(request, eval_id)
    name = evaluation.name
    actions.delete_eval(evaluation)
    messages.success(request, f"Deleted the evaluation {name!r} and its runs.")
    return redirect("evals:index")


@login_required
@require_POST
def run_again(request: HttpRequest, eval_id: int) -> HttpResponse:
    evaluation = _owned_eval(request, eval_id)
    form = RunAgainForm(request.POST, user=request.user, evaluation=evaluation)
    if form.is_valid() and (run := form.save()) is not None:
        messages.success(request, f"Queued a run on {run.model_name}.")
    else:
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, error)
    return redirect("evals:eval", evaluation.pk)


@login_required
@require_GET
def compare_pick(request: HttpRequest, eval_id: int) -> HttpResponse:
    """The compare form's answer (two runs of this eval, ?a=&b=) goes to their compare page."""
    evaluation = _owned_eval(request, eval_id)
    ids = set(evaluation.runs.values_list("pk", flat=True))
    a, b = _int(request.GET.get("a")), _int(request.GET.get("b"))
    if a not in ids or b not in ids:
        raise Http404("No such run.")
    if a == b:
        messages.error(request, "Pick two different runs to compare.")
        return redirect("evals:eval", evaluation.pk)
    return redirect("evals:compare", a, b)


@login_required
@require_GET
def for_job(request: HttpRequest, job_id: int) -> HttpResponse:
    """A fine-tuning job's held-out evaluation (evals/job_evals.py): the eval's page."""
    evaluation = job_evals.for_job(job_id)
    if evaluation is None or evaluation.owner_id != request.user.pk:
        raise Http404("This job has no evaluation (it held no rows out, or it has not succeeded yet).")
    return redirect("evals:eval", evaluation.pk)


# --- one run ---------------------------------------------------------------------------------------
@login_required
@require_GET
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _owned_run(request, run_id)
    status = request.GET.get("status", "")
    status = status if status in reports.STATUSES else ""
    items = run.items.filter(status=status) if status else run.items.all()
    page = Paginator(items, ITEMS_PER_PAGE).get_page(request.GET.get("page"))
    criteria = run.eval.testing_criteria
    context = {
        "run": run,
        "evaluation": run.eval,
        "summary": reports.summary(run),
        "status_counts": reports.status_counts(run),
        "status": status,
        "statuses": reports.STATUSES,
        "page": page,
        "rows": [reports.item_row(item, criteria) for item in page],
        "criteria": criteria,
        "template": (run.data_source.get("input_messages") or {}).get("template") or [],
    }
    return render(request, "evals/run.html", context)


@login_required
@require_GET
def run_status(request: HttpRequest, run_id: int) -> JsonResponse:
    return JsonResponse(reports.summary(_owned_run(request, run_id)))


@login_required
@require_POST
def cancel_run(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _owned_run(request, run_id)
    if run.is_finished:
        messages.info(request, f"The run had already ended ({run.get_status_display().lower()}).")
    else:
        run = runs.request_cancel(run)
        messages.info(request, "Canceled." if run.is_finished else "Cancel requested: it stops within a second.")
    if request.POST.get("back") == "run":
        return redirect("evals:run", run.pk)
    return redirect("evals:eval", run.eval_id)


def _download(content: str, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@login_required
@require_GET
def export_csv(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _owned_run(request, run_id)
    return _download(reports.export_csv(run), "text/csv; charset=utf-8", f"eval-{run.eval_id}-run-{run.pk}.csv")


@login_required
@require_GET
def export_jsonl(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _owned_run(request, run_id)
    return _download(
        reports.export_jsonl(run), "application/x-ndjson; charset=utf-8", f"eval-{run.eval_id}-run-{run.pk}.jsonl"
    )


# --- two runs --------------------------------------------------------------------------------------
def _owned_pair(request: HttpRequest, run_a: int, run_b: int) -> tuple[Run, Run]:
    first, second = _owned_run(request, run_a), _owned_run(request, run_b)
    if first.eval_id != second.eval_id or first.pk == second.pk:
        raise Http404("Compare two runs of the same evaluation.")
    return first, second


@login_required
@require_GET
def compare(request: HttpRequest, run_a: int, run_b: int) -> HttpResponse:
    first, second = _owned_pair(request, run_a, run_b)
    comparison = reports.compare(first, second, actions.votes(request.user, first, second))
    page = Paginator(comparison.rows, ITEMS_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "evaluation": first.eval,
        "run_a": first,
        "run_b": second,
        "comparison": comparison,
        "page": page,
        "choices": (("a", "A"), ("b", "B"), ("tie", "Tie")),
    }
    return render(request, "evals/compare.html", context)


@login_required
@require_POST
def vote(request: HttpRequest, run_a: int, run_b: int) -> HttpResponse:
    first, second = _owned_pair(request, run_a, run_b)
    index = _int(request.POST.get("index"), -1)
    try:
        actions.vote(request.user, first, second, index, request.POST.get("choice", ""))
    except EvalError as exc:
        messages.error(request, exc.message)
    url = reverse("evals:compare", args=[first.pk, second.pk])
    page = _int(request.POST.get("page"), 1)
    return redirect(f"{url}?page={page}#item-{index}" if page > 1 else f"{url}#item-{index}")
