"""The Redis side of inference: the request queue, each request's stream of events, stop
markers and worker heartbeats. Callers and inference workers only meet here (and in the
database, through sinks).

Keys (all under the `inference:` prefix):
- `inference:queue` – a list of JSON interactive requests (protocol.Request); any worker pops
  from it.
- `inference:queue:background` – the same for background requests (titles): a worker takes them
  only when it has no interactive work (worker.py), and puts back one it preempted.
- `inference:stream:<request id>` – a Redis stream with one entry per delta, entry id `0-<seq>`,
  plus a final `done` entry. Kept for CHAT_STREAM_TTL_S so a client can resume from any seq.
- `inference:stop:<request id>` – present when a caller asked to stop that request.
- `inference:worker:<worker id>` – a worker's heartbeat, expiring after INFERENCE_HEARTBEAT_TTL_S.
- `inference:wake:<random>` – the wake stream of an event loop's reader of reply streams
  (stream_reader.py); one entry, expiring a minute after its last wake.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import weakref

import redis
import redis.asyncio as aredis
from django.conf import settings

QUEUE_KEY = "inference:queue"
BACKGROUND_QUEUE_KEY = "inference:queue:background"
QUEUE_KEYS = (QUEUE_KEY, BACKGROUND_QUEUE_KEY)  # in the order workers take from them


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


def client_name(kind: str, pid: int | None = None) -> str:
    """The name (CLIENT SETNAME) of a process's "sync" or "async" connections: CLIENT LIST then
    says which process holds each (bench/sockets.py counts daphne's)."""
    return f"chatsite-{kind}-{os.getpid() if pid is None else pid}"


def client() -> redis.Redis:
    """One connection pool per thread (the worker's heartbeat thread has its own)."""
    conn = getattr(_sync_local, "client", None)
    if conn is None:
        conn = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=5, client_name=client_name("sync")
        )
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


def has_after(request_id: str, after_seq: int) -> bool:
    """Whether the reply's stream holds an entry after `after_seq` (its `done` included): a reader
    there still has something to read (reads only the last entry)."""
    last = client().xrevrange(stream_key(request_id), count=1)
    return bool(last) and seq_of(last[0][0]) > after_seq


def queue_key(request) -> str:
    return BACKGROUND_QUEUE_KEY if request.background else QUEUE_KEY


def pop_requests(count: int, *, background: bool = False) -> list[dict]:
    """Up to `count` requests from the interactive queue (or the background one)."""
    raw = client().lpop(BACKGROUND_QUEUE_KEY if background else QUEUE_KEY, count) or []
    return [json.loads(item) for item in raw]


def wait_request(timeout: float) -> dict | None:
    """The next request of either queue, interactive first; waits up to `timeout` seconds."""
    item = client().blpop(list(QUEUE_KEYS), timeout=timeout)
    return json.loads(item[1]) if item else None


def _queue_on(pipe, request):
    """The commands that queue `request`: clear any stream or stop marker left under its id
    (ids can repeat when a database is recreated while Redis keeps running), then push it."""
    pipe.delete(stream_key(request.id), stop_key(request.id))
    pipe.rpush(queue_key(request), json.dumps(request.to_dict()))
    return pipe


def submit(request) -> None:
    """Queue a protocol.Request from synchronous code (as `enqueue` does from async code)."""
    conn = client()
    if conn.llen(queue_key(request)) >= settings.INFERENCE_MAX_QUEUE:
        raise QueueFull()
    _queue_on(conn.pipeline(transaction=True), request).execute()


def put_back(request) -> None:
    """Return a preempted background request to the front of its queue, as it was (its stop
    marker stays, so a stop asked meanwhile still ends it)."""
    client().lpush(queue_key(request), json.dumps(request.to_dict()))


def queue_length() -> int:
    """Requests waiting in both queues."""
    pipe = client().pipeline(transaction=False)
    for key in QUEUE_KEYS:
        pipe.llen(key)
    return sum(int(n) for n in pipe.execute())


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
    return {json.loads(item)["id"] for key in QUEUE_KEYS for item in client().lrange(key, 0, -1)}


