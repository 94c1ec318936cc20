"""/v1/files: fine-tuning datasets and eval items as OpenAI's file objects (`file-<dataset id>`).

A `fine-tune` upload is checked row by row exactly as on the studio's upload page
(finetuning/datastore.py, within the same size limit: finetuning/uploads.py); an `evals` upload
line by line as an eval's items (evals/files.py). A file with bad rows is refused whole, with the
first bad lines and why (the page, not the API, can keep just the good rows). What is stored is
the normalized rows: `/content` answers those. Fine-tuning files are for people who may
fine-tune; evals files for everyone with a key. Another user's ids answer 404 like unknown ones."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import JsonResponse, StreamingHttpResponse
from django.utils.http import content_disposition_header

from chatsite.streaming import async_chunks, file_blocks
from evals import files as eval_files
from evals.errors import EvalError
from finetuning import datastore
from finetuning.datasets import DatasetError
from finetuning.models import Dataset, Job
from finetuning.uploads import limited_upload
from finetuning.views import may_finetune
from inference.models import LanguageModel

from . import pagination
from .auth import api_view
from .errors import ApiError, not_found

PREFIX = "file-"
PURPOSE = Dataset.Purpose.FINE_TUNE.value
PURPOSES = tuple(Dataset.Purpose.values)
SHOWN_ERRORS = 5


# --- check -------------------------------------------------------------------------------------
def check_may_finetune(user) -> None:
    if not may_finetune(user):
        raise ApiError(
            403,
            "This key's user may not use files or fine-tuning: an administrator must grant the permission "
            "'Can upload datasets and run fine-tuning jobs'.",
            code="permission_denied",
        )


def owned_file(user, file_id, param: str | None = None, *, purpose: str | None = PURPOSE) -> Dataset:
    """The user's file of that id (of `purpose`, when given); 404 otherwise. A fine-tuning file
    needs the fine-tuning permission."""
    number = pagination.id_number(file_id, PREFIX)
    rows = visible_files(user)
    dataset = rows.filter(pk=number).first() if number is not None else None
    if dataset is None:
        raise not_found("file", file_id, param=param)
    if purpose is not None and dataset.purpose != purpose:
        raise ApiError(400, f"{file_id} is a file of purpose {dataset.purpose!r}; this needs one of purpose "
                       f"{purpose!r}.", param=param, code="invalid_file")  # fmt: skip
    return dataset


def visible_files(user):
    """The files the user may use: their evals files, and their fine-tuning files if they may fine-tune."""
    rows = Dataset.objects.owned_by(user)
    return rows if may_finetune(user) else rows.filter(purpose=Dataset.Purpose.EVALS)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} KB"


def _bad_rows(analysis: datastore.Analysis) -> str:
    shown = "; ".join(f"{e['where']}: {e['reason']}" for e in analysis.errors[:SHOWN_ERRORS])
    more = f" (and {analysis.error_count - SHOWN_ERRORS} more)" if analysis.error_count > SHOWN_ERRORS else ""
    return (
        f"{analysis.error_count} of {analysis.total_rows} rows cannot be used. {shown}{more}. "
        "Fix or remove them and upload the file again."
    )


# --- do ----------------------------------------------------------------------------------------
def store(user, path: Path, filename: str) -> Dataset:
    """Check the uploaded file as the upload page does and keep it as the user's dataset, or
    raise ApiError (400) naming the first bad rows; nothing is kept from a refused file."""
    base = LanguageModel.default()
    if base is None:
        raise ApiError(400, "No model is enabled to measure the rows with; ask an administrator.", param="file")
    try:
        analysis = datastore.analyze(path, filename, base, user.pk)
    except DatasetError as exc:
        if exc.busy:
            raise ApiError(
                429, str(exc), param="file", code="upload_in_progress", headers={"Retry-After": "5"}
            ) from exc
        raise ApiError(400, str(exc), param="file", code="invalid_file") from exc
    if analysis.error_count:
        datastore.discard(user.pk, analysis.token)
        raise ApiError(400, _bad_rows(analysis), param="file", code="invalid_file")
    return datastore.save(user, analysis.token, "")


def delete(dataset: Dataset) -> None:
    """Delete a file no unfinished job uses (finished jobs keep theirs for lineage: 409 too)."""
    running = dataset.jobs.exclude(state__in=Job.FINISHED).order_by("pk").first()
    if running is not None:
        raise ApiError(
            409,
            f"The fine-tuning job ftjob-{running.pk} uses this file and has not finished; cancel it or wait "
            "for it to end, then delete the file.",
            code="file_in_use",
        )
    try:
        datastore.delete(dataset)
    except DatasetError as exc:
        raise ApiError(409, str(exc), code="file_in_use") from exc


# --- answer ------------------------------------------------------------------------------------
def file_object(dataset: Dataset) -> dict:
    try:
        size = dataset.path.stat().st_size
    except OSError:
        size = 0
    return {
        "id": f"{PREFIX}{dataset.pk}",
        "object": "file",
        "bytes": size,
        "created_at": int(dataset.created_at.timestamp()),
        "filename": dataset.original_filename,
        "purpose": dataset.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


# --- the views ---------------------------------------------------------------------------------
@limited_upload
@api_view("GET", "POST", scope="files")
def files(request):
    if request.method == "POST":
        return JsonResponse(file_object(_upload(request)))
    page = pagination.page_request(request, PREFIX, default_limit=10_000, max_limit=10_000, ordered=True)
    purpose = request.GET.get("purpose")
    rows = visible_files(request.user)
    if purpose:
        rows = rows.filter(purpose=purpose)
    rows, has_more = pagination.paginate(rows, page)
    return JsonResponse(pagination.list_body([file_object(d) for d in rows], has_more))


def _upload(request) -> Dataset:
    uploaded = request.FILES.get("file")  # reads the upload (to disk, within the limit)
    if getattr(request, "upload_too_large", False):
        limit = settings.FINETUNE_MAX_UPLOAD_BYTES
        raise ApiError(
            413,
            f"The file is larger than the {_size(limit)} limit. Split it or remove rows, then upload again.",
            param="file",
            code="file_too_large",
        )
    purpose = request.POST.get("purpose")
    if purpose not in PURPOSES:
        raise ApiError(400, f"purpose must be one of {', '.join(map(repr, PURPOSES))} (got {purpose!r}): files here "
                       "are for fine-tuning or evals.", param="purpose")  # fmt: skip
    if purpose == PURPOSE:
        check_may_finetune(request.user)
    if uploaded is None:
        raise ApiError(400, "Send the file as the multipart field 'file' (.jsonl, .json or .csv).", param="file")
    path = Path(uploaded.temporary_file_path())
    if purpose == PURPOSE:
        return store(request.user, path, uploaded.name)
    try:
        return eval_files.store(request.user, path, uploaded.name)
    except EvalError as exc:
        raise ApiError(400, exc.message, param="file", code="invalid_file") from exc


@api_view("GET", "DELETE", scope="files")
def file_detail(request, file_id: str):
    dataset = owned_file(request.user, file_id, purpose=None)
    if request.method == "DELETE":
        ident = f"{PREFIX}{dataset.pk}"  # the row has no pk once deleted
        delete(dataset)
        return JsonResponse({"id": ident, "object": "file", "deleted": True})
    return JsonResponse(file_object(dataset))


@api_view("GET", scope="files")
def file_content(request, file_id: str):
    dataset = owned_file(request.user, file_id, purpose=None)
    if not dataset.path.is_file():
        raise ApiError(500, "The file's stored rows are missing on the server.", code="file_missing")
    name = f"{Path(dataset.original_filename).stem or 'rows'}.jsonl"  # the normalized rows, whatever was sent
    # Not a FileResponse: under ASGI Django reads a synchronous body whole before sending it.
    response = StreamingHttpResponse(async_chunks(file_blocks(dataset.path)), content_type="application/jsonl")
    response["Content-Disposition"] = content_disposition_header(True, name)
    response["Content-Length"] = str(dataset.path.stat().st_size)
    return response
