"""Datasets, fine-tuning jobs and their progress rows. A job's state column is the truth; the
Celery task (finetuning/tasks.py) moves it along, the job page reads it and its rows."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models
from django.utils import timezone

from inference.models import LanguageModel


class OwnedQuerySet(models.QuerySet):
    def owned_by(self, user):
        """What `user` may see: their own rows; staff see everything."""
        if user is None or not user.is_authenticated:
            return self.none()
        return self if user.is_staff else self.filter(owner=user)


class Dataset(models.Model):
    """A validated dataset: its rows are stored as chat `messages` JSONL under FINETUNE_DIR; or,
    of purpose `evals`, an eval's items (evals/files.py), which training never takes."""

    class Purpose(models.TextChoices):
        FINE_TUNE = "fine-tune", "fine-tuning rows"
        EVALS = "evals", "evaluation items"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=200)
    original_filename = models.CharField(max_length=255)
    format = models.CharField(max_length=32, help_text="The format detected in the uploaded file.")
    file_name = models.CharField(max_length=100, help_text="The normalized rows, under FINETUNE_DIR/datasets.")
    sha256 = models.CharField(max_length=64)
    rows = models.PositiveIntegerField()
    dropped_rows = models.PositiveIntegerField(default=0, help_text="Bad rows left out at upload.")
    stats = models.JSONField(default=dict, help_text="Token statistics with the base model's tokenizer.")
    tokenizer_model = models.ForeignKey(LanguageModel, null=True, on_delete=models.SET_NULL, related_name="+")
    purpose = models.CharField(max_length=16, choices=Purpose.choices, default=Purpose.FINE_TUNE, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        permissions = [("finetune", "Can upload datasets and run fine-tuning jobs")]

    def __str__(self) -> str:
        return self.name

    @property
    def path(self) -> Path:
        return Path(settings.FINETUNE_DIR) / "datasets" / self.file_name


class Job(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        VALIDATING = "validating", "Validating"
        RUNNING = "running", "Running"
        EVALUATING = "evaluating", "Evaluating"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Method(models.TextChoices):
        LORA = "lora", "LoRA (small adapter, keeps the base)"
        FULL = "full", "Full fine-tuning (all weights)"

    FINISHED = (State.SUCCEEDED, State.FAILED, State.CANCELLED)

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="finetune_jobs")
    name = models.CharField(max_length=100, help_text="The tuned model's name.")
    base_model = models.ForeignKey(LanguageModel, on_delete=models.PROTECT, related_name="finetune_jobs")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="jobs")
    method = models.CharField(max_length=8, choices=Method.choices, default=Method.LORA)
    hyperparameters = models.JSONField(default=dict)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    epoch = models.FloatField(default=0)
    tokens_per_s = models.FloatField(null=True, blank=True)
    eta_s = models.FloatField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Times a worker started (or resumed) it.")
    worker = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    evaluation = models.JSONField(default=dict, blank=True)
    phase = models.JSONField(
        default=dict, blank=True, help_text='The measuring phase under way: {"name", "done", "total"} (empty: none).'
    )
    result_model = models.ForeignKey(
        LanguageModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="made_by_jobs"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_state_display()})"

    @property
    def is_finished(self) -> bool:
        return self.state in self.FINISHED

    @property
    def work_dir(self) -> Path:
        """Checkpoints and logs of this job (kept until the job is deleted)."""
        return Path(settings.FINETUNE_DIR) / "jobs" / str(self.pk)

    @property
    def progress(self) -> float:
        return min(self.step / self.total_steps, 1.0) if self.total_steps else 0.0

    def log(self, message: str, level: str = "info") -> JobEvent:
        return JobEvent.objects.create(job=self, level=level, message=message[:2000])


class JobEvent(models.Model):
    """A log line of a job, shown on its page."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(default=timezone.now)
    level = models.CharField(max_length=8, default="info")
    message = models.TextField()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.message[:80]


class JobMetric(models.Model):
    """One logged training step: the job page's chart is drawn from these rows."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="metrics")
    step = models.PositiveIntegerField()
    epoch = models.FloatField(default=0)
    loss = models.FloatField(null=True, blank=True)
    eval_loss = models.FloatField(null=True, blank=True)
    learning_rate = models.FloatField(null=True, blank=True)
    tokens_per_s = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["step", "id"]

    def __str__(self) -> str:
        return f"step {self.step}: loss {self.loss}"


class BaseProbe(models.Model):
    """A model's general-knowledge probe, measured once per model version and probe (the key) and
    reused by every job on that base (finetuning/evaluation.py `base_probe`)."""

    model = models.ForeignKey(LanguageModel, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=64, help_text="sha256 of the model's load version and the probe's items.")
    result = models.JSONField(help_text='{"correct", "total", "share", "answers"}')
    seconds = models.FloatField(default=0, help_text="How long measuring it took.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "key"], name="one_probe_per_model_version")]

    def __str__(self) -> str:
        return f"{self.model} probe {self.result.get('correct')}/{self.result.get('total')}"
