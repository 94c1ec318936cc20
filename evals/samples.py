"""An output item's answer comes from the inference service: the item is sent as a request of
the background priority (it runs only on capacity no person's reply wants, docs/protocol.md) and
the worker stores the answer through `SampleSink`, once, even if the run's Celery task died
meanwhile (the task reads the stored answers: evals/runs.py)."""

from __future__ import annotations

from django.db.models import F
from django.utils import timezone

from chatsite.ids import parse_id
from inference import sinks
from inference.protocol import BACKGROUND, Done, Request

from .models import OutputItem

SINK = "evals.sample"
PREFIX = "evalitem-"
ACTIVE = (OutputItem.State.QUEUED, OutputItem.State.RUNNING)


def request_id(item_pk: int) -> str:
    return f"{PREFIX}{item_pk}"


def item_pk_of(request_id_: str) -> int | None:
    rest = request_id_[len(PREFIX) :] if request_id_.startswith(PREFIX) else ""
    return parse_id(rest)


def build_request(item: OutputItem, model, sampling: dict, user_id: int) -> Request:
    return Request(
        id=request_id(item.pk),
        model=model.slug,
        messages=item.messages,
        sampling=sampling,
        max_input_tokens=model.max_input_tokens,
        sink=SINK,
        user=str(user_id),
        priority=BACKGROUND,
    )


class SampleSink(sinks.Sink):
    """Stores a model's answer on its output item (state queued/running → answered)."""

    def claim(self, request_id: str, worker_id: str) -> bool:
        # A running one too: a background request that gave way to a person's is put back on
        # the queue and claimed again when it starts over (refused, it was dropped and its run
        # waited for it forever: bench/evals.py caught it).
        pk = item_pk_of(request_id)
        return pk is not None and bool(
            OutputItem.objects.filter(pk=pk, state__in=ACTIVE, run__cancel_requested=False).update(
                state=OutputItem.State.RUNNING, worker=worker_id, requested_at=timezone.now()
            )
        )

    def finish(self, request_id: str, content: str, done: Done, *, queued_only: bool = False) -> bool:
        pk = item_pk_of(request_id)
        states = (OutputItem.State.QUEUED,) if queued_only else ACTIVE
        return pk is not None and bool(
            OutputItem.objects.filter(pk=pk, state__in=states).update(
                state=OutputItem.State.ANSWERED,
                output_text=content,
                finish_reason=done.finish_reason,
                prompt_tokens=done.prompt_tokens or 0,
                completion_tokens=done.completion_tokens or 0,
                error=done.error,
                attempts=F("attempts") + 1,
            )
        )

    def pending(self, request_ids: list[str] | None = None) -> list[sinks.Pending]:
        active = OutputItem.objects.filter(state__in=ACTIVE)
        if request_ids is not None:
            active = active.filter(pk__in=[p for p in map(item_pk_of, request_ids) if p is not None])
        return [
            sinks.Pending(request_id(pk), state == OutputItem.State.RUNNING, worker, requested_at or timezone.now())
            for pk, state, worker, requested_at in active.values_list("pk", "state", "worker", "requested_at")
        ]
