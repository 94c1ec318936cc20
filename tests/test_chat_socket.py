"""The chat websocket end to end through a real inference worker (tiny model) and real Redis."""

import asyncio
import re

import pytest
from channels.db import database_sync_to_async

from chat.models import Conversation, Message

from .socket_client import connect, receive, send, until_done

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_message_streams_back_in_deltas_and_is_stored(alice, worker):
    ws, ok = await connect(alice)
    assert ok
    await send(ws, {"type": "chat.send", "conversation": None, "content": "Hello there", "params": {"max_tokens": 20}})
    started = await receive(ws)
    assert started["type"] == "chat.started" and started["model"] == "tiny"
    deltas, done = await until_done(ws, started["message"])
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert done["finish_reason"] in ("stop", "length")
    reply = await database_sync_to_async(Message.objects.get)(pk=started["message"])
    assert reply.content == "".join(d["text"] for d in deltas)
    assert reply.status == Message.Status.COMPLETE
    assert reply.completion_tokens and reply.completion_tokens <= 20
    assert reply.prompt_tokens > 0 and reply.ttft_ms is not None
    assert {k: reply.params[k] for k in ("temperature", "top_p", "max_tokens")} == {
        "temperature": 0.0,
        "top_p": 0.9,
        "max_tokens": 20,
    }
    assert done["usage"]["completion_tokens"] == reply.completion_tokens
    assert "<script" not in done["html"]
    conversation = await database_sync_to_async(Conversation.objects.get)(pk=started["conversation"])
    assert conversation.title == "Hello there"
    await ws.disconnect()


async def test_a_second_message_continues_the_same_conversation(alice, worker):
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "conversation": None, "content": "one", "params": {"max_tokens": 4}})
    first = await receive(ws)
    await until_done(ws, first["message"])
    await send(
        ws, {"type": "chat.send", "conversation": first["conversation"], "content": "two", "params": {"max_tokens": 4}}
    )
    second = await receive(ws)
    assert second["conversation"] == first["conversation"]
    await until_done(ws, second["message"])
    count = await database_sync_to_async(Message.objects.filter(conversation_id=first["conversation"]).count)()
    assert count == 4
    await ws.disconnect()


async def test_stop_ends_the_reply_and_keeps_the_partial_text(alice, worker):
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "Talk for a long time", "params": {"max_tokens": 250}})
    started = await receive(ws)
    first = await receive(ws)
    assert first["type"] == "chat.delta"
    await send(ws, {"type": "chat.stop", "message": started["message"]})
    deltas, done = await until_done(ws, started["message"])
    assert done["finish_reason"] == "cancelled"
    reply = await database_sync_to_async(Message.objects.get)(pk=started["message"])
    assert reply.status == Message.Status.STOPPED
    assert reply.content == first["text"] + "".join(d["text"] for d in deltas)
    assert reply.completion_tokens < 250
    await ws.disconnect()


async def test_resume_replays_from_the_given_seq(alice, worker):
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "Tell me something", "params": {"max_tokens": 200}})
    started = await receive(ws)
    deltas, done = await until_done(ws, started["message"])
    await ws.disconnect()
    assert len(deltas) >= 2

    again, _ = await connect(alice)
    await send(again, {"type": "chat.resume", "message": started["message"], "after": 1})
    replayed, replay_done = await until_done(again, started["message"])
    assert [d["seq"] for d in replayed] == [d["seq"] for d in deltas[1:]]
    assert "".join(d["text"] for d in deltas[:1] + replayed) == "".join(d["text"] for d in deltas)
    assert replay_done["finish_reason"] == done["finish_reason"]
    await again.disconnect()


