"""Evals, their runs and each run's output items. An eval holds what an item looks like and how
an answer is graded; a run answers every item with one model (or grades answers it was given) and
stores an output item per data-source item. The run's status column is the truth: the Celery task
(evals/tasks.py) moves it along, the API and the admin read it."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Eval(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="evals")
    name = models.CharField(max_length=256)
    metadata = models.JSONField(default=dict, blank=True)
    item_schema = models.JSONField(default=dict, help_text="The JSON schema of a data-source item.")
    include_sample_schema = models.BooleanField(default=False)
    testing_criteria = models.JSONField(default=list, help_text="The graders (evals/graders.py).")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-pk"]

    def __str__(self) -> str:
        return self.name or f"eval {self.pk}"


class Run(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"
        CANCELED = "canceled"
        FAILED = "failed"

    FINISHED = (Status.COMPLETED, Status.CANCELED, Status.FAILED)

    eval = models.ForeignKey(Eval, on_delete=models.CASCADE, related_name="runs")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="eval_runs")
    name = models.CharField(max_length=256, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    model = models.ForeignKey(
        "inference.LanguageModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="eval_runs"
    )
    model_name = models.CharField(max_length=100, blank=True, help_text="The model's id when the run was made.")
    data_source = models.JSONField(help_text="The run's data source as given, less its inline items.")
    sampling = models.JSONField(default=dict, help_text="The resolved generation settings (inference.sampling).")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    worker = models.CharField(max_length=200, blank=True, help_text="The Celery worker running it.")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-pk"]

    def __str__(self) -> str:
        return self.name or f"run {self.pk}"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


class OutputItem(models.Model):
    """One data-source item of a run: its input, the model's answer (the sample) and the grades."""

    class State(models.TextChoices):
        WAITING = "waiting"  # not sent to the inference service yet
        QUEUED = "queued"  # sent, no worker has it yet
        RUNNING = "running"
        ANSWERED = "answered"  # the answer is stored, not graded yet
        GRADED = "graded"
        SKIPPED = "skipped"  # the run was canceled before it was graded

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="items")
    index = models.PositiveIntegerField(help_text="Its place in the data source (datasource_item_id).")
    item = models.JSONField()
    given_sample = models.JSONField(null=True, blank=True, help_text="A sample that came with the item.")
    messages = models.JSONField(default=list, help_text="The rendered input messages.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.WAITING)
    worker = models.CharField(max_length=200, blank=True)
    requested_at = models.DateTimeField(null=True, blank=True)
    output_text = models.TextField(blank=True)
    finish_reason = models.CharField(max_length=16, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(
        default=0, help_text="Answers stored (an interrupted one is asked again once)."
    )
    results = models.JSONField(default=list, help_text="Each grader's name, type, score and passed.")
    status = models.CharField(max_length=8, blank=True, help_text="pass, fail or error, once graded.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="evals_one_output_item_per_index")]
        indexes = [models.Index(fields=["run", "state"])]

    def __str__(self) -> str:
        return f"item {self.index} of run {self.run_id}"


class Preference(models.Model):
    """A person's verdict on one item of two runs of an eval, side by side on the compare page:
    A's answer is better, B's, or a tie. One per person, pair and item; a new vote replaces it.
    The pair is kept in the order of the runs' ids (run_a's id is the smaller), whichever way
    round the page showed them."""

    class Choice(models.TextChoices):
        A = "a", "A is better"
        B = "b", "B is better"
        TIE = "tie", "Tie"

    run_a = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="preferences_as_a")
    run_b = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="preferences_as_b")
    index = models.PositiveIntegerField(help_text="The item's place in the data source (both runs share it).")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="eval_preferences")
    choice = models.CharField(max_length=3, choices=Choice.choices)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["run_a", "run_b", "index"]
        constraints = [
            models.UniqueConstraint(fields=["run_a", "run_b", "index", "user"], name="evals_one_preference_per_item")
        ]

    def __str__(self) -> str:
        return f"{self.choice} on item {self.index} of runs {self.run_a_id} and {self.run_b_id}"
