"""The inference worker on both backends, through Redis and the chat sink: the same stop strings,
stops, lengths, token counts and timings whichever engine runs the packaged model."""

from __future__ import annotations

import uuid

import pytest
from channels.db import database_sync_to_async

from chat.models import Message
from inference.defaults import ensure_default_model
from inference.models import LanguageModel

from .conftest import WorkerThread
from .socket_client import connect, receive, send, until_done

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(params=["transformers", "llamacpp"])
def backend_worker(request, settings):
    row, _ = ensure_default_model()
    LanguageModel.objects.filter(pk=row.pk).update(backend=request.param)
    thread = WorkerThread(f"test-{request.param}-{uuid.uuid4().hex[:6]}").start().wait_loaded(row.slug)
    yield request.param
    thread.stop()


async def ask(ws, content: str, **params) -> tuple[dict, list, dict]:
    await send(ws, {"type": "chat.send", "content": content, "params": params})
    started = await receive(ws, timeout=120)
    assert started["type"] == "chat.started", started
    deltas, done = await until_done(ws, started["message"], timeout=180)
    return started, deltas, done


async def stored(message_id: int) -> Message:
    return await database_sync_to_async(Message.objects.get)(pk=message_id)


async def test_a_stop_string_ends_the_reply_before_it_and_never_reaches_the_client(alice, backend_worker):
    ws, _ = await connect(alice)
    prompt = "Write a short story about a cat who becomes a sailor."
    _, free, _ = await ask(ws, prompt, temperature=0, max_tokens=60)
    text = "".join(d["text"] for d in free)
    words = text.split()
    assert len(words) > 12, text
    stop = words[10]  # a word from the middle of the greedy reply
    started, deltas, done = await ask(ws, prompt, temperature=0, max_tokens=60, stop=[stop])
    streamed = "".join(d["text"] for d in deltas)
    assert done["finish_reason"] == "stop"
    assert streamed == text[: text.index(stop)]
    assert (await stored(started["message"])).content == streamed
    await ws.disconnect()


async def test_length_token_counts_and_timings_are_stored(alice, backend_worker):
    ws, _ = await connect(alice)
    started, deltas, done = await ask(ws, "Write a long story about a lighthouse.", temperature=0, max_tokens=12)
    reply = await stored(started["message"])
    assert done["finish_reason"] == "length" and reply.completion_tokens == 12
    assert reply.prompt_tokens > 10 and reply.ttft_ms > 0 and reply.tokens_per_s > 0
    assert reply.content == "".join(d["text"] for d in deltas) and reply.worker.startswith("test-")
    await ws.disconnect()


async def test_a_stop_frame_cancels_the_reply_and_keeps_its_text(alice, backend_worker):
    ws, _ = await connect(alice)
    await send(
        ws,
        {"type": "chat.send", "content": "Write a very long essay about rivers.", "params": {"max_tokens": 400}},
    )
    started = await receive(ws, timeout=120)
    first = await receive(ws, timeout=120)
    assert first["type"] == "chat.delta"
    await send(ws, {"type": "chat.stop", "message": started["message"]})
    deltas, done = await until_done(ws, started["message"], timeout=60)
    reply = await stored(started["message"])
    assert done["finish_reason"] == "cancelled" and reply.status == Message.Status.STOPPED
    assert reply.completion_tokens < 400
    assert reply.content == first["text"] + "".join(d["text"] for d in deltas)
    await ws.disconnect()


async def test_the_same_seed_gives_the_same_reply(alice, backend_worker):
    ws, _ = await connect(alice)
    params = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 20, "seed": 42}
    _, first, done = await ask(ws, "Invent a name for a dragon.", **params)
    _, second, again = await ask(ws, "Invent a name for a dragon.", **params)
    assert done["finish_reason"] == again["finish_reason"], (done, again)
    assert "".join(d["text"] for d in first) == "".join(d["text"] for d in second)
    await ws.disconnect()
