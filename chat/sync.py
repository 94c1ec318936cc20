"""Every tab of a user sees the same conversations live: what one tab (or an HTTP call) does is
published on the user's event stream in Redis, and every socket of that user forwards it to its
page as a `chat.sync` frame (docs/protocol.md). A tab skips the events it caused itself."""

from __future__ import annotations

import json

from django.conf import settings
from redis.exceptions import RedisError

from inference import streams

KEEP = 200  # events kept per user (a socket only reads what comes after it connected)


def key(user_id: int) -> str:
    return f"chat:user:{int(user_id)}:events"


def _fields(event: dict) -> dict:
    return {"data": json.dumps(event)}


def publish(user_id: int, event: dict) -> None:
    """From synchronous code (views). Best effort: a tab that misses it sees it on reload."""
    try:
        pipe = streams.client().pipeline(transaction=False)
        pipe.xadd(key(user_id), _fields(event), maxlen=KEEP, approximate=True)
        pipe.expire(key(user_id), settings.CHAT_STREAM_TTL_S)
        pipe.execute()
    except RedisError:
        pass


async def apublish(user_id: int, event: dict) -> None:
    try:
        pipe = streams.async_client().pipeline(transaction=False)
        pipe.xadd(key(user_id), _fields(event), maxlen=KEEP, approximate=True)
        pipe.expire(key(user_id), settings.CHAT_STREAM_TTL_S)
        await pipe.execute()
    except RedisError:
        pass


async def read(user_id: int, after: str, block_ms: int) -> tuple[str, list[dict]]:
    """Events after the id `after` ("$": from now on); returns the last id read and the events."""
    result = await streams.async_client().xread({key(user_id): after}, block=block_ms, count=100)
    events = []
    for _key, items in result or []:
        for entry_id, fields in items:
            after = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            raw = fields.get(b"data") or fields.get("data")
            events.append(json.loads(raw))
    return after, events


async def last_id(user_id: int) -> str:
    """The id of the newest event, so a socket reads only what comes after it connected."""
    entries = await streams.async_client().xrevrange(key(user_id), count=1)
    if not entries:
        return "0-0"
    entry_id = entries[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id
