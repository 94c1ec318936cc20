"""The packaged default model row, created on first run."""

from django.db import transaction

from .loading import PACKAGED_GGUF, PACKAGED_NAME, PACKAGED_SLUG
from .models import LanguageModel
from .sampling import PACKAGED_DEFAULTS


def ensure_default_model() -> tuple[LanguageModel, bool]:
    """Create the packaged default model row if no model exists yet. Returns (row, created)."""
    with transaction.atomic():
        existing = LanguageModel.objects.filter(slug=PACKAGED_SLUG).first() or LanguageModel.objects.first()
        if existing is not None:
            return existing, False
        row = LanguageModel.objects.create(
            name=PACKAGED_NAME,
            slug=PACKAGED_SLUG,
            source=LanguageModel.Source.PACKAGED,
            backend=LanguageModel.Backend.AUTO,
            gguf_file=PACKAGED_GGUF,
            **PACKAGED_DEFAULTS.to_dict(),
            max_tokens=512,
            max_new_tokens_cap=2048,
            max_input_tokens=2048,
            system_prompt="You are a helpful assistant.",
            enabled=True,
            is_default=True,
        )
        return row, True