def live_workers() -> list[str]:
    return [k.decode().split(":", 2)[2] for k in client().scan_iter(match=worker_key("*"), count=100)]


# --- asynchronous client (websocket consumer) ------------------------------------------------
POOL_WAIT_S = 10  # longest wait for a free connection of the capped pool; then a ConnectionError


# loop → (its client, the task that closes the client when the loop shuts down; held here
# because asyncio keeps only weak references to tasks)
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[aredis.Redis, asyncio.Task]] = (
    weakref.WeakKeyDictionary()
)


def async_client() -> aredis.Redis:
    """One client per event loop (daphne runs one loop; tests and async_to_sync run many).

    Keyed by the loop itself, not its id(), so a new loop never gets a dead loop's client. The
    client's connections are closed when its loop shuts down: asyncio.run (so asgiref and
    pytest-asyncio too) cancels every task before closing a loop, and cancelling the task below
    closes them.
    """
    loop = asyncio.get_running_loop()
    entry = _async_clients.get(loop)
    if entry is None:
        # Reads block for up to 5 s (XREAD BLOCK); the socket timeout must stay well above that.
        # Only two reads block, whatever the number of sockets: the loop's one reader of reply
        # streams (inference.stream_reader) and of user events (chat.sync). Every other command is
        # short, so the pool is capped and a command waits for a free connection rather than open
        # one more: 1,000 sockets connecting at once opened hundreds, which then stayed open.
        pool = aredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=settings.REDIS_MAX_CONNECTIONS,
            timeout=POOL_WAIT_S,
            socket_connect_timeout=5,
            socket_timeout=30,
            client_name=client_name("async"),
        )
        conn = aredis.Redis(connection_pool=pool)

        async def close_with_loop() -> None:
            try:
                await asyncio.Future()  # until the loop shuts down and cancels every task
            finally:
                _async_clients.pop(loop, None)
                # Only the idle connections: a cancelled task drops the one it reads from itself,
                # and closing that under it would turn its cancellation into a Redis error.
                await conn.connection_pool.disconnect(inuse_connections=False)

        entry = _async_clients[loop] = (conn, loop.create_task(close_with_loop()))
    return entry[0]


async def enqueue(request) -> None:
    """Queue a protocol.Request for the workers (see `_queue_on`). Raises QueueFull when
    INFERENCE_MAX_QUEUE requests are waiting already."""
    conn = async_client()
    if await conn.llen(queue_key(request)) >= settings.INFERENCE_MAX_QUEUE:
        raise QueueFull()
    await _queue_on(conn.pipeline(transaction=True), request).execute()


async def request_stop(request_id: str) -> None:
    await async_client().set(stop_key(request_id), "1", ex=settings.CHAT_STREAM_TTL_S)


async def read_many(positions: dict[str, int], block_ms: int | None) -> list[tuple[str, int, str, dict]]:
    """Entries of several requests' streams as (request id, seq, kind, data): for each request
    id, those with seq > its position, in order. Waits up to block_ms for the first one (None:
    no wait); up to 500 entries a stream."""
    if not positions:
        return []
    request_ids = {stream_key(rid): rid for rid in positions}
    result = await async_client().xread(
        {stream_key(rid): entry_id(seq) for rid, seq in positions.items()}, block=block_ms, count=500
    )
    entries = []
    for key, items in result or []:
        request_id = request_ids[key.decode() if isinstance(key, bytes) else key]
        for eid, fields in items:
            entries.append((request_id, seq_of(eid), *decode_entry(fields)))
    return entries


async def read_after(request_id: str, after_seq: int, block_ms: int | None) -> list[tuple[int, str, dict]]:
    """Entries with seq > after_seq; waits up to block_ms for the first one (None: no wait)."""
    return [entry[1:] for entry in await read_many({request_id: after_seq}, block_ms)]
