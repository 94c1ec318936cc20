"""The Redis side of inference: the request queue, each request's stream of events, stop
markers and worker heartbeats. Callers and inference workers only meet here (and in the
database, through sinks).

Keys (all under the `inference:` prefix):
- `inference:queue` – a list of JSON requests (protocol.Request); any worker pops from it.
- `inference:stream:<request id>` – a Redis stream with one entry per delta, entry id `0-<seq>`,
  plus a final `done` entry. Kept for CHAT_STREAM_TTL_S so a client can resume from any seq.
- `inference:stop:<request id>` – present when a caller asked to stop that request.
- `inference:worker:<worker id>` – a worker's heartbeat, expiring after INFERENCE_HEARTBEAT_TTL_S.
"""

from __future__ import annotations

import json
import threading

import redis
import redis.asyncio as aredis
from django.conf import settings

QUEUE_KEY = "inference:queue"


class QueueFull(Exception):
    """The shared queue holds INFERENCE_MAX_QUEUE requests already."""


def stream_key(request_id: str) -> str:
    return f"inference:stream:{request_id}"


def stop_key(request_id: str) -> str:
    return f"inference:stop:{request_id}"


def worker_key(worker_id: str) -> str:
    return f"inference:worker:{worker_id}"


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


def append(pipe, request_id: str, seq: int, kind: str, data: dict) -> None:
    """Queue an XADD of one entry (and refresh the expiry) on a pipeline."""
    key = stream_key(request_id)
    pipe.xadd(key, {"kind": kind, "data": json.dumps(data)}, id=entry_id(seq))
    pipe.expire(key, settings.CHAT_STREAM_TTL_S)


def read_all(request_id: str) -> list[tuple[int, str, dict]]:
    """Every entry of a reply's stream as (seq, kind, data)."""
    return [(seq_of(eid), *decode_entry(fields)) for eid, fields in client().xrange(stream_key(request_id))]


def has_done(request_id: str) -> bool:
    """Whether the reply's stream ends with its `done` entry (reads only the last entry)."""
    last = client().xrevrange(stream_key(request_id), count=1)
    return bool(last) and decode_entry(last[0][1])[0] == "done"


def pop_requests(count: int) -> list[dict]:
    raw = client().lpop(QUEUE_KEY, count) or []
    return [json.loads(item) for item in raw]


def wait_request(timeout: float) -> dict | None:
    item = client().blpop([QUEUE_KEY], timeout=timeout)
    return json.loads(item[1]) if item else None


def queue_length() -> int:
    return int(client().llen(QUEUE_KEY))


def stopped_among(request_ids: list[int]) -> set[int]:
    if not request_ids:
        return set()
    flags = client().mget([stop_key(m) for m in request_ids])
    return {m for m, flag in zip(request_ids, flags, strict=False) if flag is not None}


def request_stop_sync(request_id: str) -> None:
    client().set(stop_key(request_id), "1", ex=settings.CHAT_STREAM_TTL_S)


def heartbeat(worker_id: str, info: dict) -> None:
    client().set(worker_key(worker_id), json.dumps(info), ex=settings.INFERENCE_HEARTBEAT_TTL_S)


def worker_alive(worker_id: str) -> bool:
    return bool(worker_id) and bool(client().exists(worker_key(worker_id)))


def redis_uptime_s() -> int:
    """Seconds since the Redis server started: heartbeats are only meaningful after a TTL."""
    return int(client().info("server").get("uptime_in_seconds", 0))


def queued_request_ids() -> set[str]:
    return {json.loads(item)["id"] for item in client().lrange(QUEUE_KEY, 0, -1)}


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
        # Reads block for up to 5 s (XREAD BLOCK); the socket timeout must stay well above that.
        # Each websocket holds up to two blocking reads (its reply's stream and the user's tab
        # events), so the pool must hold more than redis-py's default 100 connections.
        conn = aredis.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=5,
            socket_timeout=30,
            max_connections=settings.REDIS_MAX_CONNECTIONS,
        )
        _async_clients[id(loop)] = conn
    return conn


async def enqueue(request) -> None:
    """Queue a protocol.Request for the workers, clearing any stream or stop marker left under
    its id (ids can repeat when a database is recreated while Redis keeps running). Raises
    QueueFull when INFERENCE_MAX_QUEUE requests are waiting already."""
    conn = async_client()
    if await conn.llen(QUEUE_KEY) >= settings.INFERENCE_MAX_QUEUE:
        raise QueueFull()
    pipe = conn.pipeline(transaction=True)
    pipe.delete(stream_key(request.id), stop_key(request.id))
    pipe.rpush(QUEUE_KEY, json.dumps(request.to_dict()))
    await pipe.execute()


async def request_stop(request_id: str) -> None:
    await async_client().set(stop_key(request_id), "1", ex=settings.CHAT_STREAM_TTL_S)


async def read_after(request_id: str, after_seq: int, block_ms: int | None) -> list[tuple[int, str, dict]]:
    """Entries with seq > after_seq; waits up to block_ms for the first one (None: no wait)."""
    result = await async_client().xread({stream_key(request_id): entry_id(after_seq)}, block=block_ms, count=500)
    entries = []
    for _key, items in result or []:
        for eid, fields in items:
            entries.append((seq_of(eid), *decode_entry(fields)))
    return entries
