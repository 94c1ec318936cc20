"""POST /v1/chat/completions on the inference service: the same workers, batches, moderation
and conversation logs as the chat page.

check (`prepare`: validate the body, input moderation) → do (store the call as a conversation
with source "api" and one queued reply per choice, queue the requests) → answer (collect the
replies, or stream them as server-sent events). The chat sink stores each reply, so an API call
is in the admin's logs like a chat, and the reaper settles it if its worker dies. A client that
disconnects stops its generations.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.http import JsonResponse, StreamingHttpResponse
from redis.exceptions import RedisError

from chat import replies, turns
from chat.models import Conversation, Message
from chat.rendering import render_markdown
from inference import sampling, stream_reader, streams
from inference.protocol import Request
from moderation import checks as moderation_checks
from moderation import events as moderation_events
from presets import quotas

from . import keys
from .auth import api_view
from .errors import ApiError
from .views import usable_model

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
FINISH_REASONS = {"stop": "stop", "length": "length", "moderated": "content_filter", "cancelled": "stop"}
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logit_bias", "audio", "modalities")
IDLE_CHECK_S = 5.0  # a quiet stream: look at the stored reply (worker gone? stream expired?)
MAX_MESSAGES = 1000


@dataclass
class Call:
    """One validated request, stored and ready to queue."""

    model: str
    stream: bool
    include_usage: bool
    conversation_id: int
    requests: list[Request] = field(default_factory=list)
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def id(self) -> str:
        return f"chatcmpl-{self.conversation_id}"

    @property
    def request_ids(self) -> list[str]:
        return [r.id for r in self.requests]


# --- check -------------------------------------------------------------------------------------
def _text(content, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, "Only text content parts are supported.", param=f"messages[{index}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, "content must be a string or a list of text parts.", param=f"messages[{index}].content")


def _messages(raw) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages must be a non-empty list of {role, content}.", param="messages")
    if len(raw) > MAX_MESSAGES:
        raise ApiError(400, f"At most {MAX_MESSAGES} messages per request.", param="messages")
    messages = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ApiError(400, "Each message must be an object with role and content.", param=f"messages[{i}]")
        role = ROLES.get(item.get("role"))
        if role is None:
            raise ApiError(400, "role must be one of system, developer, user, assistant.", param=f"messages[{i}].role")
        text = _text(item.get("content"), i)
        if "\x00" in text:
            raise ApiError(400, "content contains a NUL character.", param=f"messages[{i}].content")
        messages.append({"role": role, "content": text})
    if all(m["role"] == "system" for m in messages):
        raise ApiError(400, "messages need at least one user or assistant message.", param="messages")
    return messages


def _choices(body) -> int:
    n = body.get("n", 1)
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= settings.API_MAX_CHOICES:
        raise ApiError(400, f"n must be an integer from 1 to {settings.API_MAX_CHOICES}.", param="n")
    return n


def _sampling(body, model) -> dict:
    asked = {}
    for name in (*sampling.SAMPLING_FIELDS, "seed", "stop"):
        if body.get(name) is not None:
            asked[name] = body[name]
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        asked["max_tokens"] = limit
    if isinstance(asked.get("stop"), str):
        asked["stop"] = [asked["stop"]]
    try:
        return sampling.resolve(asked, model, cap=model.max_new_tokens_cap)
    except sampling.SettingsError as exc:
        param = "max_tokens" if exc.field == "max_tokens" else exc.field
        raise ApiError(400, exc.message, param=param) from exc


RETRY_BUSY_S = 2  # a reply in flight usually ends within seconds


def _check_account_room(user, n: int, tokens: int) -> None:
    """The account's limits, whichever of its keys (or the chat page) asks: replies in flight
    (every choice counts) and the daily tokens, `n` replies of up to `tokens` reserved now."""
    try:
        turns.check_capacity(user, n)
    except turns.TurnError as exc:
        raise ApiError(429, exc.message, code="too_many_replies", headers={"Retry-After": str(RETRY_BUSY_S)}) from exc
    try:
        quotas.check_daily_tokens(user, quotas.limits_for(user), asked=tokens)
    except quotas.QuotaExceeded as exc:
        raise ApiError(
            429, exc.message, code="insufficient_quota", headers={"Retry-After": str(exc.retry_after)}
        ) from exc


async def check_message_rate(user, body: dict) -> None:
    """The account's message rate (CHAT_RATE_LIMIT per window, or its user's or group's quota),
    shared by the chat page and every key of the account; each choice counts as a message."""
    try:
        await quotas.check_rate(user, _choices(body))
    except quotas.QuotaExceeded as exc:
        raise ApiError(429, exc.message, code="rate_limit_exceeded",
                       headers={"Retry-After": str(exc.retry_after)}) from exc  # fmt: skip


def parse_body(request) -> dict:
    if len(request.body) > settings.API_MAX_BODY_BYTES:
        raise ApiError(413, f"The request body is over {settings.API_MAX_BODY_BYTES} bytes.", code="request_too_large")
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"The body is not valid JSON: {exc}.") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object.")
    return body


def prepare(user, body: dict) -> Call:
    """Validate the call, apply the input rules, store it as an "api" conversation with one
    queued reply per choice, and build the worker requests."""
    for name in UNSUPPORTED:
        if body.get(name):
            raise ApiError(400, f"{name} is not supported by this server.", param=name)
    if body.get("logprobs"):
        raise ApiError(400, "logprobs are not supported by this server.", param="logprobs")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ApiError(400, "model is required (an id from GET /v1/models).", param="model")
    model = usable_model(user, body["model"])
    messages = _messages(body.get("messages"))
    n = _choices(body)
    resolved = _sampling(body, model)
    stream = body.get("stream") is True
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object.", param="stream_options")

    records = []
    for i, message in enumerate(messages):  # every role: system and assistant turns are the client's text too
        outcome = moderation_checks.check_input(message["content"])
        records += outcome.records
        if outcome.block is not None:
            moderation_events.record(outcome.records, source="api", user=user)
            raise ApiError(400, outcome.refusal, param=f"messages[{i}].content", code="content_policy_violation")
        message["content"] = outcome.text

    with transaction.atomic():
        _check_account_room(user, n, n * int(resolved.get("max_tokens") or 0))
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        conversation = Conversation.objects.create(
            user=user,
            source=Conversation.Source.API,
            title=" ".join(last_user.split())[:60] or "API call",
            model=model,
            system_prompt=system,
        )
        stored = [
            Message(conversation=conversation, role=m["role"], content=m["content"], html=render_markdown(m["content"]))
            for m in messages
            if m["role"] != "system"
        ]
        Message.objects.bulk_create(stored)
        for previous, message in zip(stored, stored[1:], strict=False):  # one branch, as on the chat page
            message.parent = previous
        Message.objects.bulk_update(stored[1:], ["parent"])
        last_stored = Message.objects.filter(conversation=conversation, role="user").order_by("-id").first()
        moderation_events.record(records, source="api", user=user, conversation=conversation, message=last_stored)
        call = Call(
            model=model.slug,
            stream=stream,
            include_usage=bool(options.get("include_usage")),
            conversation_id=conversation.pk,
        )
        for index in range(n):
            params = dict(resolved)
            if n > 1 and "seed" in params:
                params["seed"] = params["seed"] + index  # n different choices, each reproducible
            reply = Message.objects.create(
                conversation=conversation,
                parent=stored[-1] if stored else None,
                role=Message.Role.ASSISTANT,
                status=Message.Status.QUEUED,
                model=model,
                params=params,
            )
            call.requests.append(turns.build_request(reply, messages))
    return call


# --- do ----------------------------------------------------------------------------------------
async def enqueue(call: Call) -> None:
    for request in call.requests:
        try:
            await streams.enqueue(request)
        except (streams.QueueFull, RedisError) as exc:
            busy = isinstance(exc, streams.QueueFull)
            for rid in call.request_ids:
                message_id = replies.message_id_of(rid)
                await sync_to_async(replies.end)(message_id, content="", done=_queue_failed(busy), queued_only=True)
            raise ApiError(
                503,
                "The server is busy: too many requests are waiting. Retry in a minute."
                if busy
                else "The inference queue is unavailable. Retry in a minute.",
                code="server_busy",
                headers={"Retry-After": "30"},
            ) from exc


def _queue_failed(busy: bool):
    from inference.protocol import Done

    return Done("error", error="The server was too busy to queue this request." if busy else "Redis was down.")


@dataclass
class Choice:
    index: int
    request_id: str
    last_seq: int = 0
    text: str = ""
    done: dict | None = None


async def events(call: Call):
    """(choice, text, done) as they come, for every choice, until all are done."""
    choices = [Choice(i, rid) for i, rid in enumerate(call.request_ids)]
    quiet_since = time.monotonic()
    by_id = {c.request_id: c for c in choices}
    while any(c.done is None for c in choices):
        positions = {c.request_id: c.last_seq for c in choices if c.done is None}
        entries = await stream_reader.read_many(positions, 1000)  # the process's one blocking read
        for request_id, seq, kind, data in entries:
            choice = by_id[request_id]
            if choice.done is not None:
                continue  # nothing follows a `done`
            choice.last_seq = seq
            if kind == "done":
                choice.done = data
                yield choice, "", data
                continue
            choice.text += data["text"]
            yield choice, data["text"], None
        if entries:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > IDLE_CHECK_S:
            quiet_since = time.monotonic()
            for choice in choices:
                if choice.done is None:
                    settled = await sync_to_async(_settle)(choice.request_id, choice.last_seq)
                    if settled is not None:
                        choice.done = settled
                        yield choice, "", settled


def _settle(request_id: str, after: int) -> dict | None:
    """A quiet stream: reap the reply if its worker is gone; once ended, its end from the row."""
    ended = replies.settle_quiet_reply(replies.message_id_of(request_id), after)
    if ended is None:
        return None
    message = ended.message
    if message is None:
        return {"finish_reason": "error", "error": "The reply was deleted.", "usage": {}}
    return {
        "finish_reason": message.finish_reason or "error",
        "error": message.error,
        "usage": {"prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens},
    }


async def stop(call: Call) -> None:
    """The client went away: stop every generation of the call (the worker stores what it has)."""
    for request_id in call.request_ids:
        try:
            await streams.request_stop(request_id)
        except RedisError:
            pass


def _usage(dones: list[dict]) -> dict:
    prompt = max((d.get("usage", {}).get("prompt_tokens") or 0 for d in dones), default=0)
    completion = sum(d.get("usage", {}).get("completion_tokens") or 0 for d in dones)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _failure(done: dict) -> ApiError | None:
    reason = done.get("finish_reason")
    if reason in FINISH_REASONS:
        return None
    return ApiError(500, done.get("error") or "Generation failed on the inference worker.", code="generation_failed")


async def collect(call: Call, api_key) -> dict:
    try:
        dones = {}
        texts = {}
        async for choice, _text_piece, done in events(call):
            if done is not None:
                dones[choice.index], texts[choice.index] = done, choice.text
    except asyncio.CancelledError:
        await stop(call)
        raise
    ordered = [dones[i] for i in range(len(call.requests))]
    for done in ordered:
        failure = _failure(done)
        if failure is not None:
            raise failure
    usage = _usage(ordered)
    await sync_to_async(keys.count_use)(api_key, usage["prompt_tokens"], usage["completion_tokens"], request=False)
    return {
        "id": call.id,
        "object": "chat.completion",
        "created": call.created,
        "model": call.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": texts[i], "refusal": None},
                "logprobs": None,
                "finish_reason": FINISH_REASONS[ordered[i]["finish_reason"]],
            }
            for i in range(len(ordered))
        ],
        "usage": usage,
    }


def _sse(data) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def stream_events(call: Call, api_key):
    """The server-sent events of a streamed call: a role chunk per choice, content chunks, a
    finish chunk per choice, the usage chunk when asked, then `data: [DONE]`."""

    def chunk(choices, usage=None, with_usage=False):
        data = {
            "id": call.id,
            "object": "chat.completion.chunk",
            "created": call.created,
            "model": call.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if call.include_usage:
            data["usage"] = usage if with_usage else None
        return _sse(data)

    finished = False
    try:
        for i in range(len(call.requests)):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])  # fmt: skip
        dones = {}
        async for choice, piece, done in events(call):
            if done is None:
                if piece:
                    yield chunk([{"index": choice.index, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}])  # fmt: skip
                continue
            dones[choice.index] = done
            failure = _failure(done)
            if failure is not None:
                yield _sse(failure.body())
                continue
            reason = FINISH_REASONS[done["finish_reason"]]
            yield chunk([{"index": choice.index, "delta": {}, "logprobs": None, "finish_reason": reason}])
        usage = _usage(list(dones.values()))
        if call.include_usage:
            yield chunk([], usage=usage, with_usage=True)
        await sync_to_async(keys.count_use)(api_key, usage["prompt_tokens"], usage["completion_tokens"], request=False)
        finished = True
        yield b"data: [DONE]\n\n"
    finally:
        if not finished:  # the client disconnected (cancelled), or the stream failed
            await stop(call)


# --- the view ----------------------------------------------------------------------------------
@api_view("POST", scope="chat")
async def chat_completions(request):
    body = await sync_to_async(parse_body)(request)
    await check_message_rate(request.user, body)
    call = await sync_to_async(prepare)(request.user, body)
    await enqueue(call)
    if call.stream:
        response = StreamingHttpResponse(stream_events(call, request.api_key), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        return response
    return JsonResponse(await collect(call, request.api_key))
