"""Hardening: hostile frames, sessions that end while a socket is open, per-user and queue
limits, regenerate failures, what users are told when a model cannot load, the worker's retry
of results it could not store, prompt trimming and chunked prefill. Each test names the bug it
would catch."""

from __future__ import annotations

import json
import random
from unittest import mock

import pytest
import torch
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import OperationalError
from django.test import Client
from transformers import AutoModelForCausalLM, AutoTokenizer

from chat import replies
from chat.models import Conversation, LanguageModel, Message
from chat.rendering import render_markdown
from chatsite.asgi import application
from inference import streams
from inference.backends.base import GenerationRequest
from inference.backends.transformers import BatchEngine
from inference.loading import public_load_error
from inference.prompts import TooLong, apply_template, prompt_ids
from inference.protocol import Request

from .socket_client import connect, receive, send, until_done

pytestmark = pytest.mark.django_db(transaction=True)


# --- helpers -----------------------------------------------------------------------------------
@pytest.fixture
def empty_queue():
    """Tests without a worker leave requests queued in the shared Redis: start and end empty."""
    streams.client().delete(streams.QUEUE_KEY)
    yield
    streams.client().delete(streams.QUEUE_KEY)


@database_sync_to_async
def counts() -> tuple[int, int]:
    return Conversation.objects.count(), Message.objects.count()


@database_sync_to_async
def stored(message_id: int) -> Message | None:
    return Message.objects.filter(pk=message_id).first()


async def expect_error(ws: WebsocketCommunicator, code: str) -> dict:
    frame = await receive(ws, timeout=10)
    assert frame["type"] == "chat.error", frame
    assert frame["code"] == code, frame
    return frame


async def expect_started(ws: WebsocketCommunicator, content: str = "Still there?", **fields) -> dict:
    await send(ws, {"type": "chat.send", "content": content, **fields})
    frame = await receive(ws, timeout=10)
    assert frame["type"] == "chat.started", frame
    return frame


async def expect_closed_4401(ws: WebsocketCommunicator) -> None:
    assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}


def logged_in_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


async def connect_with(client: Client) -> WebsocketCommunicator:
    """A socket on the same session as `client` (so a logout through `client` ends it)."""
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", cookie)]
    ws = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await ws.connect()
    assert connected
    return ws


@database_sync_to_async
def finished_chat(user, model, max_tokens: int = 8) -> tuple[Message, Message]:
    conversation = Conversation.objects.create(user=user, title="Earlier", model=model)
    question = Message.objects.create(
        conversation=conversation, role=Message.Role.USER, content="Question", html=render_markdown("Question")
    )
    answer = Message.objects.create(
        conversation=conversation,
        parent=question,
        role=Message.Role.ASSISTANT,
        content="The old answer",
        html=render_markdown("The old answer"),
        status=Message.Status.COMPLETE,
        finish_reason="stop",
        model=model,
        params={"temperature": 0.0, "top_p": 0.9, "max_tokens": max_tokens},
    )
    return question, answer


def fill_queue() -> None:
    """One request waiting in the shared queue (nobody serves it; `empty_queue` removes it)."""
    request = Request(id="other-1", model="tiny", messages=[], sampling={"max_tokens": 1}, max_input_tokens=8)
    streams.client().rpush(streams.QUEUE_KEY, json.dumps(request.to_dict()))


# --- hostile frames ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("[" * 100000, id="100000 open brackets"),
        pytest.param("[" * 60000 + "]" * 60000, id="60000 nested lists"),
        # Parses within Python's recursion limit, then was walked recursively (internal_error).
        pytest.param('{"type": "chat.send", "content": "hi", "params": ' + "[" * 600 + "]" * 600 + "}", id="600 deep"),
        pytest.param('{"type": "chat.send", "content": "hi", "x": ' + '{"a": ' * 300 + "1" + "}" * 301, id="objects"),
    ],
)
async def test_a_deeply_nested_frame_is_invalid_json_and_the_socket_stays_usable(
    alice, tiny_model, empty_queue, settings, raw
):
    settings.CHAT_MAX_FRAME_BYTES = 256 * 1024  # let the frame reach the parser
    ws, _ = await connect(alice)
    await ws.send_to(text_data=raw)
    frame = await expect_error(ws, "invalid_json")
    assert "nested" in frame["message"]
    assert await counts() == (0, 0)
    await expect_started(ws)
    await ws.disconnect()


