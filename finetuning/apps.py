from django.apps import AppConfig


class FinetuningConfig(AppConfig):
    """Datasets and fine-tuning jobs (run by Celery). Built in a later issue; see docs/architecture.md."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "finetuning"
