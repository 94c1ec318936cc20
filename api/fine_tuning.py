"""/v1/fine_tuning/jobs: the studio's jobs (finetuning/jobs.py, run by the Celery worker) as
OpenAI's `fine_tuning.job` objects (`ftjob-<job id>`).

A "supervised" job here is a LoRA job on the studio's "auto" defaults; OpenAI's hyperparameters
map onto the studio's: n_epochs → epochs, batch_size → batch_size, learning_rate_multiplier ×
the default learning rate → learning_rate, seed → seed. The tuned model's id
(`fine_tuned_model`) is the model the job registered: usable in /v1/chat/completions at once.
Only people who may fine-tune use these; another user's ids answer 404 like unknown ones."""

from __future__ import annotations

import re
from datetime import timedelta

from django.http import JsonResponse
from django.utils import timezone

from finetuning import hyperparameters, jobs
from finetuning.models import Job
from finetuning.runner import model_slug

from . import pagination
from .auth import api_view
from .completions import parse_body
from .errors import ApiError, not_found
from .files import PREFIX as FILE_PREFIX
from .files import check_may_finetune, owned_file
from .views import usable_model

PREFIX = "ftjob-"
EVENT_PREFIX = "ftevent-"
METHOD = Job.Method.LORA  # what OpenAI's "supervised" means here
STATUSES = {
    Job.State.QUEUED: "queued",
    Job.State.VALIDATING: "validating_files",
    Job.State.RUNNING: "running",
    Job.State.EVALUATING: "running",
    Job.State.SUCCEEDED: "succeeded",
    Job.State.FAILED: "failed",
    Job.State.CANCELLED: "cancelled",
}
HYPERPARAMETERS = {"n_epochs": "epochs", "batch_size": "batch_size", "learning_rate_multiplier": "learning_rate"}
PARAMS = {  # the studio's field → the API's parameter, for the studio's error messages
    "base_model": "model",
    "dataset": "training_file",
    "name": "suffix",
    "method": "method",
    "seed": "seed",
    **{studio: f"hyperparameters.{api}" for api, studio in HYPERPARAMETERS.items()},
}
BODY = {"model", "training_file", "hyperparameters", "suffix", "seed", "method", "validation_file", "integrations",
        "metadata"}  # fmt: skip
UNSUPPORTED = {
    "validation_file": "validation_file is not supported: a share of the training rows is held out to validate.",
    "integrations": "integrations are not supported by this server.",
    "metadata": "metadata is not stored by this server.",
}
MAX_SUFFIX = 64
CHECKPOINT = re.compile(r"checkpoint-(\d+)")


# --- check -------------------------------------------------------------------------------------
def _number(value, name: str, *, whole: bool) -> float | int | str:
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | float) or (whole and not float(value).is_integer()):
        kind = "a whole number" if whole else "a number"
        raise ApiError(400, f'{name} must be {kind} or "auto".', param=f"hyperparameters.{name}")
    return int(value) if whole else float(value)


def _hyperparameters(body: dict) -> dict:
    """OpenAI's hyperparameters (top level, or under method.supervised) as the studio's settings."""
    method = body.get("method")
    nested = None
    if method is not None:
        if not isinstance(method, dict) or method.get("type") != "supervised":
            raise ApiError(400, 'method.type must be "supervised" (the only method here).', param="method.type")
        supervised = method.get("supervised") or {}
        if not isinstance(supervised, dict):
            raise ApiError(400, "method.supervised must be an object.", param="method.supervised")
        nested = supervised.get("hyperparameters")
    given = body.get("hyperparameters")
    if given is not None and nested is not None:
        raise ApiError(400, "Give hyperparameters once: at the top level or in method.supervised.",
                       param="hyperparameters")  # fmt: skip
    given = given if given is not None else nested or {}
    if not isinstance(given, dict):
        raise ApiError(400, "hyperparameters must be an object.", param="hyperparameters")
    for name in given:
        if name not in HYPERPARAMETERS:
            raise ApiError(400, f"Unknown hyperparameter {name!r}; use {', '.join(HYPERPARAMETERS)}.",
                           param=f"hyperparameters.{name}")  # fmt: skip
    asked = {
        "epochs": _number(given.get("n_epochs"), "n_epochs", whole=True),
        "batch_size": _number(given.get("batch_size"), "batch_size", whole=True),
    }
    multiplier = _number(given.get("learning_rate_multiplier"), "learning_rate_multiplier", whole=False)
    if multiplier != "auto":
        if multiplier <= 0:
            raise ApiError(400, "learning_rate_multiplier must be above 0.",
                           param="hyperparameters.learning_rate_multiplier")  # fmt: skip
        asked["learning_rate"] = multiplier * hyperparameters.default("learning_rate", METHOD)
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ApiError(400, "seed must be a whole number.", param="seed")
        asked["seed"] = seed
    return asked


