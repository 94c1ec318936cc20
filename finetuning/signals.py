"""What other apps may follow without finetuning importing them: `job_succeeded` is sent (once
the job's success is committed) with `job` and `model` (the tuned LanguageModel it registered).
evals/job_evals.py evaluates the tuned model against its base on the rows the job held out."""

from django.dispatch import Signal

job_succeeded = Signal()
