"""The chat websocket: parses frames, checks ownership, and forwards reply streams from Redis.

`receive` never waits for a generation: each reply is forwarded by its own background task
that reads the reply's Redis stream, so a `chat.stop` frame is handled while tokens flow. The
task waits for new entries through the process's one reader of reply streams
(inference/stream_reader.py), as the socket's user events come from one reader (chat/sync.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid

from autobahn.exception import Disconnected  # what daphne raises on a send after the client left
from channels.db import aclose_old_connections, database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from redis.exceptions import RedisError

from chatsite import socket_sessions
from inference import stream_reader, streams
from inference.protocol import Done
from presets import quotas

from . import live, replies, sync, turns
from .models import Conversation, Message

logger = logging.getLogger(__name__)

IDLE_CHECK_MS = 2000  # how long a quiet stream waits before asking the reaper
MAX_FRAME_DEPTH = 8  # a frame nests 3 deep at most (frame → params → stop list)
DB_DRAIN_S = 10  # how long a closing socket waits for its database calls in flight


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.forwarders: dict[int, asyncio.Task] = {}
        self.closed = False
        self.socket_id = uuid.uuid4().hex
        self.sync_subscription: sync.Subscription | None = None
        authenticated = self.user is not None and self.user.is_authenticated
        # Where the user's events stand before the socket is open: everything published once
        # the page has it reaches the page (taken after, a busy process missed the "started"
        # of a reply sent by another tab in between).
        after = await sync.position(self.user.pk) if authenticated else None
        await self.accept()
        if not authenticated:
            return await self.refuse()
        self.sync_subscription = await sync.subscribe(self.user.pk, self._follow_user_events, after)
        # A socket that only listens still closes (4401) once its session ends elsewhere.
        self.session_watch = asyncio.create_task(socket_sessions.watch(self.scope, self.refuse))

    async def __call__(self, scope, receive, send) -> None:
        # However the socket ends (a disconnect, or its task cancelled by the server or a test
        # client that stopped waiting), its background reads end with it: a reply's read left
        # pending blocked the event loop's shutdown for the Redis socket timeout.
        try:
            await super().__call__(scope, receive, send)
        finally:
            forwarders = list(getattr(self, "forwarders", {}).values())
            if getattr(self, "session_watch", None) is not None:
                forwarders.append(self.session_watch)
            self._stop_background()
            # Nothing of a socket may touch the database after its task ended (a late reap racing
            # a test's table flush deadlocked PostgreSQL's TRUNCATE). So the socket's task waits
            # for its forwarders to end (a cancel swallowed inside redis-py lets one run on to its
            # next `closed` check), then for the database thread to finish what they queued (a
            # cancelled call runs on in its thread: a no-op queued behind it).
            if forwarders:
                await _outlast(asyncio.wait(forwarders), DB_DRAIN_S)
            await _outlast(aclose_old_connections(), DB_DRAIN_S)

    def _stop_background(self) -> None:
        self.closed = True
        for task in [*getattr(self, "forwarders", {}).values(), getattr(self, "session_watch", None)]:
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        if getattr(self, "sync_subscription", None) is not None:
            sync.unsubscribe(self.sync_subscription)
            self.sync_subscription = None

    async def refuse(self) -> None:
        """Close with 4401 (not logged in); later frames are ignored."""
        if self.closed and getattr(self, "refused", False):
            return
        self.refused = True
        self._stop_background()
        await self.close(code=4401)

    async def disconnect(self, code) -> None:
        self._stop_background()

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if self.closed:
            return
        if not await database_sync_to_async(socket_sessions.session_valid)(self.scope):
            # Logged out or deactivated since the socket opened.
            return await self.refuse()
        try:
            await self.handle_frame(text_data, bytes_data)
        except Exception:
            # Never let a frame kill the socket with a traceback: log it, answer plainly.
            logger.exception("frame handling failed")
            await self.error("internal_error", "Something went wrong handling that frame; it was not applied.")

    async def handle_frame(self, text_data, bytes_data) -> None:
        raw = text_data if text_data is not None else (bytes_data or b"")
        size = len(raw.encode() if isinstance(raw, str) else raw)
        if size > settings.CHAT_MAX_FRAME_BYTES:
            return await self.error(
                "frame_too_large", f"The frame is {size} bytes; the limit is {settings.CHAT_MAX_FRAME_BYTES}."
            )
        try:
            frame = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return await self.error("invalid_json", "The frame is not valid JSON.")
        except RecursionError:
            return await self.error("invalid_json", "The frame is nested too deeply.")
        if not isinstance(frame, dict):
            return await self.error("invalid_json", "The frame must be a JSON object.")
        if _deeper_than(frame, MAX_FRAME_DEPTH):
            # Before any recursive walk: a frame that parses can still be too deep to walk.
            return await self.error("invalid_json", "The frame is nested too deeply.")
        if _has_lone_surrogate(frame):
            return await self.error(
                "invalid_field", "The frame contains an unpaired UTF-16 surrogate (like \\ud800), which is not text."
            )
        handler = {
            "chat.send": self.on_send,
            "chat.stop": self.on_stop,
            "chat.regenerate": self.on_regenerate,
            "chat.edit": self.on_edit,
            "chat.resume": self.on_resume,
        }.get(frame["type"] if isinstance(frame.get("type"), str) else None)
        if handler is None:
            return await self.error(
                "unknown_type",
                "Unknown frame type; use chat.send, chat.stop, chat.regenerate, chat.edit or chat.resume.",
            )
        try:
            if handler in (self.on_send, self.on_regenerate, self.on_edit):
                await self.check_rate()
            await handler(frame)
        except turns.TurnError as exc:
            await self.error(exc.code, exc.message, frame.get("message"))
        except streams.QueueFull:
            await self.error(
                "server_busy",
                f"The server has {settings.INFERENCE_MAX_QUEUE} requests waiting already. Retry in a minute.",
                frame.get("message"),
            )
        except RedisError:
            logger.exception("Redis unavailable")
            await self.error(
                "unavailable", "The chat service is briefly unavailable (its Redis is down). Retry in a few seconds."
            )

    async def check_rate(self) -> None:
        """The user's message rate and daily token quota (per user, group, or the settings)."""
        try:
            await quotas.check(self.user)
        except quotas.QuotaExceeded as exc:
            raise turns.TurnError(exc.code, exc.message) from exc

    # --- handlers ------------------------------------------------------------------------------
    async def on_send(self, frame: dict) -> None:
        turn = await database_sync_to_async(turns.start_turn)(
            self.user,
            frame.get("conversation"),
            frame.get("content"),
            frame.get("model"),
            frame.get("params"),
            frame.get("system_prompt"),
            frame.get("template"),
            frame.get("origin"),
        )
        await self.start(turn)

    async def on_regenerate(self, frame: dict) -> None:
        turn = await database_sync_to_async(turns.regenerate)(self.user, frame.get("message"))
        await self.start(turn)

    async def on_edit(self, frame: dict) -> None:
        turn = await database_sync_to_async(turns.edit)(
            self.user, frame.get("message"), frame.get("content"), frame.get("model"), frame.get("params")
        )
        await self.start(turn)

    async def on_stop(self, frame: dict) -> None:
        message = await database_sync_to_async(turns.owned_message)(self.user, frame.get("message"))
        if message.is_active:
            await streams.request_stop(replies.request_id(message.pk))

    async def on_resume(self, frame: dict) -> None:
        message = await database_sync_to_async(turns.owned_message)(self.user, frame.get("message"))
        after = frame.get("after", 0)
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise turns.TurnError("invalid_field", "after must be a whole number (the last seq you received).")
        self.forward(message.pk, after, resumed=True)

    # --- streaming -----------------------------------------------------------------------------
    async def start(self, turn: turns.Turn) -> None:
        try:
            await streams.enqueue(turn.request)
        except (RedisError, streams.QueueFull) as exc:
            # Nothing half-saved: the stored reply is failed with the reason, not left queued
            # (and a regenerated reply's predecessor is kept).
            reason = "the server is too busy" if isinstance(exc, streams.QueueFull) else "Redis is down"
            done = Done("error", error=f"The reply could not be queued ({reason}). Send it again in a minute.")
            await database_sync_to_async(replies.end)(turn.reply.pk, content="", done=done)
            await database_sync_to_async(turns.abandon)(turn)
            raise
        if turn.replaces is not None:
            await database_sync_to_async(turns.drop_replaced)(turn)
        started = turn.started_frame()
        await self.send_json(started)
        self.forward(turn.reply.pk, 0)
        if turn.conversation.source != Conversation.Source.CHAT:
            return  # a comparison's: not in the chat list, so not in the other tabs either
        # The user's other tabs show it too, with its Stop button (chat.sync "started").
        event = {k: v for k, v in started.items() if k != "type"}
        event |= {"event": "started", "origin": self.socket_id}
        event.setdefault("user_content", turn.user_message.content)
        await sync.apublish(self.user.pk, event)

    async def _follow_user_events(self, event: dict) -> None:
        """Forward what the user's other tabs (and HTTP calls) did, as chat.sync frames (called by
        the process's one reader of user events, chat.sync.UserEvents)."""
        if not self.closed and event.get("origin") != self.socket_id:
            await self.send_json({"type": "chat.sync", **{k: v for k, v in event.items() if k != "origin"}})

    def forward(self, message_id: int, after: int, resumed: bool = False) -> None:
        previous = self.forwarders.pop(message_id, None)
        if previous is not None:
            previous.cancel()
        self.forwarders[message_id] = asyncio.create_task(self._forward(message_id, after, resumed))

    async def _forward(self, message_id: int, after: int, resumed: bool = False) -> None:
        """Send every delta with seq > after, then live ones, until the reply's `done`. The last
        delta of each batch read carries the rendering of the whole reply so far (chat/live.py)."""
        last = after
        request_id = replies.request_id(message_id)
        rendering = live.LiveMarkdown()
        needs_prefix = after > 0  # resumed: the rendering covers the text before `after` too
        # On resume the first pass does not wait, so a reply that already ended (or whose worker
        # died) is settled at once. A reply just queued is not asked about before its stream has
        # been quiet a while: 8 users sending at once queued 8 such database calls between their
        # turns in daphne's one database thread.
        quiet_since = time.monotonic() - (IDLE_CHECK_MS / 1000 if resumed else 0)
        block_ms = None
        failures = 0
        try:
            # Checked on every pass, not only through cancellation: a cancel that lands while
            # redis-py opens a connection can be swallowed (asyncio.wait_for on Python 3.11), and
            # the loop then read on until the reply ended, holding the event loop's shutdown.
            while not self.closed:
                try:
                    if needs_prefix:
                        rendering.add(await live.text_until(request_id, after))
                        needs_prefix = False
                    entries = await stream_reader.read_after(request_id, last, block_ms)
                    if self.closed:
                        return  # closed meanwhile (its cancel may have been swallowed): no database call
                    block_ms = IDLE_CHECK_MS
                    for index, (seq, kind, data) in enumerate(entries):
                        last = seq
                        if kind == "done":
                            await self.send_json(await database_sync_to_async(_done_frame)(message_id))
                            return
                        frame = {"type": "chat.delta", "message": message_id, "seq": seq, "text": data["text"]}
                        rendering.add(data["text"])
                        if index == len(entries) - 1 or entries[index + 1][1] == "done":
                            frame["html"] = await rendering.render()
                        await self.send_json(frame)
                    if entries:
                        await asyncio.sleep(rendering.pause_s)  # later deltas pile up: one render for them
                        quiet_since = time.monotonic()
                    elif time.monotonic() - quiet_since >= IDLE_CHECK_MS / 1000:
                        done = await database_sync_to_async(_settle)(message_id, last)
                        if done is not None:
                            await self.send_json(done)
                            return
                        quiet_since = time.monotonic()
                    failures = 0
                except RedisError:
                    if self.closed:
                        # The socket is gone (its reads were cancelled at shutdown, which the
                        # Redis client can report as a connection error): nobody to retry for.
                        return
                    # Redis restarting: retry for about half a minute, then tell the client.
                    failures += 1
                    if failures > 30:
                        raise
                    await asyncio.sleep(1)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("forwarding reply %s failed", message_id)
            with contextlib.suppress(Exception):  # the socket may be closed already
                await self.error("stream_failed", "Lost the reply's stream; reload the page to resume.", message_id)
        finally:
            if self.forwarders.get(message_id) is asyncio.current_task():
                del self.forwarders[message_id]

    async def send_json(self, data: dict) -> None:
        if self.closed:
            return
        try:
            await self.send(text_data=json.dumps(data))
        except Disconnected:
            # The client went away before daphne delivered its disconnect: a race, not a fault.
            self._stop_background()

    async def error(self, code: str, message: str, message_id=None) -> None:
        await self.send_json({"type": "chat.error", "code": code, "message": message, "message_id": message_id})


