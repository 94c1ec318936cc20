"""Hundreds of tabs share their process's Redis connections: a web process's sockets hold at
most REDIS_MAX_CONNECTIONS (16; 20 with the process's other clients) whatever their number,
because the blocking reads are the event loop's two readers (user events: chat/sync.py; reply
streams: inference/stream_reader.py) and every other command waits for a free connection of the
capped pool. Through the real consumer, with the in-process inference worker; counted with
CLIENT LIST by the pool's name."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from chat import sync
from chatsite.asgi import application
from inference import stream_reader, streams

from .socket_client import receive, send

pytestmark = pytest.mark.django_db(transaction=True)

USERS = 30
TABS = 10  # per user: 300 sockets
SENDERS = 8  # users who send a message from their first tab; their other tabs follow the reply


class ConnectionSampler:
    """Counts this process's async Redis connections (and those blocked in a command) every
    50 ms from a thread, with a client of its own; keeps the most seen."""

    def __init__(self) -> None:
        self.name = streams.client_name("async")
        self.most = self.most_blocked = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def count(self, conn: redis.Redis) -> tuple[int, int]:
        ours = [c for c in conn.client_list() if c.get("name") == self.name]
        return len(ours), sum("b" in c.get("flags", "") for c in ours)

    def _run(self) -> None:
        with redis.Redis.from_url(settings.REDIS_URL) as conn:
            while not self.stopping.is_set():
                total, blocked = self.count(conn)
                self.most, self.most_blocked = max(self.most, total), max(self.most_blocked, blocked)
                time.sleep(0.05)

    def __enter__(self) -> ConnectionSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)


@sync_to_async
def logged_in_users(django_user_model, count: int) -> list[tuple[int, str]]:
    """`count` users, each with a session cookie: (user id, cookie)."""
    users = []
    for i in range(count):
        user = django_user_model.objects.create_user(f"tabs-{i}", password="tabs-pass-123")
        client = Client()
        client.force_login(user)
        users.append((user.pk, client.cookies["sessionid"].value))
    return users


async def open_tab(cookie: str) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", f"sessionid={cookie}".encode())]
    ws = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await ws.connect(timeout=30)
    assert connected
    return ws


async def follow_from_sync(ws: WebsocketCommunicator) -> list[dict]:
    """A tab of a sender: wait for the reply another tab started (chat.sync), follow it like the
    page does (chat.resume), and return every frame until its chat.done."""
    frames = [await receive(ws)]
    assert frames[0]["type"] == "chat.sync" and frames[0]["event"] == "started", frames
    await send(ws, {"type": "chat.resume", "message": frames[0]["message"], "after": 0})
    while frames[-1]["type"] != "chat.done":
        frames.append(await receive(ws))
    return frames


async def send_and_follow(ws: WebsocketCommunicator, content: str) -> list[dict]:
    await send(ws, {"type": "chat.send", "content": content, "params": {"max_tokens": 12}})
    frames = [await receive(ws)]
    assert frames[0]["type"] == "chat.started", frames
    while frames[-1]["type"] != "chat.done":
        frames.append(await receive(ws))
    return frames


def reply_text(frames: list[dict]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "chat.delta")


async def test_three_hundred_tabs_share_a_capped_pool_of_redis_connections_and_hear_only_their_own_users_events(
    django_user_model, worker, tiny_model
):
    assert settings.REDIS_MAX_CONNECTIONS <= 16  # the default: 20 with the process's other clients
    users = await logged_in_users(django_user_model, USERS)
    with ConnectionSampler() as sampler:
        # All at once, as after a server restart: each socket's connect reads its user's last event.
        tabs = await asyncio.gather(*(open_tab(cookie) for _user_id, cookie in users for _tab in range(TABS)))
        by_user = [tabs[i * TABS : (i + 1) * TABS] for i in range(USERS)]

        senders, others = by_user[:SENDERS], by_user[SENDERS:]
        frames = await asyncio.wait_for(
            asyncio.gather(
                *(send_and_follow(user_tabs[0], f"Hello from user {i}") for i, user_tabs in enumerate(senders)),
                *(follow_from_sync(ws) for user_tabs in senders for ws in user_tabs[1:]),
            ),
            timeout=120,
        )
        silent = await asyncio.gather(*(ws.receive_nothing(timeout=0.5) for user_tabs in others for ws in user_tabs))
    assert sampler.most <= settings.REDIS_MAX_CONNECTIONS, f"{sampler.most} Redis connections for {len(tabs)} sockets"
    assert sampler.most_blocked <= 2, f"{sampler.most_blocked} blocking reads at once"

    own, followed = frames[:SENDERS], frames[SENDERS:]
    for i, user_tabs in enumerate(senders):
        message = own[i][0]["message"]
        assert own[i][-1]["type"] == "chat.done" and own[i][-1]["message"] == message
        tab_frames = followed[i * (TABS - 1) : (i + 1) * (TABS - 1)]
        for frames_of_tab in tab_frames:
            # Every tab of the user heard of this reply, followed all of it, and nothing else.
            assert {f.get("message") for f in frames_of_tab} == {message}
            assert reply_text(frames_of_tab) == reply_text(own[i])
        assert all(await asyncio.gather(*(ws.receive_nothing(timeout=0.2) for ws in user_tabs)))
    assert all(silent), "a tab heard of another user's reply"

    # Closing the sockets releases their share: no subscription, no waiter, and (once the user
    # events' reader has seen its last subscriber go, within its block time) no blocked read.
    hub, replies = sync.user_events(), stream_reader.stream_reader()
    assert sum(len(subs) for subs in hub.subscriptions.values()) == len(tabs)
    await asyncio.gather(*(ws.disconnect() for ws in tabs))
    assert not hub.subscriptions and not replies.waiters
    deadline = time.monotonic() + sync.BLOCK_MS / 1000 + 2
    with redis.Redis.from_url(settings.REDIS_URL) as conn:
        while (hub.task or replies.task or sampler.count(conn)[1]) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        total, blocked = sampler.count(conn)
    assert hub.task is None and replies.task is None
    assert blocked == 0 and total <= settings.REDIS_MAX_CONNECTIONS
