"""Every tab of a user in step: what one socket (or an HTTP call) does reaches the user's other
sockets as chat.sync frames, never the socket that did it, never another user."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from .socket_client import connect, receive, send, until_done

pytestmark = pytest.mark.django_db(transaction=True)


async def next_sync(ws, timeout: float = 10) -> dict:
    while True:
        frame = await receive(ws, timeout)
        if frame["type"] == "chat.sync":
            return frame


async def nothing_more(ws) -> bool:
    return await ws.receive_nothing(timeout=0.5)


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
