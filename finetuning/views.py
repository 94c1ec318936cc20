"""The fine-tuning studio's pages: datasets (upload, check, keep), jobs (start, watch, cancel).
Thin: the work is in datastore.py, jobs.py and progress.py. Every lookup is by owner (staff
see all); another user's ids answer 404."""

from __future__ import annotations

from functools import wraps
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chatsite.ids import parse_id
from chatsite.streaming import async_chunks, file_blocks
from inference.models import LanguageModel

from . import datastore, downloads, hyperparameters, jobs, progress
from .datasets import DatasetError
from .models import Dataset, Job
from .uploads import limited_upload


def may_finetune(user) -> bool:
    return user.is_authenticated and (user.is_staff or user.has_perm("finetuning.finetune"))


def finetuner_required(view):
    """Logged in, with the "Can upload datasets and run fine-tuning jobs" permission (or staff)."""

    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs):
        if not may_finetune(request.user):
            return render(request, "finetuning/not_allowed.html", status=403)
        return view(request, *args, **kwargs)

    return wrapped


def _base_models(user):
    return LanguageModel.objects.usable_by(user)


@finetuner_required
@require_GET
def studio(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "finetuning/studio.html",
        {
            "datasets": Dataset.objects.owned_by(request.user)
            .filter(purpose=Dataset.Purpose.FINE_TUNE)
            .select_related("owner")[:200],
            "jobs": Job.objects.owned_by(request.user).select_related("base_model", "dataset", "result_model")[:200],
        },
    )


@limited_upload
@finetuner_required
@require_http_methods(["GET", "POST"])
def upload(request: HttpRequest) -> HttpResponse:
    models = list(_base_models(request.user))
    context = {"models": models, "max_mb": settings.FINETUNE_MAX_UPLOAD_BYTES / 1e6, "analysis": None}
    if request.method == "GET":
        return render(request, "finetuning/upload.html", context)
    uploaded = request.FILES.get("file")  # reads the upload (to disk, within the limit)
    if getattr(request, "upload_too_large", False):
        context["error"] = (
            f"The file is larger than the {_megabytes(settings.FINETUNE_MAX_UPLOAD_BYTES)} limit. "
            "Split it or remove rows, then upload again."
        )
        return render(request, "finetuning/upload.html", context, status=413)
    base = next((m for m in models if m.slug == request.POST.get("base_model")), None) or LanguageModel.default()
    context["selected_model"] = base.slug if base else ""
    context["name"] = request.POST.get("name", "")[:200]
    if uploaded is None:
        context["error"] = "Choose a .jsonl, .json or .csv file to upload."
        return render(request, "finetuning/upload.html", context, status=400)
    if base is None:
        context["error"] = "No model is enabled to measure the rows with; ask an administrator."
        return render(request, "finetuning/upload.html", context, status=400)
    try:
        analysis = datastore.analyze(_local_path(uploaded), uploaded.name, base, request.user.pk)
    except DatasetError as exc:
        context["error"] = str(exc)
        return render(request, "finetuning/upload.html", context, status=429 if exc.busy else 400)
    if analysis.error_count == 0:
        dataset = datastore.save(request.user, analysis.token, context["name"])
        messages.success(request, f"Saved {dataset.rows} rows as {dataset.name!r}.")
        return redirect("finetuning:dataset", dataset.pk)
    context["analysis"] = analysis
    return render(request, "finetuning/upload.html", context, status=422)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} KB"


def _local_path(uploaded):
    """The upload's file on disk (the upload handlers never keep it in memory)."""
    from pathlib import Path

    return Path(uploaded.temporary_file_path())


EXAMPLE = Path(__file__).resolve().parent / "data" / "example_lighthouse.jsonl"


@finetuner_required
@require_GET
def example_dataset(request: HttpRequest) -> HttpResponse:
    """The example dataset that ships with the project, as a download."""
    response = HttpResponse(EXAMPLE.read_bytes(), content_type="application/jsonl")
    response["Content-Disposition"] = content_disposition_header(True, EXAMPLE.name)
    return response


@finetuner_required
@require_POST
def use_example(request: HttpRequest) -> HttpResponse:
    """One click: the example dataset checked and saved as the person's own, then its page."""
    base = LanguageModel.default()
    if base is None:
        messages.error(request, "No model is enabled to measure the rows with; ask an administrator.")
        return redirect("finetuning:studio")
    try:
        analysis = datastore.analyze(EXAMPLE, EXAMPLE.name, base, request.user.pk)
        dataset = datastore.save(request.user, analysis.token, "Lighthouse example")
    except DatasetError as exc:
        messages.error(request, str(exc))
        return redirect("finetuning:studio")
    messages.success(request, f"Saved the example's {dataset.rows} rows as {dataset.name!r}: start a job with it.")
    return redirect("finetuning:dataset", dataset.pk)


@finetuner_required
@require_POST
def keep_good_rows(request: HttpRequest) -> HttpResponse:
    token = request.POST.get("token", "")
    if request.POST.get("action") == "discard":
        datastore.discard(request.user.pk, token)
        messages.info(request, "Upload discarded; nothing was saved.")
        return redirect("finetuning:upload")
    try:
        dataset = datastore.save(request.user, token, request.POST.get("name", ""))
    except DatasetError as exc:
        messages.error(request, str(exc))
        return redirect("finetuning:upload")
    messages.success(
        request, f"Saved {dataset.rows} rows as {dataset.name!r}; {dataset.dropped_rows} bad rows left out."
    )
    return redirect("finetuning:dataset", dataset.pk)