async def test_a_lone_surrogate_in_content_is_an_invalid_field_and_nothing_is_stored(alice, tiny_model, empty_queue):
    ws, _ = await connect(alice)
    # Valid JSON: the escape decodes to an unpaired surrogate, which no database can store as text.
    await ws.send_to(text_data='{"type":"chat.send","content":"\\ud800"}')
    frame = await expect_error(ws, "invalid_field")
    assert "surrogate" in frame["message"]
    assert await counts() == (0, 0)
    await expect_started(ws)
    await ws.disconnect()


async def test_a_lone_surrogate_in_the_system_prompt_or_a_key_is_refused_too(alice, tiny_model):
    ws, _ = await connect(alice)
    for raw in (
        '{"type":"chat.send","content":"hi","system_prompt":"x\\udfff"}',
        '{"type":"chat.send","content":"hi","params":{"stop":["\\ud83d"]}}',
        '{"type":"chat.send","content":"hi","\\ud800":1}',
    ):
        await ws.send_to(text_data=raw)
        await expect_error(ws, "invalid_field")
    assert await counts() == (0, 0)
    await ws.disconnect()


async def test_frames_after_the_4401_close_of_an_anonymous_socket_are_not_handled(tiny_model):
    ws, _ = await connect(None)
    await expect_closed_4401(ws)
    await send(ws, {"type": "chat.send", "content": "let me in"})
    await send(ws, {"type": "chat.regenerate", "message": 1})
    assert await ws.receive_nothing(timeout=0.5)  # no error frame, no second close
    assert await counts() == (0, 0)


# --- sessions that end while the socket is open ------------------------------------------------
async def test_an_open_socket_stops_working_after_logout(alice, tiny_model, empty_queue):
    client = await sync_to_async(logged_in_client)(alice)
    ws = await connect_with(client)
    await expect_started(ws, "before logout")
    before = await counts()

    response = await sync_to_async(client.post)("/accounts/logout/")
    assert response.status_code == 302
    await send(ws, {"type": "chat.send", "content": "after logout"})
    await expect_closed_4401(ws)
    await send(ws, {"type": "chat.send", "content": "after the close"})
    assert await ws.receive_nothing(timeout=0.5)
    assert await counts() == before


async def test_an_open_socket_stops_working_after_the_user_is_deactivated(alice, tiny_model, empty_queue):
    ws, _ = await connect(alice)
    await expect_started(ws, "before")
    before = await counts()

    alice.is_active = False
    await database_sync_to_async(alice.save)(update_fields=["is_active"])
    await send(ws, {"type": "chat.send", "content": "after deactivation"})
    await expect_closed_4401(ws)
    assert await counts() == before


async def test_an_open_socket_stops_working_after_the_password_is_changed_elsewhere(alice, tiny_model, empty_queue):
    """Django logs every session out when the password changes (their auth hash no longer
    matches); a socket opened before must not keep sending as that user."""
    ws, _ = await connect(alice)
    await expect_started(ws, "before")
    before = await counts()

    alice.set_password("a-new-pass-456")
    await database_sync_to_async(alice.save)(update_fields=["password"])
    await send(ws, {"type": "chat.send", "content": "after the password change"})
    await expect_closed_4401(ws)
    assert await counts() == before


# --- limits ------------------------------------------------------------------------------------
async def test_a_user_at_the_active_reply_limit_gets_too_many_replies_and_nothing_is_stored(
    alice, tiny_model, empty_queue, settings
):
    settings.CHAT_MAX_ACTIVE_PER_USER = 1  # no worker: the first reply stays queued
    ws, _ = await connect(alice)
    first = await expect_started(ws, "first conversation")
    before = await counts()
    assert before == (1, 2)

    await send(ws, {"type": "chat.send", "content": "a second conversation"})
    frame = await expect_error(ws, "too_many_replies")
    assert "limit is 1" in frame["message"]
    assert await counts() == before
    reply = await stored(first["message"])
    assert reply.status == Message.Status.QUEUED
    await ws.disconnect()


