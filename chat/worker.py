"""The inference worker: pops requests from Redis, runs them through one BatchEngine per model
(one copy of each model per process, whatever the number of users) and streams coalesced text
to each reply's Redis stream. Started by `manage.py inferenceworker`."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections
from redis.exceptions import RedisError

from . import metrics, reaper, replies, streams
from .engine import BatchEngine, GenerationRequest
from .loading import ModelLoadError, ModelSpec, load_model
from .models import LanguageModel

logger = logging.getLogger(__name__)

REAP_INTERVAL_S = 3.0


@dataclass
class Reply:
    """A reply this worker is generating."""

    message_id: int
    model: str
    enqueued_at: float  # wall clock, from the web process
    prompt_tokens: int
    seq: int = 0
    pending: str = ""
    content: str = ""
    tokens: int = 0
    first_token_at: float | None = None
    flushed_once: bool = False
    stop_seen: bool = False


class TooLong(Exception):
    pass


class InferenceWorker:
    def __init__(self, worker_id: str | None = None, max_batch: int | None = None) -> None:
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.max_batch = max_batch or settings.INFERENCE_MAX_BATCH
        self.flush_interval = settings.CHAT_FLUSH_INTERVAL_MS / 1000
        self.engines: dict[str, BatchEngine] = {}
        self.model_versions: dict[str, object] = {}
        self.replies: dict[int, Reply] = {}
        self.stopping = threading.Event()
        self._last_flush = 0.0
        self._last_reap = 0.0

    # --- lifecycle -----------------------------------------------------------------------------
    def run(self) -> None:
        logger.info("Inference worker %s starting (max batch %s)", self.worker_id, self.max_batch)
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        streams.heartbeat(self.worker_id, self._info())
        beat.start()
        self._preload_default()
        try:
            while not self.stopping.is_set():
                self.run_once()
        finally:
            self._shutdown()

    def stop(self) -> None:
        self.stopping.set()

    def _preload_default(self) -> None:
        """Load the default model before the first request, so its user does not wait for it."""
        default = LanguageModel.default()
        if default is None:
            return
        try:
            self._engine(default.slug)
        except Exception:
            logger.exception("could not preload the default model %s; it will be retried on request", default.slug)

    def run_once(self) -> None:
        requests = self._pull_requests()
        if requests:
            close_old_connections()
        for request in requests:
            self.admit(request)
        for slug, engine in list(self.engines.items()):
            if engine.has_work:
                try:
                    events = engine.step()
                except Exception as exc:
                    logger.exception("generation step failed on %s", slug)
                    events = engine.fail_all(f"Generation failed on the inference worker: {exc}")
                for event in events:
                    self._on_event(event)
        try:
            self._flush()
            if time.monotonic() - self._last_reap > REAP_INTERVAL_S:
                self._last_reap = time.monotonic()
                close_old_connections()
                reaper.reap_all()
        except RedisError as exc:
            # Redis restarting: keep generating; deltas wait in memory until it is back.
            logger.warning("Redis unavailable (%s); will retry", exc)

    def _pull_requests(self) -> list[dict]:
        """Take only as many requests as the batch has room for: the rest stay in the shared
        queue for other workers (and a full batch costs no Redis round trip per step)."""
        queued = sum(len(engine.rows) + len(engine.pending) for engine in self.engines.values())
        room = self.max_batch - queued
        try:
            if queued:
                return streams.pop_requests(room) if room > 0 else []
            first = streams.wait_request(timeout=1.0)
            if first is None:
                return []
            return [first, *streams.pop_requests(room - 1)] if room > 1 else [first]
        except RedisError as exc:
            logger.warning("Redis unavailable (%s); retrying", exc)
            if not queued:
                self.stopping.wait(0.5)
            return []

    def _heartbeat_loop(self) -> None:
        period = max(settings.INFERENCE_HEARTBEAT_TTL_S / 4, 0.5)
        while not self.stopping.wait(period):
            try:
                streams.heartbeat(self.worker_id, self._info())
            except Exception:
                logger.exception("heartbeat failed")

    def _info(self) -> dict:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "models": sorted(self.engines),
            "active": len(self.replies),
            "time": time.time(),
        }

    def _shutdown(self) -> None:
        """On a clean stop, end every running reply as interrupted (its text so far is kept)."""
        for reply in list(self.replies.values()):
            self._finish(reply, "interrupted", error="The inference worker was shut down; regenerate to try again.")
        try:
            streams.client().delete(streams.worker_key(self.worker_id))
        except RedisError:
            pass
        logger.info("Inference worker %s stopped", self.worker_id)

    # --- requests ------------------------------------------------------------------------------
    def admit(self, request: dict) -> None:
        message_id = int(request["message"])
        if not replies.claim(message_id, self.worker_id):
            return  # deleted, reaped or already handled
        try:
            stopped = bool(streams.stopped_among([message_id]))
        except RedisError:
            stopped = False
        if stopped:
            replies.finish(message_id, content="", finish_reason="cancelled", next_seq=1)
            return
        try:
            engine = self._engine(request["model"])
            prompt_ids = self._prompt_ids(engine, request)
        except (ModelLoadError, TooLong) as exc:
            replies.finish(message_id, content="", finish_reason="error", next_seq=1, error=str(exc))
            return
        except Exception as exc:
            logger.exception("could not start reply %s", message_id)
            replies.finish(message_id, content="", finish_reason="error", next_seq=1, error=f"Generation failed: {exc}")
            return
        params = request["params"]
        self.replies[message_id] = Reply(
            message_id=message_id,
            model=request["model"],
            enqueued_at=float(request.get("enqueued_at") or time.time()),
            prompt_tokens=len(prompt_ids),
        )
        engine.add(
            GenerationRequest(
                id=str(message_id),
                prompt_ids=prompt_ids,
                max_new_tokens=int(params["max_tokens"]),
                temperature=float(params["temperature"]),
                top_p=float(params["top_p"]),
            )
        )

    def _engine(self, slug: str) -> BatchEngine:
        row = LanguageModel.objects.filter(slug=slug).first()
        if row is None or not row.enabled:
            raise ModelLoadError(f"The model {slug!r} is not available any more.")
        version = (row.source, row.location, row.device, row.dtype)
        engine = self.engines.get(slug)
        if engine is not None and self.model_versions.get(slug) == version:
            return engine
        if engine is not None and engine.has_work:
            return engine  # reload once its running replies are done
        model, tokenizer = load_model(
            ModelSpec(slug=row.slug, source=row.source, location=row.location, device=row.device, dtype=row.dtype),
            settings.MODEL_DIR,
        )
        engine = BatchEngine(model, tokenizer, max_batch=self.max_batch)
        self.engines[slug] = engine
        self.model_versions[slug] = version
        return engine

    def _prompt_ids(self, engine: BatchEngine, request: dict) -> list[int]:
        """Apply the chat template; drop the oldest turns until the prompt fits the model."""
        limit = int(request["max_input_tokens"])
        messages = list(request["messages"])
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system) :]
        while True:
            ids = _apply_template(engine.tokenizer, system + turns)
            if len(ids) <= limit:
                return ids
            if len(turns) <= 1:
                raise TooLong(
                    f"The message is {len(ids)} tokens with the system prompt; this model accepts at most {limit}. "
                    "Shorten it."
                )
            turns = turns[1:]
            while turns and turns[0]["role"] != "user":
                turns = turns[1:]

    # --- streaming -----------------------------------------------------------------------------
    def _on_event(self, event) -> None:
        reply = self.replies.get(int(event.request_id))
        if reply is None:
            return
        if event.new_tokens and reply.first_token_at is None:
            reply.first_token_at = time.time()
        reply.tokens += event.new_tokens
        reply.pending += event.text
        reply.content += event.text
        if event.finish_reason:
            self._finish(reply, event.finish_reason, error=event.error)

    def _flush(self) -> None:
        """Write every reply's pending text as one delta each (one pipelined round trip), then
        look for stop markers. Text is only marked sent once Redis accepted it."""
        now = time.monotonic()
        first_pieces = any(r.pending and not r.flushed_once for r in self.replies.values())
        if not first_pieces and now - self._last_flush < self.flush_interval:
            return
        self._last_flush = now
        ready = [r for r in self.replies.values() if r.pending]
        if ready:
            pipe = streams.client().pipeline(transaction=False)
            for reply in ready:
                streams.append(pipe, reply.message_id, reply.seq + 1, "delta", {"text": reply.pending})
            pipe.execute()
            for reply in ready:
                reply.seq += 1
                reply.pending = ""
                reply.flushed_once = True
        for message_id in streams.stopped_among([r.message_id for r in self.replies.values() if not r.stop_seen]):
            reply = self.replies[message_id]
            reply.stop_seen = True
            self.engines[reply.model].cancel(str(message_id))

    def _finish(self, reply: Reply, reason: str, error: str = "") -> None:
        if reply.pending:
            try:
                pipe = streams.client().pipeline(transaction=False)
                streams.append(pipe, reply.message_id, reply.seq + 1, "delta", {"text": reply.pending})
                pipe.execute()
                reply.seq += 1
            except RedisError:
                logger.warning(
                    "Redis unavailable: reply %s ends without its last delta (the database has it)", reply.message_id
                )
            reply.pending = ""
        self.replies.pop(reply.message_id, None)
        now = time.time()
        ttft_ms = (reply.first_token_at - reply.enqueued_at) * 1000 if reply.first_token_at else None
        tokens_per_s = None
        if reply.first_token_at and reply.tokens > 1 and now > reply.first_token_at:
            tokens_per_s = (reply.tokens - 1) / (now - reply.first_token_at)
        # Metrics first: whoever sees the done frame can already read them.
        try:
            metrics.record_reply(
                model=reply.model,
                worker=self.worker_id,
                finish_reason=reason,
                tokens=reply.tokens,
                ttft_s=ttft_ms / 1000 if ttft_ms is not None else None,
                itl_s=1 / tokens_per_s if tokens_per_s else None,
                tokens_per_s=tokens_per_s,
            )
        except RedisError:
            logger.warning("Redis unavailable: metrics of reply %s not recorded", reply.message_id)
        replies.finish(
            reply.message_id,
            content=reply.content,
            finish_reason=reason,
            next_seq=reply.seq + 1,
            error=error,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.tokens,
            ttft_ms=round(ttft_ms, 1) if ttft_ms is not None else None,
            tokens_per_s=round(tokens_per_s, 2) if tokens_per_s is not None else None,
        )


def _apply_template(tokenizer, messages: list[dict]) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    return list(encoded)
