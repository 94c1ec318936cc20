"""Where results are stored. A caller app registers a sink under a name (in its AppConfig.ready)
and names it in its requests; the worker and the reaper store through it, so the inference app
never imports its callers. A result is stored even when nobody listens, and exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .protocol import Done


@dataclass
class Pending:
    """A request a sink still waits for: queued (no worker yet) or running on `worker`."""

    request_id: str
    running: bool
    worker: str
    created_at: datetime


class Sink:
    """Stores the results of one kind of caller. Methods run in the worker (synchronous ORM)."""

    def claim(self, request_id: str, worker_id: str) -> bool:
        """Mark the request as running on `worker_id`; False if it must not run (deleted,
        stopped while queued, already ended)."""
        raise NotImplementedError

    def finish(self, request_id: str, content: str, done: Done, *, queued_only: bool = False) -> bool:
        """Store the final text and numbers once; False if it was already ended (by the reaper,
        or a worker that raced). Must be a conditional update, so exactly one writer wins;
        `queued_only` ends it only if no worker has claimed it yet."""
        raise NotImplementedError

    def pending(self, request_ids: list[str] | None = None) -> list[Pending]:
        """Requests this sink still waits for (all of them, or only those in `request_ids`)."""
        raise NotImplementedError


_registry: dict[str, Sink] = {}


def register(name: str, sink: Sink) -> None:
    _registry[name] = sink


def get(name: str) -> Sink | None:
    return _registry.get(name)


def all_sinks() -> dict[str, Sink]:
    return dict(_registry)