async def test_a_full_queue_gets_server_busy_and_the_reply_is_stored_as_error_not_queued(
    alice, tiny_model, empty_queue, settings
):
    settings.INFERENCE_MAX_QUEUE = 1
    fill_queue()
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "hello"})
    await expect_error(ws, "server_busy")

    @database_sync_to_async
    def rows():
        return list(Message.objects.order_by("id").values_list("role", "status", "finish_reason", "error"))

    (user_role, user_status, _, _), (role, status, finish_reason, error) = await rows()
    assert (user_role, user_status) == (Message.Role.USER, Message.Status.COMPLETE)
    assert (role, status, finish_reason) == (Message.Role.ASSISTANT, Message.Status.ERROR, "error")
    assert "could not be queued" in error
    assert streams.queue_length() == 1  # nothing was queued for it
    await ws.disconnect()


# --- regenerate --------------------------------------------------------------------------------
async def test_regenerate_keeps_the_old_reply_when_the_new_one_cannot_be_queued(
    alice, tiny_model, empty_queue, settings
):
    question, answer = await finished_chat(alice, tiny_model)
    settings.INFERENCE_MAX_QUEUE = 1
    fill_queue()
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.regenerate", "message": answer.pk})
    frame = await expect_error(ws, "server_busy")
    assert frame["message_id"] == answer.pk

    kept = await stored(answer.pk)
    assert kept is not None
    assert (kept.content, kept.status) == ("The old answer", Message.Status.COMPLETE)
    active = await database_sync_to_async(Message.objects.filter(status__in=Message.ACTIVE_STATUSES).count)()
    assert active == 0  # the new reply is failed, not left queued
    await ws.disconnect()


async def test_regenerate_after_the_cap_was_lowered_asks_for_at_most_the_new_cap(alice, tiny_model, empty_queue):
    question, answer = await finished_chat(alice, tiny_model, max_tokens=200)
    tiny_model.max_tokens = 16
    tiny_model.max_new_tokens_cap = 50
    await database_sync_to_async(tiny_model.save)()
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.regenerate", "message": answer.pk})
    started = await receive(ws, timeout=10)
    assert started["type"] == "chat.started", started
    reply = await stored(started["message"])
    assert reply.params["max_tokens"] == 50
    old = await stored(answer.pk)
    assert old.replaced_by_id == reply.pk  # replaced once the new one was queued, kept for the logs
    queued = [json.loads(item) for item in streams.client().lrange(streams.QUEUE_KEY, 0, -1)]
    assert [q["sampling"]["max_tokens"] for q in queued if q["id"] == replies.request_id(reply.pk)] == [50]
    await ws.disconnect()


# --- what users are told when a model cannot load ----------------------------------------------
async def ask(user, slug: str) -> tuple[dict, Message]:
    ws, _ = await connect(user)
    started = await expect_started(ws, "hello", model=slug)
    _, done = await until_done(ws, started["message"])
    await ws.disconnect()
    return done, await stored(started["message"])


async def test_a_model_whose_folder_is_missing_fails_with_a_plain_error_without_paths(alice, worker, settings):
    missing = settings.MODEL_DIR / "no-such-model"
    await database_sync_to_async(LanguageModel.objects.create)(
        name="Gone", slug="gone", source=LanguageModel.Source.LOCAL, location=str(missing), dtype="float32"
    )
    done, reply = await ask(alice, "gone")
    assert done["finish_reason"] == "error"
    assert reply.status == Message.Status.ERROR
    assert reply.error == done["error"] == public_load_error("gone")
    assert "could not be loaded" in reply.error
    assert "/" not in reply.error and str(missing) not in reply.error


