"""A reply that ends while its reader checks a quiet stream. The worker appends a reply's last
deltas, stores its row, then appends its `done`; a reader that found the stream quiet and asked
the database in between saw the row ended and no `done`, and ended the reply without those deltas
(CI's 50-client test once got an empty reply whose row held its text). Both readers, the chat
socket and the API, now hear "ended" only once they have read every entry of the stream
(replies.settle_quiet_reply). No real worker here: its steps are done by hand at the worst
moment, inside the database call."""

import asyncio
from types import SimpleNamespace

import pytest

from .socket_client import connect, receive, send, until_done

pytestmark = pytest.mark.django_db(transaction=True)


def worker_ends_it_during_the_check(monkeypatch):
    """Make the next quiet-stream check find the reply ended by a "worker" that appended its last
    deltas and stored its row (not yet its `done`) just before."""
    from chat import replies
    from inference import streams
    from inference.protocol import Done

    real = replies.settle_quiet_reply
    ended = set()

    def check(message_id, after, **options):
        if message_id not in ended:
            ended.add(message_id)
            pipe = streams.client().pipeline(transaction=False)
            streams.append(pipe, replies.request_id(message_id), 1, "delta", {"text": "Hel"})
            streams.append(pipe, replies.request_id(message_id), 2, "delta", {"text": "lo"})
            pipe.execute()
            assert replies.end(message_id, content="Hello", done=Done("stop", completion_tokens=2))
        return real(message_id, after, **options)

    monkeypatch.setattr(replies, "settle_quiet_reply", check)


async def test_the_chat_socket_sends_the_last_deltas_of_a_reply_that_ended_while_it_asked(
    alice, tiny_model, monkeypatch
):
    worker_ends_it_during_the_check(monkeypatch)
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "Anyone there?"})
    started = await receive(ws)
    deltas, done = await until_done(ws, started["message"], timeout=20)
    assert "".join(d["text"] for d in deltas) == "Hello"
    assert done["finish_reason"] == "stop"
    await ws.disconnect()


def test_the_api_reader_also_sends_the_last_deltas_of_a_reply_that_ended_while_it_asked(alice, tiny_model, monkeypatch):
    from api import completions
    from chat import replies
    from chat.models import Conversation, Message
    from inference import streams

    conversation = Conversation.objects.create(user=alice, title="API", model=tiny_model)
    reply = Message.objects.create(
        conversation=conversation, role=Message.Role.ASSISTANT, status=Message.Status.QUEUED, model=tiny_model
    )
    request_id = replies.request_id(reply.pk)
    streams.client().delete(streams.stream_key(request_id))
    worker_ends_it_during_the_check(monkeypatch)
    monkeypatch.setattr(completions, "IDLE_CHECK_S", 0)

    async def read():
        return [(text, done) async for _, text, done in completions.events(SimpleNamespace(request_ids=[request_id]))]

    try:
        events = asyncio.run(asyncio.wait_for(read(), timeout=20))
    finally:
        streams.client().delete(streams.stream_key(request_id))
    assert "".join(text for text, _ in events) == "Hello"
    assert events[-1][1]["finish_reason"] == "stop"
