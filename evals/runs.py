"""Runs: made from a checked data source (evals/sources.py), executed by a Celery task that sends
the items to the inference service a few at a time, at the background priority, and grades each
answer the worker stores (evals/samples.py) as it comes.

A run is durable, like a fine-tuning job: its items and their answers are rows, the task keeps a
heartbeat, and a task that starts where a dead one left off (worker restart: `recover`) goes on
with what is not answered or graded yet. An item whose inference worker died is asked once more.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import timedelta

from django.db import models, transaction
from django.utils import timezone
from redis.exceptions import RedisError

from inference import reaper, streams
from inference.models import LanguageModel

from . import graders, perplexity, placeholders, samples
from .models import Eval, OutputItem, Run
from .sources import Source

logger = logging.getLogger(__name__)

WINDOW = 8  # items sent to the inference service at once (the worker batches background work)
POLL_S = 0.5
REAP_EVERY_S = 10
STALE_S = 60  # a run whose task has been silent this long is taken over by the next task
MAX_ATTEMPTS = 2  # an answer interrupted by a dead inference worker is asked for once more
State = OutputItem.State


def executor_id(hostname: str) -> str:
    """Who runs a run: the Celery worker's name, its process and thread."""
    return f"{hostname}/{os.getpid()}/{threading.get_ident()}"


# --- make ------------------------------------------------------------------------------------------
def create(evaluation: Eval, user, source: Source, *, model: LanguageModel | None, sampling: dict, name: str,
           metadata: dict) -> Run:  # fmt: skip
    """Store the run and its items, and queue its task once committed."""
    with transaction.atomic():
        run = Run.objects.create(
            eval=evaluation, owner=user, name=name or f"{evaluation.name or 'eval'} on {model.slug if model else 'jsonl'}",
            metadata=metadata, model=model, model_name=model.slug if model else "", data_source=source.stored,
            sampling=sampling,
        )  # fmt: skip
        OutputItem.objects.bulk_create(
            OutputItem(
                run=run,
                index=i,
                item=row.item,
                given_sample=row.sample,
                messages=row.messages,
                state=State.ANSWERED if row.sample is not None else State.WAITING,
                output_text=(row.sample or {}).get("output_text", ""),
                finish_reason="stop" if row.sample is not None else "",
            )  # fmt: skip
            for i, row in enumerate(source.items)
        )
        transaction.on_commit(lambda: enqueue(run.pk))
    return run


def enqueue(run_id: int) -> None:
    from .tasks import run_eval

    run_eval.delay(run_id)


def active_runs(user) -> int:
    return Run.objects.filter(owner=user).exclude(status__in=Run.FINISHED).count()


# --- run -------------------------------------------------------------------------------------------
def claim(run_id: int, executor: str) -> Run | None:
    """Take the run if it is queued, or its task went silent; None if another task has it."""
    stale = timezone.now() - timedelta(seconds=STALE_S)
    taken = (
        Run.objects.filter(pk=run_id)
        .filter(
            models.Q(status=Run.Status.QUEUED)
            | models.Q(status=Run.Status.IN_PROGRESS)
            & (models.Q(heartbeat_at__lt=stale) | models.Q(heartbeat_at__isnull=True))
        )
        .update(status=Run.Status.IN_PROGRESS, worker=executor, heartbeat_at=timezone.now())
    )
    if not taken:
        return None
    Run.objects.filter(pk=run_id, started_at__isnull=True).update(started_at=timezone.now())
    return Run.objects.select_related("eval", "model").get(pk=run_id)


def execute(run_id: int, executor: str) -> str:
    """Answer and grade every item of the run; returns its final status (or "skipped" when
    another task has it or it had ended)."""
    run = claim(run_id, executor)
    if run is None:
        return "skipped"
    logger.info("Eval run %s started by %s", run.pk, executor)
    try:
        last_reap = 0.0
        while True:
            if not _beat(run, executor):
                return "skipped"  # taken over (this task was thought dead) or deleted
            if Run.objects.filter(pk=run.pk, cancel_requested=True).exists():
                _end_canceled(run)
                return Run.Status.CANCELED
            _grade_answered(run)
            _ask_again_interrupted(run)
            left = run.items.exclude(state__in=(State.GRADED, State.SKIPPED))
            if not left.exists():
                return _finish(run, Run.Status.COMPLETED)
            _send(run)
            if time.monotonic() - last_reap > REAP_EVERY_S:
                last_reap = time.monotonic()
                active = run.items.filter(state__in=samples.ACTIVE).values_list("pk", flat=True)
                reaper.reap(samples.SINK, [samples.request_id(pk) for pk in active])
            time.sleep(POLL_S)
    except Exception as exc:
        logger.exception("Eval run %s failed", run.pk)
        _finish(run, Run.Status.FAILED, code="server_error", message=f"The run stopped: {type(exc).__name__}: {exc}")
        return Run.Status.FAILED
    finally:
        perplexity.release()