@finetuner_required
@require_http_methods(["GET", "POST"])
def dataset_detail(request: HttpRequest, dataset_id: int) -> HttpResponse:
    dataset = get_object_or_404(
        Dataset.objects.owned_by(request.user).filter(purpose=Dataset.Purpose.FINE_TUNE), pk=dataset_id
    )
    if request.method == "POST":  # delete
        try:
            datastore.delete(dataset)
        except DatasetError as exc:
            messages.error(request, str(exc))
            return redirect("finetuning:dataset", dataset.pk)
        messages.success(request, f"Deleted the dataset {dataset.name!r}.")
        return redirect("finetuning:studio")
    return render(
        request,
        "finetuning/dataset.html",
        {"dataset": dataset, "preview": datastore.preview(dataset), "jobs": dataset.jobs.all()[:50]},
    )


@finetuner_required
@require_http_methods(["GET", "POST"])
def new_job(request: HttpRequest) -> HttpResponse:
    datasets = list(Dataset.objects.filter(owner=request.user, purpose=Dataset.Purpose.FINE_TUNE)[:200])
    models = list(_base_models(request.user))
    form = {"method": "lora", "dataset": request.GET.get("dataset", ""), "base_model": ""}
    errors = {}
    if request.method == "POST":
        form = {
            k: request.POST.get(k, "").strip()
            for k in ("name", "dataset", "base_model", "method", *hyperparameters.RULES)
        }
        dataset = next((d for d in datasets if str(d.pk) == form["dataset"]), None)
        base = next((m for m in models if m.slug == form["base_model"]), None)
        if dataset is None:
            errors["dataset"] = "Pick one of your datasets."
        if base is None:
            errors["base_model"] = "Pick a model."
        if not errors:
            asked = {k: form[k] for k in hyperparameters.RULES}
            try:
                job = jobs.create(
                    request.user,
                    name=form["name"],
                    base_model=base,
                    dataset=dataset,
                    method=form["method"],
                    asked=asked,
                )
            except jobs.JobError as exc:
                errors = exc.errors
            else:
                return redirect("finetuning:job", job.pk)
    fields = [
        {
            "name": name,
            "rule": rule,
            "value": form.get(name, ""),
            "default": hyperparameters.default(name, "lora"),
            "full_default": hyperparameters.default(name, "full"),
            "error": errors.get(name, ""),
        }
        for name, rule in hyperparameters.RULES.items()
    ]
    default_model = LanguageModel.default()
    return render(
        request,
        "finetuning/new_job.html",
        {
            "datasets": datasets,
            "models": models,
            "form": form,
            "errors": errors,
            "fields": fields,
            "default_model": form.get("base_model") or (default_model.slug if default_model else ""),
            "methods": Job.Method.choices,
        },
        status=400 if errors else 200,
    )


def _owned_job(request: HttpRequest, job_id: int) -> Job:
    job = (
        Job.objects.owned_by(request.user)
        .select_related("base_model", "dataset", "result_model")
        .filter(pk=job_id)
        .first()
    )
    if job is None:
        raise Http404("No such job.")
    return job


@finetuner_required
@require_GET
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    job = _owned_job(request, job_id)
    return render(
        request,
        "finetuning/job.html",
        {
            "job": job,
            "snapshot": progress.snapshot(job),
            "comparison": job.evaluation.get("comparison"),
            "files": downloads.files_of(job.result_model) if job.result_model else [],
        },
    )


@finetuner_required
@require_GET
def job_file(request: HttpRequest, job_id: int, name: str) -> StreamingHttpResponse:
    """One file of the job's tuned model, streamed (finetuning/downloads.py)."""
    job = _owned_job(request, job_id)
    path = downloads.file_of(job.result_model, name) if job.result_model else None
    if path is None:
        raise Http404("No such file of this job's model.")
    response = StreamingHttpResponse(async_chunks(file_blocks(path)), content_type="application/octet-stream")
    response["Content-Disposition"] = content_disposition_header(True, f"{job.result_model.slug}-{path.name}")
    response["Content-Length"] = str(path.stat().st_size)
    return response


@finetuner_required
@require_GET
def job_progress(request: HttpRequest, job_id: int) -> JsonResponse:
    job = _owned_job(request, job_id)
    return JsonResponse(
        progress.snapshot(
            job, after_metric=_int(request.GET.get("after_metric")), after_event=_int(request.GET.get("after_event"))
        )
    )


def _int(value) -> int:
    return parse_id(value) or 0


@finetuner_required
@require_POST
def cancel_job(request: HttpRequest, job_id: int) -> HttpResponse:
    job = _owned_job(request, job_id)
    jobs.request_cancel(job)
    messages.info(request, "Cancel requested." if not job.is_finished else "The job had already finished.")
    return redirect("finetuning:job", job.pk)


@login_required
@require_GET
def compare(request: HttpRequest) -> HttpResponse:
    """One prompt to two models, both replies streamed side by side (through the chat socket:
    each side is a new conversation of the user's, source "compare": kept out of the chat list and
    listed here, the latest first)."""
    from chat.models import Conversation, Message

    models = list(_base_models(request.user))
    slugs = [m.slug for m in models]
    default = LanguageModel.default()
    first = request.GET.get("a") if request.GET.get("a") in slugs else (default.slug if default else "")
    second = request.GET.get("b") if request.GET.get("b") in slugs else first
    return render(
        request,
        "finetuning/compare.html",
        {
            "models": models,
            "first": first,
            "second": second,
            "max_chars": settings.CHAT_MAX_MESSAGE_CHARS,
            "history": Message.objects.filter(
                role=Message.Role.ASSISTANT,
                conversation__user=request.user,
                conversation__source=Conversation.Source.COMPARE,
                conversation__deleted_at__isnull=True,
            )
            .select_related("model", "parent")
            .order_by("-pk")[:20],
        },
    )
