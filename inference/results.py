"""Ending a request exactly once: store the result through its sink, then append the `done`
event to its stream. Shared by the worker and the reaper, which may race: the sink's
conditional update lets exactly one of them win."""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from . import sinks, streams
from .protocol import Done

logger = logging.getLogger(__name__)


def finish(sink_name: str, request_id: str, content: str, done: Done, next_seq: int, *, queued_only=False) -> bool:
    """Store and announce the end of a request. False if someone else ended it first. Database
    errors propagate (the worker keeps the result in memory and retries)."""
    sink = sinks.get(sink_name)
    if sink is not None and not sink.finish(request_id, content, done, queued_only=queued_only):
        return False
    try:
        pipe = streams.client().pipeline()
        streams.append(pipe, request_id, next_seq, "done", done.to_dict())
        pipe.execute()
    except RedisError:
        # Redis down, or an id clash (a done entry exists already): the sink's row is the
        # truth, and a caller that resumes reads the result from it.
        logger.warning("could not append the done event of %s", request_id)
    return True
