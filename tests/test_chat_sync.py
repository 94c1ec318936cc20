"""Every tab of a user in step: what one socket (or an HTTP call) does reaches the user's other
sockets as chat.sync frames, never the socket that did it, never another user."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from chat import sync
from inference import streams

from .socket_client import connect, receive, send, until_done

pytestmark = pytest.mark.django_db(transaction=True)


async def next_sync(ws, timeout: float = 10) -> dict:
    while True:
        frame = await receive(ws, timeout)
        if frame["type"] == "chat.sync":
            return frame


async def nothing_more(ws) -> bool:
    return await ws.receive_nothing(timeout=0.5)


async def drain(ws, quiet: float = 1.5) -> list[dict]:
    """Every frame the socket is sent until it has been quiet for `quiet` seconds."""
    frames = []
    while not await ws.receive_nothing(timeout=quiet):
        frames.append(await receive(ws))
    return frames


async def reply_from(ws, content: str) -> tuple[int, list[dict]]:
    """Send a message; returns its reply's id and every frame received until the reply is done."""
    await send(ws, {"type": "chat.send", "content": content, "params": {"max_tokens": 2}})
    frames, message = [], None
    while True:
        frames.append(await receive(ws))
        if frames[-1]["type"] == "chat.started":
            message = frames[-1]["message"]
        elif frames[-1]["type"] == "chat.done" and frames[-1]["message"] == message:
            return message, frames


async def test_a_reply_started_in_one_tab_is_announced_to_the_others(alice, bob, worker):
    first, _ = await connect(alice)
    second, _ = await connect(alice)
    stranger, _ = await connect(bob)
    await asyncio.sleep(0.3)  # the sockets' event readers are waiting
    await send(first, {"type": "chat.send", "content": "Hello from tab one", "params": {"max_tokens": 4}})
    started = await receive(first)
    assert started["type"] == "chat.started"
    event = await next_sync(second)
    assert event["event"] == "started" and event["message"] == started["message"]
    assert event["conversation"] == started["conversation"] and event["user_content"] == "Hello from tab one"
    # The second tab follows the reply like the first (chat.resume), so it can stop it too.
    await send(second, {"type": "chat.resume", "message": event["message"], "after": 0})
    _, done = await until_done(second, event["message"])
    assert done["finish_reason"] in ("stop", "length")
    await until_done(first, started["message"])
    assert await nothing_more(first)  # its own event is not echoed back
    assert await nothing_more(stranger)
    for ws in (first, second, stranger):
        await ws.disconnect()


async def test_renames_and_deletes_over_http_reach_every_tab(alice, tiny_model):
    from chat.models import Conversation

    conversation = await sync_to_async(Conversation.objects.create)(user=alice, title="before", model=tiny_model)
    tab, _ = await connect(alice)
    await asyncio.sleep(0.3)
    client = Client()
    await sync_to_async(client.force_login)(alice)
    post = sync_to_async(client.post)
    await post(
        f"/api/conversations/{conversation.pk}/", json.dumps({"title": "after"}), content_type="application/json"
    )
    assert await next_sync(tab) == {
        "type": "chat.sync",
        "event": "renamed",
        "conversation": conversation.pk,
        "title": "after",
    }
    await post(f"/api/conversations/{conversation.pk}/delete/")
    assert (await next_sync(tab))["event"] == "deleted"
    await post("/api/conversations/delete-all/")
    assert (await next_sync(tab))["event"] == "deleted_all"
    await tab.disconnect()


async def test_every_tab_gets_the_others_events_once_through_one_reader_per_process(
    alice, bob, worker, monkeypatch, tiny_model
):
    from chat.models import Conversation

    # Count the blocking reads of user event streams: however many tabs are open, one at a time.
    client = streams.async_client()
    real_xread, reading, most_at_once, reads = client.xread, 0, 0, []

    async def counted_xread(wanted, *args, **kwargs):
        nonlocal reading, most_at_once
        keys = {k for k in wanted if k.startswith("chat:user:")}
        if not keys:
            return await real_xread(wanted, *args, **kwargs)
        reads.append(keys)
        reading += 1
        most_at_once = max(most_at_once, reading)
        try:
            return await real_xread(wanted, *args, **kwargs)
        finally:
            reading -= 1

    monkeypatch.setattr(client, "xread", counted_xread)
    conversation = await sync_to_async(Conversation.objects.create)(user=alice, title="before", model=tiny_model)
    alice_tabs = [(await connect(alice))[0] for _ in range(20)]
    bob_tabs = [(await connect(bob))[0] for _ in range(3)]
    both = {sync.key(alice.pk), sync.key(bob.pk)}
    for _ in range(50):  # the reader's next read (within BLOCK_MS) covers both users
        if reads and reads[-1] == both:
            break
        await asyncio.sleep(0.1)
    assert reads[-1] == both

    frames = {ws: [] for ws in alice_tabs + bob_tabs}
    sent = {}  # tab → the reply it started
    for ws in (alice_tabs[0], alice_tabs[7], bob_tabs[0]):
        sent[ws], frames[ws] = await reply_from(ws, "Hello from one of many tabs")
    http = Client()
    await sync_to_async(http.force_login)(alice)
    await sync_to_async(http.post)(
        f"/api/conversations/{conversation.pk}/", json.dumps({"title": "after"}), content_type="application/json"
    )
    for ws, more in zip(frames, await asyncio.gather(*(drain(ws) for ws in frames)), strict=True):
        frames[ws] += more

    for tabs, user_tabs_that_sent in ((alice_tabs, [alice_tabs[0], alice_tabs[7]]), (bob_tabs, bob_tabs[:1])):
        for ws in tabs:
            events = [frame for frame in frames[ws] if frame["type"] == "chat.sync"]
            started = sorted(e["message"] for e in events if e["event"] == "started")
            assert started == sorted(sent[other] for other in user_tabs_that_sent if other is not ws)
            renamed = [e for e in events if e["event"] == "renamed"]
            assert renamed == (
                [{"type": "chat.sync", "event": "renamed", "conversation": conversation.pk, "title": "after"}]
                if tabs is alice_tabs
                else []
            )
            assert all("origin" not in e for e in events)
    assert most_at_once == 1, f"{most_at_once} blocking reads of user events at once for 23 tabs"

    for ws in frames:
        await ws.disconnect()
    for _ in range(30):  # the reader ends within its block time once no tab is left
        if sync.user_events().task is None:
            break
        await asyncio.sleep(0.1)
    assert sync.user_events().task is None and not sync.user_events().subscriptions


def test_the_redis_client_of_an_event_loop_is_closed_with_the_loop():
    """Tests (and async_to_sync) run many short loops: none may leave Redis connections open."""

    async def one_loop():
        conn = streams.async_client()
        assert streams.async_client() is conn
        return conn, await conn.client_id()

    first, first_id = asyncio.run(one_loop())
    second, second_id = asyncio.run(one_loop())
    assert first is not second
    open_ids = {c["id"] for c in streams.client().client_list()}
    assert str(first_id) not in open_ids and str(second_id) not in open_ids
