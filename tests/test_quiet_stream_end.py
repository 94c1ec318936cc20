"""A reply that ends while its reader checks a quiet stream. The worker appends a reply's last
deltas, stores its row, then appends its `done`; a reader that found the stream quiet and asked
the database in between saw the row ended and no `done`, and ended the reply without those deltas
(CI's 50-client test once got an empty reply whose row held its text). Both readers, the chat
socket and the API, now read the stream once more before ending. No real worker here: its steps
are done by hand at the worst moment."""

import asyncio
import uuid
from types import SimpleNamespace

import pytest

from .socket_client import connect, receive, send, until_done

pytestmark = pytest.mark.django_db(transaction=True)


async def test_the_chat_socket_sends_the_last_deltas_of_a_reply_that_ended_while_it_asked(
    alice, tiny_model, monkeypatch
):
    from chat import consumers, replies
    from inference import streams
    from inference.protocol import Done

    real_settle = consumers._settle

    def worker_ends_it_meanwhile(message_id):
        request_id = replies.request_id(message_id)
        pipe = streams.client().pipeline(transaction=False)
        streams.append(pipe, request_id, 1, "delta", {"text": "Hel"})
        streams.append(pipe, request_id, 2, "delta", {"text": "lo"})
        pipe.execute()
        assert replies.end(message_id, content="Hello", done=Done("stop", completion_tokens=2))
        return real_settle(message_id)

    monkeypatch.setattr(consumers, "_settle", worker_ends_it_meanwhile)
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "Anyone there?"})
    started = await receive(ws)
    deltas, done = await until_done(ws, started["message"], timeout=20)
    assert "".join(d["text"] for d in deltas) == "Hello"
    assert done["finish_reason"] == "stop"
    await ws.disconnect()


def test_the_api_reader_also_sends_the_last_deltas_of_a_reply_that_ended_while_it_asked(monkeypatch):
    from api import completions
    from inference import streams

    request_id = f"test-race-{uuid.uuid4().hex}"

    def worker_ends_it_meanwhile(rid):
        pipe = streams.client().pipeline(transaction=False)
        streams.append(pipe, rid, 1, "delta", {"text": "Hel"})
        streams.append(pipe, rid, 2, "delta", {"text": "lo"})
        pipe.execute()
        return {"finish_reason": "stop", "error": "", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}

    monkeypatch.setattr(completions, "_settle", worker_ends_it_meanwhile)
    monkeypatch.setattr(completions, "IDLE_CHECK_S", 0)

    async def read():
        return [(text, done) async for _, text, done in completions.events(SimpleNamespace(request_ids=[request_id]))]

    try:
        events = asyncio.run(asyncio.wait_for(read(), timeout=20))
    finally:
        streams.client().delete(streams.stream_key(request_id))
    assert "".join(text for text, _ in events) == "Hello"
    assert events[-1][1]["finish_reason"] == "stop"
