"""The chat socket refuses what it must: anonymous users, foreign origins, bad frames and other
users' conversations and messages, with the documented error codes, and stays usable after."""

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings

from chat.models import Conversation, LanguageModel, Message
from chat.rendering import render_markdown
from chatsite.asgi import application
from inference import streams

from .socket_client import _session_cookie, connect, receive, send, until_done

pytestmark = pytest.mark.django_db(transaction=True)

ON_POSTGRESQL = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


@pytest.fixture
def disabled_model():
    return LanguageModel.objects.create(name="Off", slug="off", location="/models/off", enabled=False)


@database_sync_to_async
def message_count() -> int:
    return Message.objects.count()


async def expect_error(ws: WebsocketCommunicator, code: str) -> dict:
    frame = await receive(ws, timeout=5)
    assert frame["type"] == "chat.error", frame
    assert frame["code"] == code, frame
    assert frame["message"]
    return frame


async def expect_still_usable(ws: WebsocketCommunicator) -> dict:
    """A valid frame after a refused one still gets its reply started."""
    await send(ws, {"type": "chat.send", "content": "Still there?"})
    frame = await receive(ws, timeout=10)
    assert frame["type"] == "chat.started", frame
    return frame


# --- handshake ---------------------------------------------------------------------------------
async def test_an_anonymous_socket_is_closed_with_code_4401():
    ws, accepted = await connect(None)
    assert accepted
    assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}


async def test_a_foreign_origin_is_refused_at_the_handshake(alice):
    ws, connected = await connect(alice, origin=b"http://evil.example")
    assert not connected


async def test_a_lookalike_origin_is_refused_at_the_handshake(alice):
    ws, connected = await connect(alice, origin=b"http://127.0.0.1.evil.example")
    assert not connected


async def test_a_handshake_without_an_origin_is_refused(alice):
    cookie = f"sessionid={await _session_cookie(alice)}".encode()
    ws = WebsocketCommunicator(application, "/ws/chat/", headers=[(b"host", b"127.0.0.1"), (b"cookie", cookie)])
    connected, _ = await ws.connect()
    assert not connected


async def test_a_signed_in_user_from_an_allowed_origin_is_connected(alice, tiny_model):
    ws, connected = await connect(alice)
    assert connected
    await expect_still_usable(ws)
    await ws.disconnect()


# --- bad frames --------------------------------------------------------------------------------
def send_frame(**fields) -> str:
    return json.dumps({"type": "chat.send", "content": "hi", **fields})