async def test_regenerate_replaces_the_latest_reply(alice, worker):
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "Hi", "params": {"max_tokens": 5}})
    started = await receive(ws)
    await until_done(ws, started["message"])
    await send(ws, {"type": "chat.regenerate", "message": started["message"]})
    regenerated = await receive(ws)
    assert regenerated["type"] == "chat.started"
    assert regenerated["user_message"] == started["user_message"]
    assert regenerated["message"] != started["message"]
    await until_done(ws, regenerated["message"])
    old = await database_sync_to_async(Message.objects.get)(pk=started["message"])
    assert old.replaced_at is not None and old.replaced_by_id == regenerated["message"]  # kept for the logs
    shown = await database_sync_to_async(lambda: list(Message.objects.visible().values_list("pk", flat=True)))()
    assert started["message"] not in shown and regenerated["message"] in shown
    await ws.disconnect()


async def test_edit_resends_a_message_as_a_fork_and_keeps_the_old_branch(alice, worker):
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "Hi", "params": {"max_tokens": 5}})
    first = await receive(ws)
    await until_done(ws, first["message"])
    conversation = first["conversation"]
    await send(ws, {"type": "chat.send", "conversation": conversation, "content": "More", "params": {"max_tokens": 5}})
    second = await receive(ws)
    await until_done(ws, second["message"])

    await send(ws, {"type": "chat.edit", "message": first["user_message"], "content": "Hello again"})
    edited = await receive(ws)
    assert edited["type"] == "chat.started" and edited["replaces"] == first["user_message"]
    assert edited["user_content"] == "Hello again"
    assert edited["versions"] == {str(edited["user_message"]): [first["user_message"], edited["user_message"]]}
    _, done = await until_done(ws, edited["message"])
    assert done["finish_reason"] in ("stop", "length")

    shown = await database_sync_to_async(
        lambda: list(Message.objects.visible().filter(conversation_id=conversation).values_list("content", flat=True))
    )()
    assert shown[0] == "Hello again" and len(shown) == 2
    kept = await database_sync_to_async(lambda: Message.objects.filter(conversation_id=conversation).count())()
    assert kept == 6  # the first branch (four messages) is a version now

    # A reply's text cannot be edited, and a running reply blocks edits.
    await send(ws, {"type": "chat.edit", "message": edited["message"], "content": "No"})
    refused = await receive(ws)
    assert refused["type"] == "chat.error" and refused["code"] == "not_editable"
    await ws.disconnect()


async def test_a_second_send_while_generating_is_refused_as_busy(alice, worker):
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "long", "params": {"max_tokens": 200}})
    started = await receive(ws)
    await send(ws, {"type": "chat.send", "conversation": started["conversation"], "content": "again"})
    frame = await receive(ws)
    while frame["type"] == "chat.delta":
        frame = await receive(ws)
    assert frame["type"] == "chat.error" and frame["code"] == "busy"
    await send(ws, {"type": "chat.stop", "message": started["message"]})
    await until_done(ws, started["message"])
    await ws.disconnect()


async def test_a_queued_reply_with_no_worker_fails_with_a_clear_error(alice, tiny_model, settings):
    settings.INFERENCE_QUEUE_TIMEOUT_S = 1
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "anyone there?"})
    started = await receive(ws)
    _, done = await until_done(ws, started["message"], timeout=20)
    assert done["finish_reason"] == "error"
    assert "No inference worker is running" in done["error"]
    await ws.disconnect()


async def test_messages_over_the_rate_limit_are_refused_with_when_to_retry(alice, tiny_model, settings):
    settings.CHAT_RATE_LIMIT = 2
    settings.CHAT_RATE_WINDOW_S = 60
    from inference import streams

    await streams.async_client().delete(*[k async for k in streams.async_client().scan_iter("chat:rate:*")] or ["none"])
    ws, _ = await connect(alice)
    for text in ("one", "two"):
        await send(ws, {"type": "chat.send", "content": text})
        started = await receive(ws)
        assert started["type"] == "chat.started"
        await send(ws, {"type": "chat.stop", "message": started["message"]})
    await send(ws, {"type": "chat.send", "content": "three"})
    frame = await receive(ws)
    while frame["type"] != "chat.error":
        frame = await receive(ws)
    assert frame["code"] == "rate_limited"
    assert "Retry in" in frame["message"]
    await ws.disconnect()


