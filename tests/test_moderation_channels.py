"""Every piece of client-supplied text that reaches a model or a dataset meets the input rules,
disguised or not (issue 24, finding 2): a message and a system prompt through the websocket, every
role of an API call, a conversation's saved system prompt, and a feedback comment or edited
answer. No inference worker is needed: each is refused before anything is queued."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from chat.models import Conversation, Feedback, Message
from moderation.models import Event, Rule
from tests.socket_client import connect, receive, send
from tests.test_api_files import bearer, error_of

pytestmark = pytest.mark.django_db(transaction=True)

DISGUISED = "tell me the se\ufe0fcr\u034fet c\u0585de"  # a variation selector, a grapheme joiner, Armenian oh


@pytest.fixture
def rules(db):
    Rule.objects.create(name="secret", pattern="secret", kind="keyword", applies_to="input", action="block",
                        category="test")  # fmt: skip
    Rule.objects.create(name="code", pattern="code", kind="keyword", applies_to="input", action="mask")


async def _refused(ws) -> dict:
    frame = await receive(ws, timeout=10)
    assert frame["type"] == "chat.error" and frame["code"] == "moderated", frame
    return frame


async def test_the_websocket_checks_the_message_and_the_system_prompt(alice, tiny_model, rules):
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": DISGUISED})
    await _refused(ws)
    await send(ws, {"type": "chat.send", "content": "Hello", "system_prompt": "Reveal the s\u0336e\u0336cret."})
    await _refused(ws)
    assert await database_sync_to_async(Message.objects.count)() == 0  # nothing half-saved
    assert await database_sync_to_async(Event.objects.filter(action="block").count)() == 2
    await ws.disconnect()


@pytest.mark.parametrize("role", ["system", "assistant", "user"])
def test_the_api_checks_every_role(client, alice, tiny_model, rules, settings, role):
    settings.API_RATE_LIMIT = 0
    messages = [{"role": role, "content": "sec\u3164ret plans"}]
    if role != "user":
        messages.append({"role": "user", "content": "Go on."})
    response = client.post("/v1/chat/completions", {"model": "tiny", "messages": messages},
                           content_type="application/json", **bearer(alice))  # fmt: skip
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "content_policy_violation" and error["param"] == "messages[0].content"
    assert not Conversation.objects.exists()


def test_a_saved_system_prompt_is_checked_and_masked(alice, tiny_model, rules):
    conversation = Conversation.objects.create(user=alice, model=tiny_model)
    client = Client()
    client.force_login(alice)
    url = f"/api/conversations/{conversation.pk}/"
    refused = client.post(url, json.dumps({"system_prompt": "Always say the ѕecret."}), content_type="application/json")
    assert refused.status_code == 400 and "This system prompt was blocked" in refused.json()["errors"]["system_prompt"]
    conversation.refresh_from_db()
    assert conversation.system_prompt == ""
    saved = client.post(url, json.dumps({"system_prompt": "Write c\u200bode."}), content_type="application/json")
    assert saved.status_code == 200
    conversation.refresh_from_db()
    assert "ode" not in conversation.system_prompt and "[removed]" in conversation.system_prompt


def test_feedback_comments_and_edited_answers_are_checked(alice, tiny_model, rules):
    conversation = Conversation.objects.create(user=alice, model=tiny_model)
    question = Message.objects.create(conversation=conversation, role="user", content="hi")
    reply = Message.objects.create(conversation=conversation, role="assistant", content="hello", parent=question,
                                   worker="w1")  # fmt: skip
    client = Client()
    client.force_login(alice)
    url = f"/api/messages/{reply.pk}/feedback/"
    for field in ("comment", "edited_content"):
        response = client.post(url, json.dumps({"rating": 1, field: "the SECRET is 42"}),
                               content_type="application/json")  # fmt: skip
        assert response.status_code == 400 and "was blocked" in response.json()["errors"][field]
    assert not Feedback.objects.exists()
    response = client.post(url, json.dumps({"rating": 1, "edited_content": "Here is the code."}),
                           content_type="application/json")  # fmt: skip
    assert response.status_code == 200
    assert Feedback.objects.get().edited_content == "Here is the [removed]."


async def test_a_masked_word_in_your_own_message_shows_at_once(alice, tiny_model, rules, settings):
    """Issue 25, item 8: the page showed the masked text only after a reload. chat.started carries
    what was stored (no worker: the reply stays queued)."""
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "here is my code"})
    started = await receive(ws)
    assert started["type"] == "chat.started", started
    assert started["user_content"] == "here is my [removed]"
    await ws.disconnect()
    from inference import streams

    streams.client().delete(*streams.QUEUE_KEYS)  # the queued reply: no worker here takes it
