"""Markdown rendered while a reply streams: `chat.delta` frames carry the sanitized rendering of
the reply so far (chat/live.py).

The replies here are streams written straight into Redis with `inference.streams.append`, the
way an inference worker writes them, so their text is known exactly (the tiny model's is random).
"""

import re

import pytest
from channels.db import database_sync_to_async

from chat import replies
from chat.live import MAX_PAUSE_S, LiveMarkdown, completed
from chat.models import Conversation, Message
from chat.rendering import render_markdown
from inference import streams
from inference.models import LanguageModel

from .socket_client import connect, receive, send
from .test_rendering import XSS_PAYLOADS, assert_nothing_executable

pytestmark = pytest.mark.django_db(transaction=True)

REPLY = ["Here is **bold", "** text and", " a list:\n\n- one\n", "- two\n\n```python\n", "x = 1\n```\n"]


@database_sync_to_async
def generating_reply(user) -> Message:
    model = LanguageModel.objects.create(name="Scripted", slug="scripted", location="/models/scripted")
    conversation = Conversation.objects.create(user=user, title="Live", model=model)
    Message.objects.create(conversation=conversation, role=Message.Role.USER, content="Show me")
    reply = Message.objects.create(
        conversation=conversation, role=Message.Role.ASSISTANT, status=Message.Status.GENERATING, model=model
    )
    # Ids repeat across tests (each starts from an empty database) while Redis keeps an earlier
    # test's stream under the same request id: start from a clean one, as streams.enqueue does.
    request_id = replies.request_id(reply.pk)
    streams.client().delete(streams.stream_key(request_id), streams.stop_key(request_id))
    return reply


def write(message: Message, start_seq: int, pieces: list[str], *, done: bool = False) -> None:
    """Append deltas (and the reply's end) to its stream, as the worker does."""
    pipe = streams.client().pipeline()
    for offset, text in enumerate(pieces):
        streams.append(pipe, replies.request_id(message.pk), start_seq + offset, "delta", {"text": text})
    if done:
        content = "".join(pieces) if start_seq == 1 else None
        if content is not None:
            Message.objects.filter(pk=message.pk).update(
                status=Message.Status.COMPLETE, finish_reason="stop", content=content, html=render_markdown(content)
            )
        streams.append(pipe, replies.request_id(message.pk), start_seq + len(pieces), "done", {"finish_reason": "stop"})
    pipe.execute()


async def frames_until_done(ws) -> list[dict]:
    frames = []
    while True:
        frame = await receive(ws)
        frames.append(frame)
        if frame["type"] == "chat.done":
            return frames


async def test_the_last_delta_of_a_batch_carries_the_rendering_of_the_whole_reply_so_far(alice):
    reply = await generating_reply(alice)
    await database_sync_to_async(write)(reply, 1, REPLY, done=True)
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.resume", "message": reply.pk, "after": 0})
    frames = await frames_until_done(ws)
    deltas, done = frames[:-1], frames[-1]
    assert "".join(d["text"] for d in deltas) == "".join(REPLY)
    assert [d["seq"] for d in deltas] == [1, 2, 3, 4, 5]
    assert "html" in deltas[-1] and not any("html" in d for d in deltas[:-1])  # one render per batch
    assert deltas[-1]["html"] == render_markdown("".join(REPLY)) == done["html"]  # nothing jumps at the end
    assert "**" not in deltas[-1]["html"] and "<strong>bold</strong>" in deltas[-1]["html"]
    await ws.disconnect()


async def test_live_deltas_are_rendered_as_they_arrive(alice):
    reply = await generating_reply(alice)
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.resume", "message": reply.pk, "after": 0})
    text = ""
    for seq, piece in enumerate(REPLY, start=1):
        await database_sync_to_async(write)(reply, seq, [piece])
        frame = await receive(ws)
        text += piece
        assert frame["type"] == "chat.delta" and frame["seq"] == seq
        assert frame["html"] == render_markdown(completed(text))
    assert 'class="highlight"' in frame["html"]  # the code block is highlighted while it streams
    await ws.disconnect()


async def test_a_resumed_stream_renders_the_whole_reply_not_only_what_it_replays(alice):
    reply = await generating_reply(alice)
    await database_sync_to_async(write)(reply, 1, REPLY, done=True)
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.resume", "message": reply.pk, "after": 3})
    frames = await frames_until_done(ws)
    assert [f["seq"] for f in frames[:-1]] == [4, 5]
    assert frames[-2]["html"] == render_markdown("".join(REPLY))
    await ws.disconnect()


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
async def test_an_xss_payload_streamed_over_the_socket_renders_no_executable_markup(alice, payload):
    reply = await generating_reply(alice)
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.resume", "message": reply.pk, "after": 0})
    pieces = [payload[i : i + 7] for i in range(0, len(payload), 7)]
    for seq, piece in enumerate(pieces, start=1):
        await database_sync_to_async(write)(reply, seq, [piece])
        frame = await receive(ws)
        assert frame["type"] == "chat.delta"
        assert_nothing_executable(frame["html"])
    await ws.disconnect()


def test_rendering_a_long_reply_pauses_the_forwarder_for_a_bounded_time():
    rendering = LiveMarkdown("Some *text* and `code`.\n\n" * 2000)
    rendering.html()
    assert 0 < rendering.pause_s <= MAX_PAUSE_S


@pytest.mark.parametrize(
    ("so_far", "rendered_as"),
    [
        ("Here is **bold", "Here is **bold**"),  # shown bold while it streams
        ("Here is **", "Here is "),  # a marker with nothing after it yet is not shown
        ("an *idea", "an *idea*"),
        ("2 * 3", "2 * 3"),  # a star before a space opens nothing
        ("* a list item", "* a list item"),
        ("call `f(", "call `f(`"),
        ("```python\nx = 1", "```python\nx = 1\n```"),  # an open code block shows as code
        ("Text\n``", "Text"),  # a fence being typed
        ("done **a** b", "done **a** b"),
    ],
)
def test_what_the_model_opened_and_not_yet_closed_is_closed_for_the_live_rendering(so_far, rendered_as):
    assert completed(so_far) == rendered_as


def test_a_streaming_reply_shows_no_raw_markers_at_any_point():
    rendering = LiveMarkdown()
    for char in "".join(REPLY):
        rendering.add(char)
        visible = re.sub(r"<[^>]+>", "", rendering.html())
        assert "**" not in visible and "```" not in visible, (rendering.text, visible)