async def _outlast(awaitable, timeout: float) -> None:
    """Await `awaitable` for up to `timeout` seconds even through cancellation (the server, or a
    test client that stopped waiting, may cancel the socket's task, even twice); a cancel received
    meanwhile is raised afterwards."""
    waiter = asyncio.ensure_future(asyncio.wait_for(awaitable, timeout))
    cancelled = False
    while not waiter.done():
        try:
            await asyncio.shield(waiter)
        except asyncio.CancelledError:
            cancelled = True
    if waiter.exception() is not None:
        logger.warning("the database thread did not finish a closed socket's work: %r", waiter.exception())
    if cancelled:
        raise asyncio.CancelledError


def _deeper_than(value, limit: int) -> bool:
    """Whether lists and objects nest more than `limit` levels (iterative: any depth is safe)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _has_lone_surrogate(value) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _deleted_frame(message_id: int) -> dict:
    return {
        "type": "chat.done",
        "message": message_id,
        "finish_reason": "error",
        "usage": {},
        "html": "",
        "timing": {},
        "error": "This reply was deleted.",
    }


def _done_frame(message_id: int) -> dict:
    message = Message.objects.visible().filter(pk=message_id).first()
    return _deleted_frame(message_id) if message is None else replies.done_frame(message)


def _settle(message_id: int, after: int) -> dict | None:
    """For a quiet stream: reap the reply if its worker is gone; if it has ended (and its stream
    expired or was reaped meanwhile), return its done frame from the database."""
    ended = replies.settle_quiet_reply(message_id, after, visible_only=True)
    if ended is None:
        return None  # still generating, or the forwarder reads its `done` on its next pass
    return _deleted_frame(message_id) if ended.message is None else replies.done_frame(ended.message)
