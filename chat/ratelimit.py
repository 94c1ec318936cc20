"""Per-user message rate limit (chat.send and chat.regenerate), counted in Redis so that it holds
across every daphne process. The limit itself is per user or group (presets.quotas)."""

from __future__ import annotations

import math
import time

from django.conf import settings

from inference import streams


async def retry_after(user_id: int, limit: int | None = None, window: int | None = None, amount: int = 1) -> int | None:
    """Count `amount` messages for the user; None if allowed, else seconds until the next is.

    A fixed window per user: `limit` messages per `window` seconds (by default
    `CHAT_RATE_LIMIT` per `CHAT_RATE_WINDOW_S`); a limit of 0 turns it off.
    """
    limit = settings.CHAT_RATE_LIMIT if limit is None else limit
    if limit <= 0:
        return None
    window = settings.CHAT_RATE_WINDOW_S if window is None else window
    now = time.time()
    start = math.floor(now / window) * window
    key = f"chat:rate:{user_id}:{int(start)}"
    pipe = streams.async_client().pipeline(transaction=True)
    pipe.incrby(key, amount)
    pipe.expire(key, window + 1)
    count, _ = await pipe.execute()
    if count <= limit:
        return None
    return max(1, math.ceil(start + window - now))
