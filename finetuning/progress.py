"""A job's picture for its page: state, progress, ETA, chart points and log lines. The page is
drawn from it on load and kept current by the job socket (finetuning/consumers.py), which sends
only the rows after the last ones it sent."""

from __future__ import annotations

from .models import Job

MAX_ROWS = 5000  # per answer; a page asks again from the last id it has


def job_json(job: Job) -> dict:
    return {
        "id": job.pk,
        "state": job.state,
        "state_label": job.get_state_display(),
        "finished": job.is_finished,
        "step": job.step,
        "total_steps": job.total_steps,
        "progress": job.progress,
        "epoch": job.epoch,
        "tokens_per_s": job.tokens_per_s,
        "eta_s": job.eta_s,
        "phase": job.phase if not job.is_finished else {},
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "result_model": job.result_model.slug if job.result_model_id and job.result_model else None,
    }


def snapshot(job: Job, after_metric: int = 0, after_event: int = 0) -> dict:
    metrics = job.metrics.filter(pk__gt=after_metric).order_by("pk")[:MAX_ROWS]
    events = job.events.filter(pk__gt=after_event).order_by("pk")[:MAX_ROWS]
    return {
        "job": job_json(job),
        "metrics": [
            {
                "id": m.pk,
                "step": m.step,
                "epoch": m.epoch,
                "loss": m.loss,
                "eval_loss": m.eval_loss,
                "learning_rate": m.learning_rate,
                "tokens_per_s": m.tokens_per_s,
            }
            for m in metrics
        ],
        "events": [
            {"id": e.pk, "time": e.created_at.isoformat(), "level": e.level, "message": e.message} for e in events
        ],
    }