def _studio_error(field: str, message: str) -> ApiError:
    if field == "learning_rate":
        rule = hyperparameters.RULES["learning_rate"]
        default = hyperparameters.default("learning_rate", METHOD)
        message = (
            f"learning_rate_multiplier × the default learning rate ({default:g}) must be between "
            f"{rule.lo:g} and {rule.hi:g}: a multiplier from {rule.lo / default:g} to {rule.hi / default:g}."
        )
    return ApiError(400, message, param=PARAMS.get(field, field))


def _suffix(body: dict) -> str:
    suffix = body.get("suffix")
    if suffix is None:
        return ""
    if not isinstance(suffix, str) or not 1 <= len(suffix.strip()) <= MAX_SUFFIX:
        raise ApiError(400, f"suffix must be text of 1 to {MAX_SUFFIX} characters.", param="suffix")
    return suffix.strip()


# --- do ----------------------------------------------------------------------------------------
def create(user, body: dict) -> Job:
    """Check the request and queue the job (finetuning.jobs.create), or raise ApiError: 400 naming
    the parameter, 404 for an unknown (or another user's) model or training file."""
    for name in body:
        if name not in BODY:
            raise ApiError(400, f"Unknown parameter {name!r}.", param=name)
        if name in UNSUPPORTED and body[name]:
            raise ApiError(400, UNSUPPORTED[name], param=name)
    for name in ("model", "training_file"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise ApiError(400, f"{name} is required.", param=name)
    base = usable_model(user, body["model"])
    dataset = owned_file(user, body["training_file"], param="training_file")
    asked = _hyperparameters(body)
    suffix = _suffix(body)
    try:
        return jobs.create(
            user, name=f"{base.slug}-{suffix}" if suffix else "", base_model=base, dataset=dataset, method=METHOD,
            asked=asked,
        )  # fmt: skip
    except jobs.JobError as exc:
        field, message = next(iter(exc.errors.items()))
        raise _studio_error(field, message) from exc


def cancel(job: Job) -> Job:
    if job.is_finished:
        raise ApiError(409, f"The job has already ended ({STATUSES[job.state]}); there is nothing to cancel.",
                       code="job_finished")  # fmt: skip
    jobs.request_cancel(job)
    job.refresh_from_db()
    return job


# --- answer ------------------------------------------------------------------------------------
def timestamp(moment) -> int | None:
    return int(moment.timestamp()) if moment else None


def trained_tokens(job: Job) -> int | None:
    """Tokens read in training (every training row, every epoch), once the job succeeded."""
    if job.state != Job.State.SUCCEEDED:
        return None
    hp, dataset = job.hyperparameters, job.dataset
    train_rows, _ = hyperparameters.split_sizes(dataset.rows, hp.get("validation_split", 0))
    per_epoch = (dataset.stats or {}).get("total", 0) * train_rows / max(dataset.rows, 1)
    return round(per_epoch * hp.get("epochs", 1))


def resolved_hyperparameters(job: Job) -> dict:
    hp = job.hyperparameters
    return {
        "n_epochs": hp.get("epochs"),
        "batch_size": hp.get("batch_size"),
        "learning_rate_multiplier": hp.get("learning_rate", 0) / hyperparameters.default("learning_rate", job.method),
    }


def job_object(job: Job) -> dict:
    running = job.state in (Job.State.RUNNING, Job.State.EVALUATING)
    resolved = resolved_hyperparameters(job)
    return {
        "id": f"{PREFIX}{job.pk}",
        "object": "fine_tuning.job",
        "created_at": timestamp(job.created_at),
        "finished_at": timestamp(job.finished_at),
        "model": job.base_model.slug,
        "fine_tuned_model": job.result_model.slug if job.state == Job.State.SUCCEEDED and job.result_model_id else None,
        "organization_id": f"user-{job.owner_id}",
        "status": STATUSES[job.state],
        "hyperparameters": resolved,
        "method": {"type": "supervised", "supervised": {"hyperparameters": resolved}},
        "training_file": f"{FILE_PREFIX}{job.dataset_id}",
        "validation_file": None,
        "result_files": [],
        "trained_tokens": trained_tokens(job),
        "error": {"code": "job_failed", "message": job.error or "The job failed.", "param": None}
        if job.state == Job.State.FAILED
        else None,
        "seed": job.hyperparameters.get("seed", 0),
        "estimated_finish": timestamp(timezone.now() + timedelta(seconds=job.eta_s))
        if running and job.eta_s is not None
        else None,
        "integrations": [],
        "metadata": None,
    }


def event_object(event) -> dict:
    level = "warn" if event.level.startswith("warn") else event.level if event.level == "error" else "info"
    return {
        "id": f"{EVENT_PREFIX}{event.pk}",
        "object": "fine_tuning.job.event",
        "created_at": timestamp(event.created_at),
        "level": level,
        "message": event.message,
        "type": "message",
        "data": None,
    }


def checkpoints(job: Job) -> list[dict]:
    """The job's complete checkpoints on disk (the Trainer keeps the last two), with the losses
    logged up to each."""
    folder = job.work_dir / "checkpoints"
    steps = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = CHECKPOINT.fullmatch(path.name)
            if match and (path / "trainer_state.json").is_file():
                steps.append((int(match.group(1)), path / "trainer_state.json"))
    metrics = list(job.metrics.filter(step__lte=max((s for s, _ in steps), default=0)))
    out = []
    for step, state_file in steps:
        losses = [m.loss for m in metrics if m.step <= step and m.loss is not None]
        eval_losses = [m.eval_loss for m in metrics if m.step <= step and m.eval_loss is not None]
        out.append(
            {
                "id": f"ftckpt-{job.pk}-{step}",
                "object": "fine_tuning.job.checkpoint",
                "created_at": int(state_file.stat().st_mtime),
                "fine_tuned_model_checkpoint": f"{model_slug(job)}:ckpt-step-{step}",
                "fine_tuning_job_id": f"{PREFIX}{job.pk}",
                "step_number": step,
                "metrics": {
                    "step": step,
                    "train_loss": losses[-1] if losses else None,
                    "valid_loss": eval_losses[-1] if eval_losses else None,
                },
            }
        )
    return out


# --- the views ---------------------------------------------------------------------------------
def owned_job(user, job_id) -> Job:
    number = pagination.id_number(job_id, PREFIX)
    rows = Job.objects.owned_by(user).select_related("base_model", "dataset", "result_model")
    job = rows.filter(pk=number).first() if number is not None else None
    if job is None:
        raise not_found("job", job_id)
    return job


@api_view("GET", "POST", scope="fine_tuning")
def fine_tuning_jobs(request):
    check_may_finetune(request.user)
    if request.method == "POST":
        return JsonResponse(job_object(create(request.user, parse_body(request))))
    page = pagination.page_request(request, PREFIX, default_limit=20, max_limit=100)
    rows = Job.objects.owned_by(request.user).select_related("base_model", "dataset", "result_model")
    rows, has_more = pagination.paginate(rows, page)
    return JsonResponse(pagination.list_body([job_object(j) for j in rows], has_more))


@api_view("GET", scope="fine_tuning")
def fine_tuning_job(request, job_id: str):
    check_may_finetune(request.user)
    return JsonResponse(job_object(owned_job(request.user, job_id)))


@api_view("GET", scope="fine_tuning")
def fine_tuning_job_events(request, job_id: str):
    check_may_finetune(request.user)
    job = owned_job(request.user, job_id)
    page = pagination.page_request(request, EVENT_PREFIX, default_limit=20, max_limit=100)
    rows, has_more = pagination.paginate(job.events.all(), page)
    return JsonResponse(pagination.list_body([event_object(e) for e in rows], has_more))


@api_view("GET", scope="fine_tuning")
def fine_tuning_job_checkpoints(request, job_id: str):
    check_may_finetune(request.user)
    job = owned_job(request.user, job_id)
    page = pagination.page_request(request, f"ftckpt-{job.pk}-", default_limit=10, max_limit=100)
    rows, has_more = pagination.paginate_numbered(checkpoints(job), lambda c: c["step_number"], page)
    return JsonResponse(pagination.list_body(rows, has_more))


@api_view("POST", scope="fine_tuning")
def fine_tuning_job_cancel(request, job_id: str):
    check_may_finetune(request.user)
    return JsonResponse(job_object(cancel(owned_job(request.user, job_id))))
