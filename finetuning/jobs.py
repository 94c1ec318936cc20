"""A job's life: create it, claim it in a worker (never twice), cancel it, finish it, and
recover it after its worker died. The state column is the truth (DESIGN.md):
queued → validating → running → evaluating → succeeded | failed | cancelled."""

from __future__ import annotations

import threading
from datetime import timedelta

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from inference.models import LanguageModel

from . import hyperparameters
from .models import Dataset, Job

ACTIVE = (Job.State.VALIDATING, Job.State.RUNNING, Job.State.EVALUATING)


class JobError(ValueError):
    """A job that cannot be created as asked; `errors` maps a field to what to change."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def create(owner, *, name: str, base_model: LanguageModel, dataset: Dataset, method: str, asked: dict) -> Job:
    """A queued job (enqueued once the transaction commits). Raises JobError."""
    errors = {}
    if not base_model.enabled or not base_model.visible_to(owner):
        errors["base_model"] = "Pick an enabled model you may use."
    if dataset.owner_id != owner.pk and not owner.is_staff:
        errors["dataset"] = "Pick one of your datasets."
    elif dataset.purpose != Dataset.Purpose.FINE_TUNE:
        errors["dataset"] = (f"{dataset.name} holds evaluation items (purpose {dataset.purpose}), not training rows: "
                             "upload the training rows with purpose fine-tune.")  # fmt: skip
    if method not in Job.Method.values:
        errors["method"] = f"Method must be one of: {', '.join(Job.Method.values)}."
    name = (name or "").strip() or f"{base_model.name} + {dataset.name}"
    if len(name) > 100:
        errors["name"] = "The name is longer than 100 characters."
    try:
        resolved = hyperparameters.resolve(method, asked)
    except hyperparameters.HyperparameterError as exc:
        errors.update(exc.errors)
        resolved = {}
    if errors:
        raise JobError(errors)
    with transaction.atomic():
        job = Job.objects.create(
            owner=owner, name=name, base_model=base_model, dataset=dataset, method=method, hyperparameters=resolved
        )
        job.log(f"Queued: {method}, {dataset.rows} rows; {hyperparameters.describe(resolved)}.")
        transaction.on_commit(lambda: enqueue(job.pk))
    return job


def enqueue(job_id: int) -> None:
    from .tasks import run_job

    run_job.delay(job_id)


def claim(job_id: int, worker: str) -> Job | None:
    """The job, marked as this worker's, or None when it must not run here: finished,
    cancelled, or running on a live worker (a redelivered task never trains twice). A job
    whose worker stopped reporting, or whose worker had this name (it was restarted), resumes."""
    now = timezone.now()
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.is_finished:
            return None
        if job.cancel_requested:
            _finish(job, Job.State.CANCELLED, "Cancelled before it started.")
            return None
        if job.state != Job.State.QUEUED:
            stale = job.heartbeat_at is None or job.heartbeat_at < now - timedelta(seconds=settings.FINETUNE_STALE_S)
            if not stale and job.worker != worker:
                return None
        if job.attempts >= settings.FINETUNE_MAX_ATTEMPTS:
            reason = f"The worker stopped {job.attempts} times while running this job; it was not started again."
            _finish(job, Job.State.FAILED, reason, error=reason)
            return None
        resumed = job.state != Job.State.QUEUED
        job.attempts += 1
        job.worker = worker
        job.heartbeat_at = now
        job.started_at = job.started_at or now
        if not resumed:
            job.state = Job.State.VALIDATING
        job.save()
        job.log(f"{'Resumed' if resumed else 'Started'} on {worker} (attempt {job.attempts}).")
    return job


def set_state(job: Job, state: str) -> None:
    job.state = state
    job.heartbeat_at = timezone.now()
    Job.objects.filter(pk=job.pk).update(state=state, heartbeat_at=job.heartbeat_at)
    job.log(f"State: {job.get_state_display()}.")


def _finish(job: Job, state: str, message: str, error: str = "") -> None:
    job.state = state
    job.error = error
    job.finished_at = timezone.now()
    job.eta_s = None
    job.save(update_fields=["state", "error", "finished_at", "eta_s"])
    job.log(message, level="error" if state == Job.State.FAILED else "info")


def finish(job: Job, state: str, message: str, error: str = "") -> None:
    with transaction.atomic():
        current = Job.objects.select_for_update().get(pk=job.pk)
        if current.is_finished:
            return
        _finish(job, state, message, error)


def request_cancel(job: Job) -> None:
    """Cancel: at once for a queued job; a running one stops at its next step (Trainer callback)."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.is_finished:
            return
        job.cancel_requested = True
        job.save(update_fields=["cancel_requested"])
        if job.state == Job.State.QUEUED:
            _finish(job, Job.State.CANCELLED, "Cancelled before it started.")
        else:
            job.log("Cancel requested; the job stops at its next step.")


def recover(worker: str) -> list[int]:
    """Called when a worker starts: jobs left active by a dead worker (this name's earlier run,
    or any worker silent for FINETUNE_STALE_S) go back on the queue to resume from a checkpoint."""
    cutoff = timezone.now() - timedelta(seconds=settings.FINETUNE_STALE_S)
    ids = list(
        Job.objects.filter(state__in=ACTIVE)
        .filter(models.Q(worker=worker) | models.Q(heartbeat_at__lt=cutoff) | models.Q(heartbeat_at__isnull=True))
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    for job_id in ids:
        enqueue(job_id)
    return ids


class Heartbeat:
    """Keeps `heartbeat_at` fresh during long steps (loading, evaluation) from a thread."""

    def __init__(self, job: Job, every_s: float = 10.0) -> None:
        self.job_id = job.pk
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"job-{job.pk}-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self._stop.wait(self.every_s):
                Job.objects.filter(pk=self.job_id).update(heartbeat_at=timezone.now())
        finally:
            connection.close()
