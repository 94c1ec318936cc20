"""Every tab of a user sees the same conversations live: what one tab (or an HTTP call) does is
published on the user's event stream in Redis, and every socket of that user forwards it to its
page as a `chat.sync` frame (docs/protocol.md). A tab skips the events it caused itself.

Sockets do not read the streams themselves: they `subscribe` to the `UserEvents` hub of their
event loop, whose one reader task waits on the streams of every subscribed user with a single
XREAD, so a process holds one blocked Redis connection for user events however many tabs it serves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from django.conf import settings
from redis.exceptions import RedisError

from inference import streams

logger = logging.getLogger(__name__)

KEEP = 200  # events kept per user (a socket only reads what comes after it connected)
BLOCK_MS = 1000  # the reader's longest wait: a user subscribed meanwhile is read from the next call


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


async def position(user_id: int) -> str:
    """The id of the newest event ("0-0" when there is none or Redis cannot tell), so a socket
    reads only what comes after it connected."""
    try:
        entries = await streams.async_client().xrevrange(key(user_id), count=1)
    except RedisError:
        return "0-0"
    return _text(entries[0][0]) if entries else "0-0"


def _id_key(entry_id: str) -> tuple[int, int]:
    """A stream id ("1700000000000-3") as a tuple that sorts like Redis orders ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(eq=False)
class Subscription:
    """One socket's interest in its user's events: `callback` gets each event after `seen`."""

    user_id: int
    callback: Callable[[dict], Awaitable[None]]
    seen: tuple[int, int] = field(default=(0, 0))  # the last event id it was handed (or skipped)


class UserEvents:
    """The reader of user event streams for one event loop.

    One background task does one XREAD over the streams of every user with a subscriber,
    keeping each stream's last id read, and hands each event to that user's subscribers, in
    order, once each. It starts with the first subscriber and ends when the last one leaves.
    """

    def __init__(self) -> None:
        self.subscriptions: dict[int, list[Subscription]] = {}
        self.cursors: dict[int, str] = {}  # user id → the last stream id the reader asked after
        self.task: asyncio.Task | None = None

    async def subscribe(
        self, user_id: int, callback: Callable[[dict], Awaitable[None]], after: str | None = None
    ) -> Subscription:
        """Await `callback(event)` for each event published for `user_id` after the event `after`
        (by default, the newest one now: see `position`)."""
        if after is None:
            after = await position(user_id)
        subscription = Subscription(int(user_id), callback, _id_key(after))
        cursor = self.cursors.get(subscription.user_id)
        if cursor is None or _id_key(after) < _id_key(cursor):
            # Reading again from an earlier id is safe: each subscription skips what it has seen.
            self.cursors[subscription.user_id] = after
        self.subscriptions.setdefault(subscription.user_id, []).append(subscription)
        if self.task is None:
            self.task = asyncio.create_task(self._read())
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop handing events to it (the reader ends, within BLOCK_MS, when none is left)."""
        subscribers = self.subscriptions.get(subscription.user_id, [])
        if subscription in subscribers:
            subscribers.remove(subscription)
        if not subscribers:
            self.subscriptions.pop(subscription.user_id, None)
            self.cursors.pop(subscription.user_id, None)
        if not self.subscriptions and self.task is not None:
            # Nobody left to read for: stop now rather than leave a blocking read behind (a
            # read still pending when its event loop closes held the loop's shutdown for the
            # Redis socket timeout, 30 s, in the tests on PostgreSQL).
            self.task.cancel()
            self.task = None

    async def _read(self) -> None:
        try:
            while self.subscriptions:
                wanted = {key(user_id): self.cursors[user_id] for user_id in self.subscriptions}
                try:
                    result = await streams.async_client().xread(wanted, block=BLOCK_MS, count=100)
                except RedisError:
                    await asyncio.sleep(1)
                    continue
                for stream, entries in result or []:
                    user_id = int(_text(stream).split(":")[2])
                    for entry_id, fields in entries:
                        entry_id = _text(entry_id)
                        if user_id in self.cursors and _id_key(entry_id) > _id_key(self.cursors[user_id]):
                            self.cursors[user_id] = entry_id
                        event = json.loads(fields.get(b"data") or fields.get("data"))
                        await self._hand_out(user_id, _id_key(entry_id), event)
        finally:
            if self.task is asyncio.current_task():  # not a newer reader started after a cancel
                self.task = None

    async def _hand_out(self, user_id: int, entry_id: tuple[int, int], event: dict) -> None:
        for subscription in list(self.subscriptions.get(user_id, [])):
            if entry_id <= subscription.seen:
                continue
            subscription.seen = entry_id
            try:
                await subscription.callback(event)
            except Exception:
                # One broken socket must not stop the events of every other tab in the process.
                logger.exception("a user event subscriber failed")


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, UserEvents] = weakref.WeakKeyDictionary()


def user_events() -> UserEvents:
    """The hub of the running event loop (daphne runs one; tests may run several)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = UserEvents()
    return hub


async def subscribe(
    user_id: int, callback: Callable[[dict], Awaitable[None]], after: str | None = None
) -> Subscription:
    """Await `callback(event)` for each event of `user_id` published after `after` (by
    default, after this call)."""
    return await user_events().subscribe(user_id, callback, after)


def unsubscribe(subscription: Subscription) -> None:
    user_events().unsubscribe(subscription)
