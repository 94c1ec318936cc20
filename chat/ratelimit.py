"""Per-user message rate limit (chat.send and chat.regenerate), counted in Redis so that it holds
across every daphne process."""

from __future__ import annotations

import math
import time

from django.conf import settings

from inference import streams


async def retry_after(user_id: int) -> int | None:
    """Count one message for the user; None if allowed, else seconds until the next is.

    A fixed window per user: `CHAT_RATE_LIMIT` messages per `CHAT_RATE_WINDOW_S` seconds.
    """
    limit = settings.CHAT_RATE_LIMIT
    if limit <= 0:
        return None
    window = settings.CHAT_RATE_WINDOW_S
    now = time.time()
    start = math.floor(now / window) * window
    key = f"chat:rate:{user_id}:{int(start)}"
    pipe = streams.async_client().pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, window + 1)
    count, _ = await pipe.execute()
    if count <= limit:
        return None
    return max(1, math.ceil(start + window - now))