def _beat(run: Run, executor: str) -> bool:
    return bool(Run.objects.filter(pk=run.pk, worker=executor, status=Run.Status.IN_PROGRESS).update(
        heartbeat_at=timezone.now()))  # fmt: skip


def _send(run: Run) -> None:
    in_flight = run.items.filter(state__in=samples.ACTIVE).count()
    room = WINDOW - in_flight
    if room <= 0:
        return
    waiting = list(run.items.filter(state=State.WAITING).order_by("index")[:room])
    if not waiting:
        return
    model = LanguageModel.objects.filter(pk=run.model_id, enabled=True).first() if run.model_id else None
    if model is None:
        raise RuntimeError(f"the model {run.model_name!r} was deleted or disabled")
    for item in waiting:
        # Marked queued first: the worker may store the answer before submit returns.
        OutputItem.objects.filter(pk=item.pk, state=State.WAITING).update(
            state=State.QUEUED, requested_at=timezone.now()
        )
        try:
            streams.submit(samples.build_request(item, model, run.sampling, run.owner_id))
        except (streams.QueueFull, RedisError) as exc:
            # Not sent: back to waiting, tried again at the next turn (the queue is full of
            # people's requests, or Redis is restarting).
            OutputItem.objects.filter(pk=item.pk, state=State.QUEUED).update(state=State.WAITING, requested_at=None)
            logger.info("Eval run %s waits to send item %s: %s", run.pk, item.index, exc or type(exc).__name__)
            return


def _ask_again_interrupted(run: Run) -> None:
    """An answer cut by a dead inference worker is asked for again (once)."""
    run.items.filter(state=State.ANSWERED, finish_reason="interrupted", attempts__lt=MAX_ATTEMPTS).update(
        state=State.WAITING, output_text="", finish_reason="", error="", worker=""
    )


def failed(item: OutputItem) -> bool:
    return item.finish_reason in ("error", "interrupted", "cancelled") or bool(item.error)


def grade_item(evaluation: Eval, item: OutputItem, measured: dict | None = None) -> tuple[list[dict], str]:
    """(results, status) of an answered item: an answer that failed is an error, not a fail.
    `measured`: the item's perplexity per perplexity grader (see `_perplexities`)."""
    if failed(item):
        return [], "error"
    sample = {"output_text": item.output_text, **(item.given_sample or {}), "perplexity": measured or {}}
    results = [graders.grade(grader, item.item, sample) for grader in evaluation.testing_criteria]
    if any(r.get("error") for r in results):
        return results, "error"
    return results, "pass" if all(r["passed"] for r in results) else "fail"


def _perplexities(run: Run, items: list[OutputItem]) -> dict[int, dict]:
    """{item pk: {grader name: perplexity, or why it was not measured}} for the eval's perplexity
    graders, measured with the run's model (evals/perplexity.py)."""
    scored = [g for g in run.eval.testing_criteria if g["type"] == "perplexity"]
    items = [item for item in items if not failed(item)]
    if not scored or not items or run.model is None:
        return {}
    measured: dict[int, dict] = {item.pk: {} for item in items}
    for grader in scored:
        pairs, owners = [], []
        for item in items:
            sample = {"output_text": item.output_text, **(item.given_sample or {})}
            try:
                pairs.append((item.messages, placeholders.render(grader["reference"], item=item.item, sample=sample)))
                owners.append(item.pk)
            except placeholders.PlaceholderError as exc:
                measured[item.pk][grader["name"]] = str(exc)
        try:
            values = perplexity.perplexities(run.model, pairs) if pairs else []
        except Exception as exc:  # the model could not be loaded or run: each item says why
            logger.exception("Eval run %s: perplexity not measured", run.pk)
            values = [f"the perplexity could not be measured: {type(exc).__name__}: {exc}"] * len(pairs)
        for pk, value in zip(owners, values, strict=True):
            measured[pk][grader["name"]] = value
    return measured


