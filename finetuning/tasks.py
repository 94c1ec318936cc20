"""Celery tasks: thin wrappers over finetuning/runner.py and finetuning/jobs.py.

Jobs are durable (DESIGN.md): `acks_late` with prefetch 1 (settings), and `jobs.claim` makes a
redelivered task a no-op for a job that is finished or alive elsewhere. A worker that starts puts
back on the queue the jobs its earlier run (same name) or a silent worker left active; they
resume from their last checkpoint. CUDA is initialised only inside the task (runstack uses the
solo pool: no fork after CUDA)."""

from celery import shared_task
from celery.signals import worker_ready

from . import jobs, runner


@shared_task(name="finetuning.run_job", bind=True, acks_late=True)
def run_job(self, job_id: int) -> str | None:
    return runner.run(job_id, worker=self.request.hostname or "celery")


@worker_ready.connect
def resume_interrupted_jobs(sender=None, **kwargs) -> None:
    from django.db import close_old_connections

    close_old_connections()
    jobs.recover(worker=getattr(sender, "hostname", "") or "celery")
