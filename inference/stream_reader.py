"""One blocking read of reply streams per event loop, shared by everyone who follows a reply.

A chat socket's forwarder (chat/consumers.py) and a streamed API call (api/completions.py) wait
for a reply's next entries with `read_after` / `read_many`: the same calls, return shapes and
blocking semantics as `streams.read_after` / `streams.read_many`. A blocking one registers a
`Waiter` with the `StreamReader` of its event loop instead of reading Redis itself: the reader's
one task does one XREAD BLOCK over every stream with a waiter (from the lowest position asked
there), hands each waiter the entries after its own position, and ends when nobody waits. So a
process holds one blocked Redis connection for replies however many sockets follow them (and one
for user events, chat/sync.py).

A waiter that registers while the reader is blocked, on a stream (or from a position) that read
does not cover, must not wait for it to time out: the reader's XREAD also names a wake stream
private to the reader, and the newcomer appends to it. So that a follower's next wait (once it
has sent the frames of what it got) seldom needs a wake, a stream whose waiters were just handed
entries stays in the reads for LINGER_S after them. The last waiter to leave wakes the reader
too, so the read ends at once rather than stay pending (a read still pending when its event loop
closed held the loop's shutdown for the Redis socket timeout in the PostgreSQL tests). A read is
never cancelled: a cancelled redis-py command drops its connection.

Measured with bench/reply_reads.py: against one XREAD per follower, no more CPU for 10 replies
followed once, about 30 % less for 200, 70 % less for 20 replies followed by 10 tabs each.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from . import streams

BLOCK_MS = 5000  # the reader's longest wait (newcomers and the last leaver wake it sooner)
COUNT = 500  # entries per stream and read, as streams.read_many
WAKE_TTL_S = 60  # a wake stream left by a process that died expires
LINGER_S = 1.0  # how long a stream stays in the reads after its waiters were handed entries


@dataclass(eq=False)
class Waiter:
    """One caller waiting for entries of some streams, each after its own seq."""

    after: dict[str, int]  # stream key → the seq it has read up to
    request_ids: dict[str, str]  # stream key → request id
    future: asyncio.Future = field(repr=False)


class StreamReader:
    """The reader of reply streams for one event loop: one task, one XREAD for every waiter."""

    def __init__(self) -> None:
        self.waiters: dict[str, list[Waiter]] = {}  # stream key → its waiters, in arrival order
        # stream key → (seq, until when): a stream whose waiters were just handed entries stays in
        # the next reads a while, after what they were handed, so that their next wait (a socket
        # reads again once it has sent the frames) finds it covered and needs no wake
        self.lingering: dict[str, tuple[int, float]] = {}
        self.task: asyncio.Task | None = None
        self.in_flight: dict[str, int] | None = None  # stream key → seq the pending XREAD reads after
        self.woken = False  # the pending XREAD was sent a wake already
        self.wake_key = f"inference:wake:{uuid.uuid4().hex}"
        self.wake_seen = "0-0"  # the last wake entry the reader has read
        self.wake_tasks: set[asyncio.Task] = set()  # held: asyncio keeps only weak references

    async def read_many(self, positions: dict[str, int], block_ms: int) -> list[tuple[str, int, str, dict]]:
        """Entries (request id, seq, kind, data) with seq > each request's position; waits up to
        block_ms (0: no limit) for the first one. The data dicts are shared by every waiter of
        the read: read them, do not change them."""
        waiter = Waiter(
            after={streams.stream_key(rid): int(seq) for rid, seq in positions.items()},
            request_ids={streams.stream_key(rid): rid for rid in positions},
            future=asyncio.get_running_loop().create_future(),
        )
        self._join(waiter)
        timer = asyncio.get_running_loop().call_later(block_ms / 1000, self._time_out, waiter) if block_ms else None
        try:
            return await waiter.future
        finally:
            if timer is not None:
                timer.cancel()
            self._leave(waiter)

    # --- waiters -------------------------------------------------------------------------------
    def _join(self, waiter: Waiter) -> None:
        for key in waiter.after:
            self.waiters.setdefault(key, []).append(waiter)
        if self.task is None:
            self.task = asyncio.create_task(self._read())
        elif self.in_flight is not None and any(
            self.in_flight.get(key, seq + 1) > seq for key, seq in waiter.after.items()
        ):
            self._wake()  # the pending read would not return what it waits for

    def _time_out(self, waiter: Waiter) -> None:
        if not waiter.future.done():
            waiter.future.set_result([])  # nothing came within its block time
        self._leave(waiter)

    def _leave(self, waiter: Waiter) -> None:
        for key in waiter.after:
            waiting = self.waiters.get(key)
            if waiting is not None and waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del self.waiters[key]
        if not waiter.future.done():
            waiter.future.cancel()
        elif not waiter.future.cancelled():
            waiter.future.exception()  # handed to a caller that left (cancelled): not an error to log
        if not self.waiters and self.in_flight is not None:
            self._wake()  # nobody left: end the pending read now rather than leave it behind

    def _wake(self) -> None:
        """Make the pending XREAD return now (once per read; never while the loop shuts down)."""
        if self.woken or self.task is None or self.task.cancelling():
            return
        self.woken = True
        task = asyncio.create_task(self._append_wake())
        self.wake_tasks.add(task)
        task.add_done_callback(self.wake_tasks.discard)

    async def _append_wake(self) -> None:
        try:
            pipe = streams.async_client().pipeline(transaction=False)
            pipe.xadd(self.wake_key, {"w": "1"}, maxlen=1, approximate=False)
            pipe.expire(self.wake_key, WAKE_TTL_S)
            await pipe.execute()
        except RedisError:
            pass  # the read then ends within BLOCK_MS

    # --- the reader ----------------------------------------------------------------------------
    async def _read(self) -> None:
        try:
            while self.waiters:
                now = asyncio.get_running_loop().time()
                self.lingering = {k: v for k, v in self.lingering.items() if v[1] > now and k not in self.waiters}
                wanted = {key: seq for key, (seq, _until) in self.lingering.items()}
                wanted |= {key: min(w.after[key] for w in waiting) for key, waiting in self.waiters.items()}
                self.in_flight, self.woken = wanted, False
                try:
                    result = await streams.async_client().xread(
                        {**{key: streams.entry_id(seq) for key, seq in wanted.items()}, self.wake_key: self.wake_seen},
                        block=BLOCK_MS,
                        count=COUNT,
                    )
                    entries = self._decode(result or [])
                except Exception as exc:
                    # Redis down (or an entry that does not decode): every waiter hears it, as it
                    # would have from its own read, and leaves.
                    self.in_flight = None
                    self._fail(exc)
                    continue
                finally:
                    self.in_flight = None
                self._hand_out(wanted, entries)
        finally:
            if self.task is asyncio.current_task():  # not a newer reader started after a cancel
                self.task = None
                self.lingering.clear()

    def _decode(self, result: list) -> dict[str, list[tuple[int, str, dict]]]:
        """An XREAD's answer as stream key → [(seq, kind, data)] (noting the wake entries read)."""
        entries = {}
        for key, items in result:
            key = key.decode() if isinstance(key, bytes) else key
            if key == self.wake_key:
                last = items[-1][0]
                self.wake_seen = last.decode() if isinstance(last, bytes) else last
            elif items:
                entries[key] = [(streams.seq_of(eid), *streams.decode_entry(fields)) for eid, fields in items]
        return entries

    def _hand_out(self, read_after: dict[str, int], entries: dict[str, list[tuple[int, str, dict]]]) -> None:
        """Hand each waiter the entries after its position, where the read started at or before
        it: a waiter that joined at an earlier position than the read's (it woke the reader)
        would miss the entries between, so it gets that stream from the next read."""
        handed: set[Waiter] = set()
        for key in entries:
            for waiter in self.waiters.get(key, []):
                if waiter in handed or waiter.future.done():
                    continue  # a cancelled caller's waiter stays until its task resumes and leaves
                found = [
                    (waiter.request_ids[k], seq, kind, data)
                    for k, after in waiter.after.items()
                    if read_after.get(k, after + 1) <= after
                    for seq, kind, data in entries.get(k, ())
                    if seq > after
                ]
                if found:
                    handed.add(waiter)
                    waiter.future.set_result(found)
        for waiter in handed:
            self._leave(waiter)
        # Entries of a lingering stream that nobody waited for are left in Redis (its next waiter
        # wakes the reader); one whose waiters all just left lingers after what they got.
        until = asyncio.get_running_loop().time() + LINGER_S
        for key, items in entries.items():
            self.lingering.pop(key, None)
            if key not in self.waiters and any(key in w.after for w in handed):
                self.lingering[key] = (items[-1][0], until)

    def _fail(self, exc: Exception) -> None:
        for waiter in {w for waiting in self.waiters.values() for w in waiting}:
            if not waiter.future.done():
                waiter.future.set_exception(exc)
            self._leave(waiter)


_readers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StreamReader] = weakref.WeakKeyDictionary()


def stream_reader() -> StreamReader:
    """The reader of the running event loop (daphne runs one; tests may run several)."""
    loop = asyncio.get_running_loop()
    reader = _readers.get(loop)
    if reader is None:
        reader = _readers[loop] = StreamReader()
    return reader


async def read_many(positions: dict[str, int], block_ms: int | None) -> list[tuple[str, int, str, dict]]:
    """As streams.read_many: entries of several requests' streams as (request id, seq, kind,
    data), those after each position, in order; waits up to block_ms for the first one (None: no
    wait, read at once). A wait goes through the event loop's one reader."""
    if not positions:
        return []
    if block_ms is None:
        return await streams.read_many(positions, None)
    return await stream_reader().read_many(positions, block_ms)


async def read_after(request_id: str, after_seq: int, block_ms: int | None) -> list[tuple[int, str, dict]]:
    """As streams.read_after: entries with seq > after_seq; waits up to block_ms for the first."""
    return [entry[1:] for entry in await read_many({request_id: after_seq}, block_ms)]