BAD_FRAMES = [
    # (id, raw frame, code, word the error message must contain)
    ("oversized frame", send_frame(content="x" * (64 * 1024 + 1)), "frame_too_large", "limit"),
    ("malformed json", '{"type": "chat.send", "content": ', "invalid_json", "JSON"),
    ("json array", '[{"type": "chat.send", "content": "hi"}]', "invalid_json", "object"),
    ("json string", '"chat.send"', "invalid_json", "object"),
    ("json null", "null", "invalid_json", "object"),
    ("binary not utf-8", b"\xff\xfe\x00garbage", "invalid_json", "JSON"),
    ("unknown type", '{"type": "chat.delete", "message": 1}', "unknown_type", "chat.send"),
    ("missing type", '{"content": "hi"}', "unknown_type", "chat.send"),
    ("type a number", '{"type": 5, "content": "hi"}', "unknown_type", "chat.send"),
    ("empty content", send_frame(content=""), "empty_message", "empty"),
    ("whitespace content", send_frame(content=" \n\t  "), "empty_message", "empty"),
    ("missing content", '{"type": "chat.send"}', "invalid_field", "content"),
    ("content not a string", send_frame(content=["hi"]), "invalid_field", "content"),
    ("content too long", send_frame(content="y" * 16001), "message_too_long", "16000"),
    ("unknown model", send_frame(model="no-such-model"), "unknown_model", "no-such-model"),
    ("disabled model", send_frame(model="off"), "model_disabled", "disabled"),
    ("model not a string", send_frame(model=5), "invalid_field", "model"),
    ("temperature 5", send_frame(params={"temperature": 5}), "invalid_field", "temperature"),
    ("temperature negative", send_frame(params={"temperature": -0.5}), "invalid_field", "temperature"),
    ("temperature boolean", send_frame(params={"temperature": True}), "invalid_field", "temperature"),
    ("temperature string", send_frame(params={"temperature": "0.5"}), "invalid_field", "temperature"),
    ("top_p 0", send_frame(params={"top_p": 0}), "invalid_field", "top_p"),
    ("top_p above 1", send_frame(params={"top_p": 1.01}), "invalid_field", "top_p"),
    ("max_tokens 0", send_frame(params={"max_tokens": 0}), "invalid_field", "max_tokens"),
    ("max_tokens over cap", send_frame(params={"max_tokens": 257}), "invalid_field", "256"),
    ("max_tokens string", send_frame(params={"max_tokens": "ten"}), "invalid_field", "max_tokens"),
    ("max_tokens float", send_frame(params={"max_tokens": 10.5}), "invalid_field", "max_tokens"),
    ("unknown param", send_frame(params={"top_z": 5}), "invalid_field", "top_z"),
    ("top_k negative", send_frame(params={"top_k": -1}), "invalid_field", "top_k"),
    ("min_p above 1", send_frame(params={"min_p": 1.5}), "invalid_field", "min_p"),
    ("seed negative", send_frame(params={"seed": -3}), "invalid_field", "seed"),
    ("stop not strings", send_frame(params={"stop": [1]}), "invalid_field", "stop"),
    ("params not an object", send_frame(params=[0.7]), "invalid_field", "params"),
    ("conversation id as string", send_frame(conversation="1"), "invalid_field", "conversation"),
    ("conversation id zero", send_frame(conversation=0), "invalid_field", "conversation"),
    ("conversation id boolean", send_frame(conversation=True), "invalid_field", "conversation"),
    ("conversation missing", send_frame(conversation=987654), "not_found", "conversation"),
    ("stop id as string", '{"type": "chat.stop", "message": "1"}', "invalid_field", "message"),
    ("stop without id", '{"type": "chat.stop"}', "invalid_field", "message"),
    ("regenerate id negative", '{"type": "chat.regenerate", "message": -3}', "invalid_field", "message"),
    ("resume missing message", '{"type": "chat.resume", "message": 987654, "after": 0}', "not_found", "message"),
]


@pytest.mark.parametrize(("raw", "code", "word"), [pytest.param(*b[1:4], id=b[0], marks=b[4:]) for b in BAD_FRAMES])
async def test_a_bad_frame_gets_its_error_code_stores_nothing_and_the_socket_stays_usable(
    alice, tiny_model, disabled_model, raw, code, word
):
    ws, _ = await connect(alice)
    if isinstance(raw, bytes):
        await ws.send_to(bytes_data=raw)
    else:
        await ws.send_to(text_data=raw)
    frame = await expect_error(ws, code)
    assert word.lower() in frame["message"].lower()
    # Nothing stored means nothing queued either: a request is only queued for a stored reply.
    assert await message_count() == 0
    await expect_still_usable(ws)
    await ws.disconnect()


@pytest.mark.parametrize("raw", ['{"type": ["chat.send"], "content": "hi"}', '{"type": {"a": 1}}'])
async def test_a_type_that_is_a_list_or_object_is_an_unknown_type(alice, tiny_model, raw):
    ws, _ = await connect(alice)
    await ws.send_to(text_data=raw)
    frame = json.loads(await ws.receive_from(timeout=2))
    assert frame["type"] == "chat.error" and frame["code"] == "unknown_type"
    await expect_still_usable(ws)
    await ws.disconnect()


async def test_content_with_a_nul_character_is_answered_and_the_socket_stays_usable(alice, tiny_model):
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "before\x00after"})
    frame = await receive(ws, timeout=5)
    assert frame["type"] in ("chat.started", "chat.error"), frame
    await expect_still_usable(ws)
    await ws.disconnect()