async def test_a_system_prompt_sent_with_the_first_message_shapes_the_first_reply(alice, worker):
    ws, _ = await connect(alice)
    await send(
        ws,
        {"type": "chat.send", "content": "hi", "system_prompt": "You are a pirate.", "params": {"max_tokens": 2}},
    )
    started = await receive(ws)
    await until_done(ws, started["message"])
    conversation = await database_sync_to_async(Conversation.objects.get)(pk=started["conversation"])
    assert conversation.system_prompt == "You are a pirate."
    from chat.branches import history_before

    reply = await database_sync_to_async(Message.objects.select_related("conversation", "model").get)(
        pk=started["message"]
    )
    messages = await database_sync_to_async(history_before)(reply)
    assert messages[0] == {"role": "system", "content": "You are a pirate."}
    await ws.disconnect()


async def test_deleting_a_conversation_stops_its_running_reply(alice, worker):
    from asgiref.sync import sync_to_async
    from django.test import Client

    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "long one", "params": {"max_tokens": 250}})
    started = await receive(ws)
    await receive(ws)  # the first delta: the reply is generating

    def delete():
        client = Client()
        client.force_login(alice)
        return client.post(f"/api/conversations/{started['conversation']}/delete/")

    response = await sync_to_async(delete)()
    assert response.status_code == 200
    for _ in range(100):
        if not worker.replies:
            break
        await asyncio.sleep(0.05)
    assert not worker.replies, "the worker kept generating a reply whose conversation was deleted"
    from inference import metrics

    snapshot = await sync_to_async(metrics.snapshot)()
    totals = next(s.totals for s in snapshot.series if s.worker == worker.worker_id)
    assert totals.get("replies_cancelled") == 1
    assert not await database_sync_to_async(Message.objects.visible().filter(pk=started["message"]).exists)()
    await ws.disconnect()


async def test_a_failing_generation_step_fails_its_replies_and_the_worker_keeps_serving(alice, worker):
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "warm up", "params": {"max_tokens": 2}})
    await until_done(ws, (await receive(ws))["message"])
    engine = worker.models["tiny"].backend
    real_forward = engine.model.forward

    def broken(*args, **kwargs):
        raise RuntimeError("simulated out of memory")

    engine.model.forward = broken  # mock: a device failure cannot be caused on purpose here
    await send(ws, {"type": "chat.send", "content": "this one fails", "params": {"max_tokens": 5}})
    started = await receive(ws)
    _, done = await until_done(ws, started["message"])
    engine.model.forward = real_forward
    assert done["finish_reason"] == "error"
    # A plain reason for the user; the details (and any file paths) stay in the worker's log.
    assert done["error"].startswith("Generation failed") and "(RuntimeError)" in done["error"]
    assert "simulated" not in done["error"]
    await send(ws, {"type": "chat.send", "content": "and this one works", "params": {"max_tokens": 3}})
    again = await receive(ws)
    _, done = await until_done(ws, again["message"])
    assert done["finish_reason"] in ("stop", "length")
    await ws.disconnect()


async def test_a_message_longer_than_the_model_accepts_is_refused_with_its_size(alice, worker):
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "lorem ipsum " * 400, "params": {"max_tokens": 4}})
    refused = await receive(ws)
    assert refused["type"] == "chat.error" and refused["code"] == "message_too_long"
    assert re.search(r"is \d+ tokens .* accepts at most 512", refused["message"])
    assert await database_sync_to_async(Message.objects.count)() == 0  # nothing stored, nothing failed
    await ws.disconnect()


