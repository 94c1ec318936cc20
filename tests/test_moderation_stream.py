"""Moderation through the whole chat path on both backends (the real default model, a real
inference worker, Redis, the websocket): a masked word never reaches the client, a block ends
the reply as `moderated`, input rules act before the model sees the message."""

from __future__ import annotations

import uuid

import pytest
from channels.db import database_sync_to_async

from chat.models import Message
from inference.defaults import ensure_default_model
from inference.models import LanguageModel
from moderation.models import Event, Rule

from .conftest import WorkerThread
from .socket_client import connect, receive, send, until_done

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

QUESTION = "What is the capital of Germany?"  # both backends answer "... Berlin ..." (test_backends)


@pytest.fixture(params=["transformers", "llamacpp"])
def backend_worker(request, settings):
    settings.MODERATION_RELOAD_S = 0  # rules created by a test apply at once in the worker thread
    row, _ = ensure_default_model()
    LanguageModel.objects.filter(pk=row.pk).update(backend=request.param)
    thread = WorkerThread(f"test-{request.param}-{uuid.uuid4().hex[:6]}").start().wait_loaded(row.slug)
    yield request.param
    thread.stop()


async def ask(ws, content: str) -> tuple[dict, list, dict]:
    await send(ws, {"type": "chat.send", "content": content, "params": {"temperature": 0, "max_tokens": 40}})
    started = await receive(ws, timeout=120)
    assert started["type"] == "chat.started", started
    deltas, done = await until_done(ws, started["message"], timeout=180)
    return started, deltas, done


def make_rule(**fields) -> Rule:
    return Rule.objects.create(name=fields["pattern"], **fields)


async def test_a_masked_word_never_reaches_the_client(alice, backend_worker):
    await database_sync_to_async(make_rule)(
        pattern="berlin", kind="regex", applies_to="output", action="mask", replacement="***"
    )
    ws, _ = await connect(alice)
    started, deltas, done = await ask(ws, QUESTION)
    streamed = "".join(d["text"] for d in deltas)
    assert "***" in streamed and "berlin" not in streamed.lower(), streamed
    for delta in deltas:  # not even a piece of it in one frame
        assert not any(part in delta["text"].lower() for part in ("berl", "rlin")), delta
    reply = await database_sync_to_async(Message.objects.get)(pk=started["message"])
    assert reply.content == streamed and done["finish_reason"] in ("stop", "length")
    events = await database_sync_to_async(list)(
        Event.objects.filter(message=reply).values_list("action", "status", "excerpt")
    )
    assert events and set(events) == {("mask", "logged", "Berlin")}, events
    await ws.disconnect()


async def test_an_output_block_ends_the_reply_as_moderated_and_waits_for_review(alice, backend_worker):
    await database_sync_to_async(make_rule)(
        pattern="berlin", kind="regex", applies_to="output", action="block", category="test"
    )
    ws, _ = await connect(alice)
    started, deltas, done = await ask(ws, QUESTION)
    streamed = "".join(d["text"] for d in deltas)
    assert done["finish_reason"] == "moderated" and "berl" not in streamed.lower(), streamed
    assert "withheld by the moderation rules (test)" in done["error"]
    reply = await database_sync_to_async(Message.objects.get)(pk=started["message"])
    assert reply.content == streamed and reply.completion_tokens < 40
    event = await database_sync_to_async(Event.objects.get)(message=reply)
    assert (event.action, event.status, event.user_id) == ("block", "pending", alice.pk)
    await ws.disconnect()


async def test_input_rules_mask_before_the_model_sees_it_and_block_with_the_category(alice, backend_worker):
    await database_sync_to_async(make_rule)(pattern="germany", applies_to="input", action="mask", replacement="France")
    await database_sync_to_async(make_rule)(pattern="bomb", applies_to="input", action="block", category="weapons")
    ws, _ = await connect(alice)
    started, deltas, _ = await ask(ws, QUESTION)
    question = await database_sync_to_async(Message.objects.get)(pk=started["user_message"])
    assert question.content == "What is the capital of France?"  # what the model saw
    assert "Berlin" not in "".join(d["text"] for d in deltas)
    await send(ws, {"type": "chat.send", "content": "How do I build a B O M B? a bomb!"})
    refused = await receive(ws, timeout=60)
    assert refused["type"] == "chat.error" and refused["code"] == "moderated" and "(weapons)" in refused["message"]
    assert await database_sync_to_async(Event.objects.filter(action="block", status="pending").count)() == 1
    await ws.disconnect()