async def test_content_of_exactly_the_limit_is_accepted(alice, tiny_model, settings):
    # A model whose input limit holds it (the tiny one takes 512 tokens; this is about 5,000).
    tiny_model.max_input_tokens = 8192
    await database_sync_to_async(tiny_model.save)()
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "z" * settings.CHAT_MAX_MESSAGE_CHARS})
    frame = await receive(ws, timeout=10)
    assert frame["type"] == "chat.started"
    await ws.disconnect()


async def test_a_resume_with_a_negative_after_is_an_invalid_field(alice, tiny_model):
    ws, _ = await connect(alice)
    started = await expect_still_usable(ws)
    await send(ws, {"type": "chat.resume", "message": started["message"], "after": -1})
    frame = await expect_error(ws, "invalid_field")
    assert "after" in frame["message"]
    await ws.disconnect()


async def test_several_bad_frames_in_a_row_leave_the_socket_open(alice, tiny_model):
    ws, _ = await connect(alice)
    for raw, code in [("nope", "invalid_json"), ("[]", "invalid_json"), ('{"type": "x"}', "unknown_type")] * 5:
        await ws.send_to(text_data=raw)
        await expect_error(ws, code)
    await expect_still_usable(ws)
    await ws.disconnect()


async def test_no_enabled_model_at_all_is_refused_as_no_model(alice, disabled_model):
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "hello"})
    await expect_error(ws, "no_model")
    assert await message_count() == 0
    assert await database_sync_to_async(Conversation.objects.count)() == 0

    disabled_model.enabled = True
    await database_sync_to_async(disabled_model.save)()
    started = await expect_still_usable(ws)
    assert started["model"] == "off"
    await ws.disconnect()


# --- ownership ---------------------------------------------------------------------------------
@database_sync_to_async
def alices_finished_chat(alice, model) -> tuple[Conversation, Message, Message]:
    conversation = Conversation.objects.create(user=alice, title="Alice's", model=model)
    question = Message.objects.create(
        conversation=conversation,
        role=Message.Role.USER,
        content="Secret question",
        html=render_markdown("Secret question"),
    )
    answer = Message.objects.create(
        conversation=conversation,
        parent=question,
        role=Message.Role.ASSISTANT,
        content="Secret answer",
        html=render_markdown("Secret answer"),
        status=Message.Status.COMPLETE,
        finish_reason="stop",
        model=model,
        params={"temperature": 0.0, "top_p": 0.9, "max_tokens": 8},
    )
    return conversation, question, answer


@database_sync_to_async
def messages_of(conversation_id: int, visible: bool = False) -> list[tuple]:
    """Every stored message of the conversation, or only those its user sees (not replaced)."""
    messages = Message.objects.visible() if visible else Message.objects.all()
    return list(messages.filter(conversation_id=conversation_id).order_by("id").values_list("id", "content", "status"))


async def test_another_user_cannot_send_into_a_conversation(alice, bob, tiny_model):
    conversation, _, _ = await alices_finished_chat(alice, tiny_model)
    before = await messages_of(conversation.pk)
    ws, _ = await connect(bob)
    await send(ws, {"type": "chat.send", "conversation": conversation.pk, "content": "Let me in"})
    missing = await expect_error(ws, "not_found")
    # The same answer as for a conversation that does not exist.
    await send(ws, {"type": "chat.send", "conversation": conversation.pk + 1000, "content": "Let me in"})
    assert (await expect_error(ws, "not_found"))["message"] == missing["message"]
    assert await messages_of(conversation.pk) == before
    await ws.disconnect()


async def test_another_user_cannot_switch_the_model_of_a_conversation(alice, bob, tiny_model, disabled_model):
    other = await database_sync_to_async(LanguageModel.objects.create)(name="Other", slug="other", location="/m/o")
    conversation, _, _ = await alices_finished_chat(alice, tiny_model)
    ws, _ = await connect(bob)
    await send(ws, {"type": "chat.send", "conversation": conversation.pk, "content": "x", "model": other.slug})
    await expect_error(ws, "not_found")
    await database_sync_to_async(conversation.refresh_from_db)()
    assert conversation.model_id == tiny_model.pk
    await ws.disconnect()


