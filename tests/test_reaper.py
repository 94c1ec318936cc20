"""A reply whose worker died is marked interrupted with its partial text, never left generating."""

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from chat import replies
from chat.models import Conversation, Message
from inference import reaper, streams

from .socket_client import connect, send, until_done


def _orphan(user, model, worker_id="dead-worker"):
    conversation = Conversation.objects.create(user=user, title="t", model=model)
    Message.objects.create(conversation=conversation, role="user", content="hi")
    reply = Message.objects.create(
        conversation=conversation, role="assistant", status=Message.Status.GENERATING, model=model, worker=worker_id
    )
    rid = replies.request_id(reply.pk)
    pipe = streams.client().pipeline()
    pipe.delete(streams.stream_key(rid))
    streams.append(pipe, rid, 1, "delta", {"text": "Hello "})
    streams.append(pipe, rid, 2, "delta", {"text": "wor"})
    pipe.execute()
    return reply


@pytest.mark.django_db(transaction=True)
async def test_resuming_a_reply_whose_worker_died_reports_it_interrupted(alice, tiny_model):
    reply = await database_sync_to_async(_orphan)(alice, tiny_model)
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.resume", "message": reply.pk, "after": 0})
    deltas, done = await until_done(ws, reply.pk, timeout=15)
    assert "".join(d["text"] for d in deltas) == "Hello wor"
    assert done["finish_reason"] == "interrupted"
    assert "stopped" in done["error"]
    await database_sync_to_async(reply.refresh_from_db)()
    assert reply.status == Message.Status.INTERRUPTED and reply.content == "Hello wor"
    await ws.disconnect()


@pytest.mark.django_db
def test_a_reply_on_a_live_worker_is_left_alone(alice, tiny_model):
    streams.heartbeat("alive-worker", {})
    reply = _orphan(alice, tiny_model, worker_id="alive-worker")
    assert not reaper.reap(replies.SINK, [replies.request_id(reply.pk)])
    reply.refresh_from_db()
    assert reply.status == Message.Status.GENERATING


@pytest.mark.django_db
def test_opening_the_conversation_page_reaps_its_orphans(client, alice, tiny_model):
    reply = _orphan(alice, tiny_model)
    client.force_login(alice)
    response = client.get(reply.conversation.get_absolute_url())
    assert response.status_code == 200
    reply.refresh_from_db()
    assert reply.status == Message.Status.INTERRUPTED
    assert reply.content == "Hello wor"


@pytest.mark.django_db
def test_a_finished_reply_is_never_finished_twice(alice, tiny_model):
    reply = _orphan(alice, tiny_model)
    assert reaper.reap(replies.SINK, [replies.request_id(reply.pk)])
    Message.objects.filter(pk=reply.pk).update(updated_at=timezone.now())
    reply.refresh_from_db()
    assert not reaper.reap(replies.SINK, [replies.request_id(reply.pk)])
    assert [kind for _, kind, _ in streams.read_all(replies.request_id(reply.pk))].count("done") == 1