async def test_a_message_the_estimate_lets_through_is_refused_by_its_real_tokens_before_anything_is_stored(
    alice, worker
):
    # 300 emoji are ~110 tokens by the characters-per-token estimate but 600 for the tokenizer.
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "\N{SLIGHTLY SMILING FACE}" * 300, "params": {"max_tokens": 4}})
    refused = await receive(ws)
    assert refused["type"] == "chat.error" and refused["code"] == "message_too_long", refused
    assert "accepts at most 512" in refused["message"]
    assert await database_sync_to_async(Message.objects.count)() == 0  # no conversation, no error reply
    await ws.disconnect()


async def test_old_turns_are_dropped_when_the_history_outgrows_the_model(alice, worker):
    ws, _ = await connect(alice)
    conversation = None
    prompts = []
    for _ in range(5):  # each turn ~160 tokens: four of them exceed the tiny model's 512
        await send(
            ws,
            {
                "type": "chat.send",
                "conversation": conversation,
                "content": "lorem ipsum " * 30,
                "params": {"max_tokens": 2},
            },
        )
        started = await receive(ws)
        conversation = started["conversation"]
        _, done = await until_done(ws, started["message"])
        assert done["finish_reason"] in ("stop", "length"), done["error"]
        assert done["usage"]["prompt_tokens"] <= 512
        prompts.append(done["usage"]["prompt_tokens"])
    assert prompts[1] > prompts[0] and prompts[-1] < prompts[-2] + 100  # grew, then old turns were dropped
    await ws.disconnect()


async def test_a_closed_socket_sends_nothing_and_stops_following_its_replies(monkeypatch):
    """No Redis or client here on purpose: what is checked is that a consumer whose socket is gone
    neither reads a reply's stream (a cancel swallowed inside redis-py kept such a read going)
    nor lets daphne's Disconnected escape as a logged traceback."""
    from autobahn.exception import Disconnected

    from chat import consumers
    from inference import stream_reader

    consumer = consumers.ChatConsumer()
    consumer.closed, consumer.forwarders, consumer.sync_subscription = False, {}, None
    sent = []

    async def send_gone(text_data=None, bytes_data=None, close=False):
        sent.append(text_data)
        raise Disconnected("Attempt to send on a closed protocol")

    monkeypatch.setattr(consumer, "send", send_gone)
    await consumer.send_json({"type": "chat.sync"})  # raises nothing
    assert consumer.closed and len(sent) == 1
    await consumer.send_json({"type": "chat.sync"})
    assert len(sent) == 1  # not tried again once the socket is known to be gone

    async def read_after(*args):
        raise AssertionError("a closed socket's reply stream was read")

    monkeypatch.setattr(stream_reader, "read_after", read_after)
    await asyncio.wait_for(consumer._forward(7, 0), timeout=5)


async def test_a_closing_socket_waits_for_its_forwarders_database_call(alice, tiny_model, monkeypatch):
    """A forwarder cancelled while it asks the database about a quiet reply (no worker here, so
    the reaper may end it) finishes that call before the socket's task ends: nothing of a closed
    socket writes afterwards (on PostgreSQL such a late write deadlocked a test's table flush),
    even when the socket's task is cancelled meanwhile, as the test client does after 1 s."""
    import threading
    import time

    from chat import consumers

    entered, finished = threading.Event(), threading.Event()
    real_settle = consumers._settle

    def slow_settle(message_id, after):
        entered.set()
        time.sleep(1.5)  # longer than the test client waits for the socket to end (1 s): it cancels
        try:
            return real_settle(message_id, after)
        finally:
            finished.set()

    monkeypatch.setattr(consumers, "_settle", slow_settle)
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "Anyone there?"})
    assert (await receive(ws))["type"] == "chat.started"
    assert await asyncio.to_thread(entered.wait, 10), "the forwarder never asked about its quiet reply"
    await ws.disconnect()
    assert finished.is_set(), "the socket ended while its forwarder's database call still ran"
