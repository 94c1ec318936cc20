"""The Redis side of chat: the inference queue, each reply's stream of deltas, stop markers and
worker heartbeats. Web processes and inference workers only meet here (and in the database).

Keys (all under the `chat:` prefix):
- `chat:queue` – a list of JSON requests; any inference worker pops from it.
- `chat:stream:<message id>` – a Redis stream with one entry per delta, entry id `0-<seq>`,
  plus a final `done` entry. Kept for CHAT_STREAM_TTL_S so a client can resume from any seq.
- `chat:stop:<message id>` – present when a user asked to stop that reply.
- `chat:worker:<worker id>` – a worker's heartbeat, expiring after INFERENCE_HEARTBEAT_TTL_S.
"""

from __future__ import annotations

import json
import threading

import redis
import redis.asyncio as aredis
from django.conf import settings

QUEUE_KEY = "chat:queue"


def stream_key(message_id: int) -> str:
    return f"chat:stream:{message_id}"


def stop_key(message_id: int) -> str:
    return f"chat:stop:{message_id}"


def worker_key(worker_id: str) -> str:
    return f"chat:worker:{worker_id}"


def entry_id(seq: int) -> str:
    return f"0-{seq}"


def seq_of(entry: bytes | str) -> int:
    text = entry.decode() if isinstance(entry, bytes) else entry
    return int(text.split("-", 1)[1])


def decode_entry(fields: dict) -> tuple[str, dict]:
    kind = fields.get(b"kind", fields.get("kind"))
    data = fields.get(b"data", fields.get("data"))
    kind = kind.decode() if isinstance(kind, bytes) else kind
    return kind, json.loads(data)


# --- synchronous client (inference worker, views, reaper) ------------------------------------
_sync_local = threading.local()


def client() -> redis.Redis:
    """One connection pool per thread (the worker's heartbeat thread has its own)."""
    conn = getattr(_sync_local, "client", None)
    if conn is None:
        conn = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=5)
        _sync_local.client = conn
    return conn


def append(pipe, message_id: int, seq: int, kind: str, data: dict) -> None:
    """Queue an XADD of one entry (and refresh the expiry) on a pipeline."""
    key = stream_key(message_id)
    pipe.xadd(key, {"kind": kind, "data": json.dumps(data)}, id=entry_id(seq))
    pipe.expire(key, settings.CHAT_STREAM_TTL_S)


def read_all(message_id: int) -> list[tuple[int, str, dict]]:
    """Every entry of a reply's stream as (seq, kind, data)."""
    return [(seq_of(eid), *decode_entry(fields)) for eid, fields in client().xrange(stream_key(message_id))]


def has_done(message_id: int) -> bool:
    """Whether the reply's stream ends with its `done` entry (reads only the last entry)."""
    last = client().xrevrange(stream_key(message_id), count=1)
    return bool(last) and decode_entry(last[0][1])[0] == "done"


def pop_requests(count: int) -> list[dict]:
    raw = client().lpop(QUEUE_KEY, count) or []
    return [json.loads(item) for item in raw]


def wait_request(timeout: float) -> dict | None:
    item = client().blpop([QUEUE_KEY], timeout=timeout)
    return json.loads(item[1]) if item else None


def stopped_among(message_ids: list[int]) -> set[int]:
    if not message_ids:
        return set()
    flags = client().mget([stop_key(m) for m in message_ids])
    return {m for m, flag in zip(message_ids, flags, strict=False) if flag is not None}


def request_stop_sync(message_id: int) -> None:
    client().set(stop_key(message_id), "1", ex=settings.CHAT_STREAM_TTL_S)


def heartbeat(worker_id: str, info: dict) -> None:
    client().set(worker_key(worker_id), json.dumps(info), ex=settings.INFERENCE_HEARTBEAT_TTL_S)


def worker_alive(worker_id: str) -> bool:
    return bool(worker_id) and bool(client().exists(worker_key(worker_id)))


def redis_uptime_s() -> int:
    """Seconds since the Redis server started: heartbeats are only meaningful after a TTL."""
    return int(client().info("server").get("uptime_in_seconds", 0))


def queued_message_ids() -> set[int]:
    return {json.loads(item)["message"] for item in client().lrange(QUEUE_KEY, 0, -1)}


def live_workers() -> list[str]:
    return [k.decode().split(":", 2)[2] for k in client().scan_iter(match=worker_key("*"), count=100)]


# --- asynchronous client (websocket consumer) ------------------------------------------------
_async_clients: dict[int, aredis.Redis] = {}


def async_client() -> aredis.Redis:
    """One client per event loop (daphne runs one loop; tests may run several)."""
    import asyncio

    loop = asyncio.get_running_loop()
    conn = _async_clients.get(id(loop))
    if conn is None:
        # Reads block for up to 2 s (XREAD BLOCK); the socket timeout must stay well above that.
        conn = aredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5, socket_timeout=30)
        _async_clients[id(loop)] = conn
    return conn


async def enqueue(request: dict) -> None:
    """Queue a reply for the workers, clearing any stream or stop marker left under its id
    (ids can repeat when a database is recreated while Redis keeps running)."""
    message_id = request["message"]
    pipe = async_client().pipeline(transaction=True)
    pipe.delete(stream_key(message_id), stop_key(message_id))
    pipe.rpush(QUEUE_KEY, json.dumps(request))
    await pipe.execute()


async def request_stop(message_id: int) -> None:
    await async_client().set(stop_key(message_id), "1", ex=settings.CHAT_STREAM_TTL_S)


async def read_after(message_id: int, after_seq: int, block_ms: int | None) -> list[tuple[int, str, dict]]:
    """Entries with seq > after_seq; waits up to block_ms for the first one (None: no wait)."""
    result = await async_client().xread({stream_key(message_id): entry_id(after_seq)}, block=block_ms, count=500)
    entries = []
    for _key, items in result or []:
        for eid, fields in items:
            entries.append((seq_of(eid), *decode_entry(fields)))
    return entries