async def test_the_worker_refuses_a_local_model_outside_model_dir_with_the_plain_error(alice, worker):
    # .objects.create skips the admin form's check: the worker must refuse on its own.
    await database_sync_to_async(LanguageModel.objects.create)(
        name="Etc", slug="etc", source=LanguageModel.Source.LOCAL, location="/etc", dtype="float32"
    )
    done, reply = await ask(alice, "etc")
    assert (done["finish_reason"], reply.status) == ("error", Message.Status.ERROR)
    assert reply.error == public_load_error("etc")
    assert "/etc" not in reply.error
    assert "etc" not in worker.models


async def test_the_worker_refuses_a_link_or_dot_dot_that_leads_out_of_the_allowed_roots(
    alice, worker, settings, tmp_path
):
    root = tmp_path / "models"
    root.mkdir()
    (root / "escape").symlink_to("/etc")
    settings.INFERENCE_MODEL_ROOTS = [str(root)]
    for slug, location in (("link", str(root / "escape")), ("dots", "../../../../../../../etc")):
        await database_sync_to_async(LanguageModel.objects.create)(
            name=slug, slug=slug, source=LanguageModel.Source.LOCAL, location=location, dtype="float32"
        )
        done, reply = await ask(alice, slug)
        assert reply.error == public_load_error(slug), slug
        assert slug not in worker.models


# --- results the database refused at first -----------------------------------------------------
async def test_a_database_error_storing_a_finished_reply_is_retried_until_it_is_stored_once(alice, worker):
    # A mock: a locked or briefly unreachable database cannot be produced on demand reliably
    # (SQLite's busy timeout and PostgreSQL's connection handling differ), so `end` fails the
    # way Django reports such errors, twice, and then stores for real.
    real_end = replies.end
    outcomes = []

    def flaky_end(*args, **kwargs):
        if len(outcomes) < 2:
            outcomes.append("raised")
            raise OperationalError("database is locked")
        stored_now = real_end(*args, **kwargs)
        outcomes.append(stored_now)
        return stored_now

    with mock.patch("chat.replies.end", side_effect=flaky_end):
        ws, _ = await connect(alice)
        started = await expect_started(ws, "Tell me something", params={"max_tokens": 12})
        deltas, done = await until_done(ws, started["message"])
        assert await ws.receive_nothing(timeout=1.5)  # no second done after a later retry
        await ws.disconnect()

    assert outcomes == ["raised", "raised", True]
    assert not worker.unstored
    reply = await stored(started["message"])
    assert reply.status == Message.Status.COMPLETE
    assert done["finish_reason"] in ("stop", "length")
    assert reply.content == "".join(d["text"] for d in deltas)
    assert reply.completion_tokens == done["usage"]["completion_tokens"]
    entries = await database_sync_to_async(streams.read_all)(replies.request_id(reply.pk))
    assert [kind for _, kind, _ in entries].count("done") == 1


# --- prompt trimming ---------------------------------------------------------------------------
WORDS = "sea sky dragon poem story the a of and to is in it you that was for on are with as from".split()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def long_chat(turns: int) -> tuple[dict, list[dict]]:
    rng = random.Random(7)
    system = {"role": "system", "content": "You are terse."}
    messages = []
    for i in range(turns):
        for role in ("user", "assistant"):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))
            messages.append({"role": role, "content": f"[{role} {i}] {words}"})
    messages.append({"role": "user", "content": "[user last] what now?"})
    return system, messages


@pytest.mark.parametrize("limit", [60, 500, 2048])
def test_trimming_a_2000_turn_chat_keeps_the_newest_turns_from_a_user_turn_within_the_limit(tokenizer, limit):
    system, turns = long_chat(2000)
    ids = prompt_ids(tokenizer, [system, *turns], limit)
    assert len(ids) <= limit
    # The prompt is the system prompt and a suffix of the turns that starts with a user turn...
    starts = [i for i in range(len(turns) - 1, len(turns) - 400, -1) if turns[i]["role"] == "user"]
    kept = next((i for i in starts if apply_template(tokenizer, [system, *turns[i:]]) == ids), None)
    assert kept is not None, "the prompt is not the system prompt plus the newest turns"
    assert turns[kept]["role"] == "user"
    assert tokenizer.decode(ids).count("You are terse.") == 1
    # ... and no longer one fits (only what does not fit was dropped).
    earlier = [i for i in starts if i < kept]
    if earlier:
        assert len(apply_template(tokenizer, [system, *turns[earlier[0] :]])) > limit


