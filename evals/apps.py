from django.apps import AppConfig


class EvalsConfig(AppConfig):
    """Evaluations: score a model's answers on your own items (OpenAI's Evals API, docs/evals.md)."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "evals"

    def ready(self) -> None:
        from finetuning.signals import job_succeeded
        from inference import sinks

        from .job_evals import evaluate_job
        from .samples import SINK, SampleSink

        sinks.register(SINK, SampleSink())
        job_succeeded.connect(evaluate_job, dispatch_uid="evals.evaluate_job")
