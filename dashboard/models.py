"""The usage dashboard's aggregates: a per-day, per-model rollup of chat messages.

`dashboard.rollup` fills it incrementally (only messages it has not counted yet, found through
the primary key, so no index on `chat.Message.created_at` is needed); `dashboard.report` reads
it for the admin page. See docs/dashboard.md.
"""

from django.db import models

from chat.models import Message
from inference.models import LanguageModel


class DailyUsage(models.Model):
    """What the messages created on one day (UTC) with one model added up to.

    `model` is empty for messages without a model (people's own messages carry none). The
    histograms map a log-spaced bucket (`dashboard.histograms`) to a count, as JSON objects.
    Normally one row per (day, model); a deleted model's rows fall to an empty model and readers
    add rows up, so a second row for the same key never counts twice.
    """

    day = models.DateField()
    model = models.ForeignKey(LanguageModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    user_messages = models.PositiveIntegerField(default=0)
    replies = models.PositiveIntegerField(default=0)
    failed_replies = models.PositiveIntegerField(default=0, help_text="Replies that ended in an error or interrupted.")
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    ttft_histogram = models.JSONField(default=dict, help_text="Time to first token (ms): bucket -> replies.")
    tps_histogram = models.JSONField(default=dict, help_text="Tokens per second: bucket -> replies.")

    class Meta:
        ordering = ["day", "model_id"]
        indexes = [models.Index(fields=["day", "model"])]
        verbose_name_plural = "daily usage"

    def __str__(self) -> str:
        return f"{self.day} model {self.model_id}: {self.replies} replies"


class RatedReply(models.Model):
    """The model of a reply someone rated, noted when the rating is first seen, so the feedback
    score per model joins `chat.Feedback` to this small table instead of to every message.
    (A reply's model never changes; the rating itself is read live from `chat.Feedback`.)"""

    message = models.OneToOneField(Message, primary_key=True, on_delete=models.CASCADE, related_name="+")
    model = models.ForeignKey(LanguageModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    def __str__(self) -> str:
        return f"reply {self.message_id} by model {self.model_id}"


class RollupState(models.Model):
    """The one row that says how far the rollup has counted: every message with an id up to
    `counted_through_id` is in `DailyUsage`, none above it; every feedback up to
    `feedback_through_id` has its reply in `RatedReply`."""

    counted_through_id = models.BigIntegerField(default=0)
    feedback_through_id = models.BigIntegerField(default=0)
    refreshed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"messages counted through id {self.counted_through_id}"
