"""Celery tasks: thin wrappers over evals/runs.py. Runs go to the `evals` queue: `make run` gives
it a worker of its own, so a run never waits behind a fine-tuning job (and the reverse)."""

from celery import shared_task
from celery.signals import worker_ready

from . import runs


@shared_task(name="evals.run", bind=True, acks_late=True)
def run_eval(self, run_id: int) -> str:
    return runs.execute(run_id, runs.executor_id(self.request.hostname or "celery"))


@worker_ready.connect
def resume_interrupted_runs(sender=None, **kwargs) -> None:
    from django.db import close_old_connections

    close_old_connections()
    runs.recover(getattr(sender, "hostname", "") or "celery")