def test_a_chat_that_fits_is_not_trimmed(tokenizer):
    system, turns = long_chat(3)
    assert prompt_ids(tokenizer, [system, *turns], 4096) == apply_template(tokenizer, [system, *turns])


def test_a_single_message_longer_than_the_limit_raises_too_long(tokenizer):
    system, turns = long_chat(50)
    turns[-1] = {"role": "user", "content": "dragon " * 400}
    with pytest.raises(TooLong) as raised:
        prompt_ids(tokenizer, [system, *turns], 300)
    assert "300" in str(raised.value) and "/" not in str(raised.value)
    with pytest.raises(TooLong):
        prompt_ids(tokenizer, [{"role": "user", "content": "dragon " * 400}], 300)


# --- chunked prefill ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def chat_prompt(tokenizer, n: int) -> list[int]:
    text = " ".join(f"Line {i} is about the sea, the sky and dragon number {i * 7}." for i in range(40))
    ids = list(
        tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)["input_ids"]
    )
    assert len(ids) >= n
    return ids[-n:]


def greedy(n: int, prompt: list[int], request_id: str = "r") -> GenerationRequest:
    # The random tiny model repeats one token under plain greedy decoding; a presence penalty
    # (still deterministic) makes every step's argmax depend on the whole cache, so a wrong
    # chunked prefill changes the tokens.
    return GenerationRequest(request_id, prompt, n, temperature=0.0, presence_penalty=2.0)


def run_engine(engine: BatchEngine, arrivals: dict[int, list[GenerationRequest]]) -> tuple[dict, list]:
    """Step until done; returns ({id: token ids}, [per step: {id: new tokens}, prefilling?])."""
    engine.stop_ids = set()  # random weights: decode the asked length to compare token for token
    tokens: dict[str, list[int]] = {}
    accept = engine._accept

    def recording_accept(row, token):
        tokens.setdefault(row.request.id, []).append(token)
        return accept(row, token)

    engine._accept = recording_accept
    steps = []
    step = 0
    while engine.has_work or any(s >= step for s in arrivals):
        for request in arrivals.get(step, []):
            engine.add(request)
        prefilling = bool(engine.prefilling)
        events = engine.step()
        steps.append(({e.request_id: e.new_tokens for e in events}, prefilling or bool(engine.prefilling)))
        step += 1
        assert step < 500
    return tokens, steps


def test_chunked_prefill_gives_exactly_the_tokens_of_a_whole_prefill(tiny_lm):
    model, tokenizer = tiny_lm
    prompt = chat_prompt(tokenizer, 200)
    chunked, _ = run_engine(BatchEngine(model, tokenizer, prefill_chunk=16), {0: [greedy(24, prompt)]})
    whole, _ = run_engine(BatchEngine(model, tokenizer, prefill_chunk=100000), {0: [greedy(24, prompt)]})
    assert len(chunked["r"]) == 24
    assert len(set(chunked["r"])) > 12, "the comparison must not be between two runs of one repeated token"
    assert chunked["r"] == whole["r"]


def test_a_running_request_gets_a_token_every_step_while_a_long_prompt_is_prefilled(tiny_lm):
    model, tokenizer = tiny_lm
    long_prompt = chat_prompt(tokenizer, 200)
    short_prompt = chat_prompt(tokenizer, 12)
    engine = BatchEngine(model, tokenizer, max_batch=4, prefill_chunk=16)
    tokens, steps = run_engine(engine, {0: [greedy(40, short_prompt, "short")], 2: [greedy(8, long_prompt, "long")]})

    during = [new for new, prefilling in steps if prefilling]
    assert len(during) >= 200 // 16  # the long prompt took one chunk per step
    assert all(new.get("short") == 1 for new in during), during
    # Sharing the batch changed neither request's tokens.
    alone_short, _ = run_engine(
        BatchEngine(model, tokenizer, prefill_chunk=16), {0: [greedy(40, short_prompt, "short")]}
    )
    alone_long, _ = run_engine(BatchEngine(model, tokenizer, prefill_chunk=16), {0: [greedy(8, long_prompt, "long")]})
    assert tokens["short"] == alone_short["short"]
    assert tokens["long"] == alone_long["long"]