def _grade_answered(run: Run) -> None:
    asked_again = models.Q(finish_reason="interrupted", attempts__lt=MAX_ATTEMPTS)  # see _ask_again_interrupted
    items = list(run.items.filter(state=State.ANSWERED).exclude(asked_again))
    measured = _perplexities(run, items)
    for item in items:
        results, status = grade_item(run.eval, item, measured.get(item.pk))
        OutputItem.objects.filter(pk=item.pk, state=State.ANSWERED).update(
            state=State.GRADED, results=results, status=status
        )


def _end_canceled(run: Run) -> None:
    """Stop what is in flight and keep what was graded."""
    active = list(run.items.filter(state__in=samples.ACTIVE).values_list("pk", flat=True))
    run.items.exclude(state=State.GRADED).update(state=State.SKIPPED)
    for pk in active:
        try:
            streams.request_stop_sync(samples.request_id(pk))
        except RedisError:
            pass
    _finish(run, Run.Status.CANCELED)


def _finish(run: Run, status: str, *, code: str = "", message: str = "") -> str:
    Run.objects.filter(pk=run.pk).exclude(status__in=Run.FINISHED).update(
        status=status, error_code=code, error_message=message, finished_at=timezone.now()
    )
    if status == Run.Status.FAILED:
        run.items.exclude(state=State.GRADED).update(state=State.SKIPPED)
    logger.info("Eval run %s %s", run.pk, status)
    return status


# --- stop ------------------------------------------------------------------------------------------
def request_cancel(run: Run) -> Run:
    """A queued run (or one whose task died) ends at once; a running one at its task's next turn."""
    Run.objects.filter(pk=run.pk).exclude(status__in=Run.FINISHED).update(cancel_requested=True)
    run.refresh_from_db()
    stale = run.heartbeat_at is None or run.heartbeat_at < timezone.now() - timedelta(seconds=STALE_S)
    if not run.is_finished and (run.status == Run.Status.QUEUED or stale):
        _end_canceled(run)
    run.refresh_from_db()
    return run


def delete(run: Run) -> None:
    if not run.is_finished:
        request_cancel(run)
        _end_canceled(run)
    run.delete()


def recover(hostname: str) -> list[int]:
    """Called when a Celery worker starts: runs its earlier process left (or whose task went
    silent) are queued again; their next task goes on where they stopped."""
    stale = timezone.now() - timedelta(seconds=STALE_S)
    mine_before = models.Q(worker__startswith=f"{hostname}/") & ~models.Q(
        worker__startswith=f"{hostname}/{os.getpid()}/"
    )
    ids = list(
        Run.objects.exclude(status__in=Run.FINISHED)
        .filter(models.Q(status=Run.Status.QUEUED) | mine_before | models.Q(heartbeat_at__lt=stale))
        .values_list("pk", flat=True)
    )
    Run.objects.filter(pk__in=ids, status=Run.Status.IN_PROGRESS).update(status=Run.Status.QUEUED, heartbeat_at=None)
    for run_id in ids:
        enqueue(run_id)
    return ids


# --- read ------------------------------------------------------------------------------------------
def counts(run: Run) -> dict:
    """result_counts, per_testing_criteria_results and progress, from the items."""
    items = list(run.items.values("state", "status", "results", "prompt_tokens", "completion_tokens"))
    graded = [i for i in items if i["state"] == State.GRADED]
    per = {g["name"]: {"testing_criteria": g["name"], "passed": 0, "failed": 0} for g in run.eval.testing_criteria}
    for item in graded:
        for result in item["results"]:
            if result["name"] in per and not result.get("error"):
                per[result["name"]]["passed" if result["passed"] else "failed"] += 1
    answered = sum(i["state"] in (State.ANSWERED, State.GRADED) for i in items)
    return {
        "result_counts": {
            "total": len(graded),
            "passed": sum(i["status"] == "pass" for i in graded),
            "failed": sum(i["status"] == "fail" for i in graded),
            "errored": sum(i["status"] == "error" for i in graded),
        },
        "per_testing_criteria_results": list(per.values()),
        "progress": {"items": len(items), "answered": answered, "graded": len(graded)},
        "usage": {
            "prompt_tokens": sum(i["prompt_tokens"] for i in items),
            "completion_tokens": sum(i["completion_tokens"] for i in items),
            "invocation_count": sum(i["completion_tokens"] > 0 or i["prompt_tokens"] > 0 for i in items),
        },
    }
