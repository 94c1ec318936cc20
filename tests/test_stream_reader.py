"""The one reader of reply streams per event loop (inference/stream_reader.py): every waiter gets
the entries of its own streams after its own position, never another's, without waiting for the
reader's block to end, and the reader holds one blocked Redis connection and ends when nobody
waits. Real Redis, no worker: the test appends the entries a worker would."""

from __future__ import annotations

import asyncio
import time
import uuid

from inference import stream_reader, streams


def request_ids(count: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"test-reader-{run}-{i}" for i in range(count)]


async def append(request_id: str, first: int, last: int, done: bool = False) -> None:
    """Deltas first..last (text "<request id>:<seq>"), as a worker appends them; then `done`."""
    pipe = streams.async_client().pipeline(transaction=False)
    for seq in range(first, last + 1):
        streams.append(pipe, request_id, seq, "delta", {"text": f"{request_id}:{seq}"})
    if done:
        streams.append(pipe, request_id, last + 1, "done", {"finish_reason": "stop"})
    await pipe.execute()


async def until(condition, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def blocked_reads() -> list[dict]:
    """This process's async connections blocked in a command right now (CLIENT LIST flag `b`)."""
    name = streams.client_name("async")
    return [c for c in streams.client().client_list() if c.get("name") == name and "b" in c.get("flags", "")]


async def test_each_of_many_waiters_gets_exactly_the_entries_after_its_own_position_of_its_own_streams():
    ids = request_ids(30)
    for rid in ids[:10]:
        await append(rid, 1, 3)  # already there when the waiters come
    reader = stream_reader.stream_reader()
    # Two waiters per stream at different positions, and some waiters of several streams at once.
    waits = {}
    for i, rid in enumerate(ids):
        waits[(rid, 0)] = asyncio.create_task(stream_reader.read_after(rid, 0, 10_000))
        waits[(rid, 2)] = asyncio.create_task(stream_reader.read_after(rid, 2, 10_000))
        if i % 3 == 0:
            waits[(rid, "many")] = asyncio.create_task(
                stream_reader.read_many({rid: 1, ids[(i + 1) % len(ids)]: 5}, 10_000)
            )
    await asyncio.sleep(0.2)
    for rid in ids[10:]:
        await append(rid, 1, 6, done=True)
    results = dict(zip(waits, await asyncio.wait_for(asyncio.gather(*waits.values()), 10), strict=True))

    for i, rid in enumerate(ids):
        last = 3 if i < 10 else 7  # the entries it had when the first read found it
        for after in (0, 2):
            entries = results[(rid, after)]
            assert entries, f"{rid} after {after} got nothing"
            seqs = [seq for seq, _kind, _data in entries]
            assert seqs == list(range(after + 1, after + 1 + len(seqs))) and seqs[-1] <= last
            assert all(data.get("text", f"{rid}:{seq}") == f"{rid}:{seq}" for seq, _kind, data in entries)
        if i % 3 == 0:
            neighbour = ids[(i + 1) % len(ids)]
            for request_id, seq, _kind, data in results[(rid, "many")]:
                assert request_id in (rid, neighbour)
                assert seq > (1 if request_id == rid else 5)
                assert data.get("text", f"{request_id}:{seq}") == f"{request_id}:{seq}"
    await until(lambda: reader.task is None)
    assert not reader.waiters


async def test_a_waiter_that_joins_while_the_reader_is_blocked_gets_its_entry_at_once():
    quiet, late, present = request_ids(3)
    await append(present, 1, 2)
    reader = stream_reader.stream_reader()
    first = asyncio.create_task(stream_reader.read_after(quiet, 0, 20_000))
    await until(lambda: reader.in_flight is not None)
    await asyncio.sleep(0.3)  # the reader's XREAD is blocked in Redis now, for up to BLOCK_MS
    assert [c["cmd"] for c in blocked_reads()] == ["xread"]

    # Entries already in a stream the blocked read does not name: returned at once.
    started = time.monotonic()
    assert [seq for seq, *_ in await stream_reader.read_after(present, 0, 20_000)] == [1, 2]
    assert time.monotonic() - started < 1, "the newcomer waited for the blocked read to time out"

    # A newcomer on a quiet stream: its first entry reaches it at once.
    waiting = asyncio.create_task(stream_reader.read_after(late, 0, 20_000))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await append(late, 1, 1)
    assert await asyncio.wait_for(waiting, 2) == [(1, "delta", {"text": f"{late}:1"})]
    assert time.monotonic() - started < 1
    assert not first.done()  # the first waiter's stream is still quiet: it goes on waiting

    await append(quiet, 1, 1, done=True)
    assert (await asyncio.wait_for(first, 2))[0] == (1, "delta", {"text": f"{quiet}:1"})
    await until(lambda: reader.task is None)
    assert not blocked_reads()


async def test_a_waiter_behind_the_blocked_read_gets_every_entry_after_its_position_not_only_the_new_ones():
    """A tab that resumes a reply from an earlier seq than another tab's read (a reload) wakes the
    reader; an entry that ends that read meanwhile must not reach it without the ones before."""
    (stream,) = request_ids(1)
    await append(stream, 1, 4)
    reader = stream_reader.stream_reader()
    ahead = asyncio.create_task(stream_reader.read_after(stream, 4, 20_000))
    await until(lambda: reader.in_flight is not None)
    await asyncio.sleep(0.2)
    behind = asyncio.create_task(stream_reader.read_after(stream, 2, 20_000))
    await append(stream, 5, 5)  # reaches Redis before the reader's wake: the read after 4 returns it
    assert [seq for seq, *_ in await asyncio.wait_for(ahead, 2)] == [5]
    assert [seq for seq, *_ in await asyncio.wait_for(behind, 2)] == [3, 4, 5]
    await until(lambda: reader.task is None)


async def test_entries_that_come_while_a_follower_sends_its_frames_reach_its_next_wait():
    """Between two waits of a follower its stream stays in the reader's reads for a while (its next
    wait then needs no wake); what comes meanwhile must reach that next wait, not be dropped."""
    followed, busy = request_ids(2)
    reader = stream_reader.stream_reader()
    other = asyncio.create_task(stream_reader.read_after(busy, 0, 20_000))  # keeps the reader reading
    first = asyncio.create_task(stream_reader.read_after(followed, 0, 20_000))
    await until(lambda: reader.in_flight is not None and streams.stream_key(followed) in reader.in_flight)
    await append(followed, 1, 1)
    assert [seq for seq, *_ in await asyncio.wait_for(first, 2)] == [1]
    await until(lambda: reader.in_flight is not None and streams.stream_key(followed) in reader.lingering)
    await append(followed, 2, 3)  # nobody waits on it right now: the reader reads them for nobody
    await asyncio.sleep(0.2)
    started = time.monotonic()
    assert [seq for seq, *_ in await asyncio.wait_for(stream_reader.read_after(followed, 1, 20_000), 2)] == [2, 3]
    assert time.monotonic() - started < 1
    await append(busy, 1, 1, done=True)
    await asyncio.wait_for(other, 2)
    await until(lambda: reader.task is None)
    assert not reader.lingering


async def test_a_quiet_wait_ends_empty_after_its_block_time_and_the_reader_then_stops_at_once():
    (quiet,) = request_ids(1)
    reader = stream_reader.stream_reader()
    started = time.monotonic()
    assert await stream_reader.read_after(quiet, 0, 300) == []
    assert 0.25 < time.monotonic() - started < 2
    # The last waiter left: the blocked read is woken rather than left pending for BLOCK_MS.
    started = time.monotonic()
    await until(lambda: reader.task is None, timeout=2)
    assert time.monotonic() - started < 1
    assert not blocked_reads()


async def test_cancelled_waiters_leave_the_reader_and_the_others_still_get_their_entries():
    ids = request_ids(20)
    reader = stream_reader.stream_reader()
    waits = [asyncio.create_task(stream_reader.read_after(rid, 0, 20_000)) for rid in ids]
    await until(lambda: reader.in_flight is not None and len(reader.in_flight) == len(ids))
    for task in waits[::2]:  # their sockets closed
        task.cancel()
    await asyncio.gather(*waits[::2], return_exceptions=True)
    assert set(reader.waiters) == {streams.stream_key(rid) for rid in ids[1::2]}
    for rid in ids:
        await append(rid, 1, 1)
    for rid, task in zip(ids[1::2], waits[1::2], strict=True):
        assert await asyncio.wait_for(task, 2) == [(1, "delta", {"text": f"{rid}:1"})]
    await until(lambda: reader.task is None)
    assert not reader.waiters and not blocked_reads()


async def test_waiters_cancelled_or_timing_out_while_entries_flow_never_break_the_reader():
    """Sockets close (their forwarders are cancelled) and waits time out while the reader hands
    out entries: a waiter whose caller is gone but has not left yet is skipped, and the reader
    goes on serving the others."""
    ids = request_ids(10)
    reader = stream_reader.stream_reader()
    readers_seen: list[asyncio.Task] = []
    got = {rid: 0 for rid in ids}

    async def watch_reader():
        while True:
            if reader.task is not None and reader.task not in readers_seen:
                readers_seen.append(reader.task)
            await asyncio.sleep(0)

    async def write(rid):
        for seq in range(1, 101):
            await append(rid, seq, seq)
            await asyncio.sleep(0.002)

    async def follow(rid):
        last = 0
        while last < 100:
            entries = await stream_reader.read_after(rid, last, 20)  # many time out
            if entries:
                last = entries[-1][0]
                got[rid] = last

    async def closing_tab(rid):
        for _ in range(60):
            task = asyncio.create_task(stream_reader.read_after(rid, 0, 20_000))
            await asyncio.sleep(0.003)
            task.cancel()

    watcher = asyncio.create_task(watch_reader())
    await asyncio.wait_for(
        asyncio.gather(*map(write, ids), *map(follow, ids), *(closing_tab(rid) for rid in ids for _ in range(3))), 30
    )
    await until(lambda: reader.task is None)
    watcher.cancel()
    assert got == {rid: 100 for rid in ids}
    assert readers_seen and all(t.done() and not t.cancelled() and t.exception() is None for t in readers_seen)
    assert not reader.waiters


async def test_without_a_block_time_the_read_returns_at_once_as_streams_read_many_does():
    stream, empty = request_ids(2)
    await append(stream, 1, 2, done=True)
    expected = await streams.read_many({stream: 1, empty: 0}, None)
    assert await stream_reader.read_many({stream: 1, empty: 0}, None) == expected
    assert [seq for _rid, seq, *_ in expected] == [2, 3]
    assert await stream_reader.read_after(empty, 0, None) == []
    assert stream_reader.stream_reader().task is None  # no reader for a read that does not wait


async def test_a_redis_error_reaches_every_waiter_of_the_read_and_the_reader_stops(settings):
    """Redis unreachable: each waiter raises as its own read would have (its caller retries)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from .stack import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/15"  # this test's loop has no client yet
    ids = request_ids(3)
    results = await asyncio.gather(*(stream_reader.read_after(rid, 0, 2000) for rid in ids), return_exceptions=True)
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    reader = stream_reader.stream_reader()
    await until(lambda: reader.task is None)
    assert not reader.waiters