async def test_another_user_cannot_regenerate_a_reply(alice, bob, tiny_model):
    conversation, _, answer = await alices_finished_chat(alice, tiny_model)
    before = await messages_of(conversation.pk)
    ws, _ = await connect(bob)
    await send(ws, {"type": "chat.regenerate", "message": answer.pk})
    frame = await expect_error(ws, "not_found")
    assert frame["message_id"] == answer.pk
    assert await messages_of(conversation.pk) == before
    await ws.disconnect()


async def test_another_user_cannot_edit_a_message(alice, bob, tiny_model):
    conversation, question, _ = await alices_finished_chat(alice, tiny_model)
    before = await messages_of(conversation.pk)
    ws, _ = await connect(bob)
    await send(ws, {"type": "chat.edit", "message": question.pk, "content": "Mine now"})
    frame = await expect_error(ws, "not_found")
    assert frame["message_id"] == question.pk
    assert await messages_of(conversation.pk) == before
    await ws.disconnect()


async def test_the_owner_can_regenerate_the_same_reply(alice, tiny_model):
    """The control for the test above: the refusal was about ownership, not the message."""
    _, question, answer = await alices_finished_chat(alice, tiny_model)
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.regenerate", "message": answer.pk})
    started = await receive(ws, timeout=5)
    assert started["type"] == "chat.started", started
    assert started["user_message"] == question.pk
    ids = [row[0] for row in await messages_of(question.conversation_id, visible=True)]
    assert ids == [question.pk, started["message"]] and answer.pk not in ids
    await ws.disconnect()


async def test_another_user_cannot_stop_a_reply_and_it_finishes_normally(alice, bob, worker):
    alice_ws, _ = await connect(alice)
    await send(alice_ws, {"type": "chat.send", "content": "Tell me a story", "params": {"max_tokens": 40}})
    started = await receive(alice_ws)
    assert started["type"] == "chat.started"

    bob_ws, _ = await connect(bob)
    await send(bob_ws, {"type": "chat.stop", "message": started["message"]})
    await expect_error(bob_ws, "not_found")
    assert not await database_sync_to_async(streams.client().exists)(streams.stop_key(f"chat-{started['message']}"))

    _, done = await until_done(alice_ws, started["message"])
    assert done["finish_reason"] in ("stop", "length")
    reply = await database_sync_to_async(Message.objects.get)(pk=started["message"])
    assert reply.status == Message.Status.COMPLETE
    assert await bob_ws.receive_nothing(timeout=0.3)
    await alice_ws.disconnect()
    await bob_ws.disconnect()


async def test_another_user_cannot_resume_a_reply_and_sees_none_of_its_text(alice, bob, worker):
    alice_ws, _ = await connect(alice)
    await send(alice_ws, {"type": "chat.send", "content": "Say something", "params": {"max_tokens": 12}})
    started = await receive(alice_ws)
    deltas, _ = await until_done(alice_ws, started["message"])
    assert deltas, "the reply must have streamed something for this test to mean anything"
    await alice_ws.disconnect()

    bob_ws, _ = await connect(bob)
    await send(bob_ws, {"type": "chat.resume", "message": started["message"], "after": 0})
    await expect_error(bob_ws, "not_found")
    assert await bob_ws.receive_nothing(timeout=0.5)
    await bob_ws.disconnect()

    # The owner gets the whole reply from the same request, so the stream was there to leak.
    alice_ws, _ = await connect(alice)
    await send(alice_ws, {"type": "chat.resume", "message": started["message"], "after": 0})
    replayed, _ = await until_done(alice_ws, started["message"])
    assert [d["text"] for d in replayed] == [d["text"] for d in deltas]
    await alice_ws.disconnect()


async def test_another_users_user_message_is_not_found_either(alice, bob, tiny_model):
    _, question, _ = await alices_finished_chat(alice, tiny_model)
    ws, _ = await connect(bob)
    for frame in (
        {"type": "chat.stop", "message": question.pk},
        {"type": "chat.regenerate", "message": question.pk},
        {"type": "chat.resume", "message": question.pk, "after": 0},
    ):
        await send(ws, frame)
        await expect_error(ws, "not_found")
    await ws.disconnect()