@pytest.mark.slow
def test_a_llamacpp_failure_tells_the_user_its_kind_but_not_its_text_which_may_name_paths():
    from inference.backends import open_backend
    from inference.loading import PACKAGED_GGUF, PACKAGED_SLUG, ModelSpec

    from .conftest import TEST_MODEL_DIR

    spec = ModelSpec(slug=PACKAGED_SLUG, source="packaged", location="", backend="llamacpp", gguf_file=PACKAGED_GGUF)
    backend = open_backend(
        spec,
        TEST_MODEL_DIR,
        max_batch=1,
        prefill_chunk=64,
        parallel=1,
        threads=1,
        max_input_tokens=64,
        max_new_tokens=8,
    )

    class CrashingServer:
        """A stand-in for a crash inside the binding, which cannot be caused on demand."""

        def handle_completions(self, body, on_chunk):
            raise RuntimeError("failed to mmap /srv/private/models/weights.gguf")

    real_server, backend.server = backend.server, CrashingServer()
    try:
        backend.add(GenerationRequest("crash", [1, 2, 3], 4))
        events = []
        while backend.has_work:
            events += backend.step()
    finally:
        backend.server = real_server
        backend.close()
    assert [(e.finish_reason, e.error) for e in events] == [("error", "Generation failed (RuntimeError).")]


# --- sockets that only listen (issue 24, finding 8) ---------------------------------------------
async def _receive_close(ws: WebsocketCommunicator, timeout: float = 5) -> dict:
    """The next close frame, skipping what the socket pushed meanwhile."""
    while True:
        message = await ws.receive_output(timeout=timeout)
        if message["type"] == "websocket.close":
            return message


async def test_a_chat_socket_that_only_listens_is_closed_4401_once_its_session_ends(alice, tiny_model, settings):
    from django.contrib.sessions.models import Session

    settings.SOCKET_SESSION_RECHECK_S = 0.3
    ws, connected = await connect(alice)
    assert connected and await ws.receive_nothing(timeout=0.5)  # still open: the session is good
    await database_sync_to_async(lambda: Session.objects.all().delete())()  # logged out elsewhere
    assert await _receive_close(ws) == {"type": "websocket.close", "code": 4401}  # without a frame from it


async def test_a_job_socket_is_closed_4401_once_its_user_is_deactivated(alice, tiny_model, settings):
    from django.contrib.auth.models import Permission

    from finetuning.models import Dataset, Job
    from tests.socket_client import _session_cookie

    settings.SOCKET_SESSION_RECHECK_S = 0.3

    def make_job() -> int:
        alice.user_permissions.add(Permission.objects.get(codename="finetune"))
        dataset = Dataset.objects.create(owner=alice, name="d", original_filename="d.jsonl", format="messages",
                                         file_name="d.jsonl", sha256="0" * 64, rows=12)  # fmt: skip
        return Job.objects.create(owner=alice, name="j", base_model=tiny_model, dataset=dataset,
                                  state=Job.State.RUNNING).pk  # fmt: skip

    job_id = await database_sync_to_async(make_job)()
    cookie = await _session_cookie(alice)
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", f"sessionid={cookie}".encode())]
    ws = WebsocketCommunicator(application, f"/ws/finetune/jobs/{job_id}/", headers=headers)
    assert (await ws.connect(timeout=10))[0]
    assert (await ws.receive_json_from(timeout=5))["job"]["id"] == job_id
    alice.is_active = False
    await database_sync_to_async(alice.save)(update_fields=["is_active"])
    assert await _receive_close(ws) == {"type": "websocket.close", "code": 4401}
