"""The inference worker: pops requests from Redis, runs them through one backend per model (one
copy of each model per process, whatever the number of users) and appends raw events to each
request's Redis stream; its sink stores the result. Started by `manage.py inferenceworker`.

The loop: take requests (as many as the batches have room for) → step every backend → flush
coalesced text (about every 50 ms) and look for stop markers → store finished results (retried
while the database is unavailable: a result leaves memory only once stored) → now and then
reap orphans and unload idle models.

Priorities (protocol.Request.priority): interactive requests are taken first, whenever the batch
has room for them. Background requests (titles) are taken one at a time, only when this worker
runs nothing else and no interactive request waits; an interactive request that arrives while a
background one runs preempts it: it is cancelled in the engine (within one llama.cpp batch or one
transformers step) and put back at the front of the background queue, to start again once the
worker is idle. Their text is not streamed while they run (nobody watches it come, and a
preempted one starts over): it is appended once, when they end.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, close_old_connections
from redis.exceptions import RedisError

from moderation.checks import output_filter
from moderation.streaming import OutputFilter

from . import metrics, reaper, results, sinks, streams
from .backends import Backend, GenerationRequest, open_backend
from .backends.llamacpp import LlamaCppBackend, adapter_gguf
from .loading import ModelLoadError, ModelSpec, adapter_folder, public_load_error
from .models import LanguageModel
from .prompts import TooLong, prompt_ids
from .protocol import BACKGROUND, Done, ProtocolError, Request

logger = logging.getLogger(__name__)

REAP_INTERVAL_S = 3.0
BUSY_POLL_S = 0.02  # while generating, look at the queue at most this often (and once per flush)
RETRY_STORE_S = 1.0
EXPIRED_TEXT = "It waited in the background queue past its deadline (the workers stayed busy)."
UNLOAD_CHECK_S = 10.0


@dataclass
class Reply:
    """A request this worker is generating."""

    request: Request
    prompt_tokens: int
    seq: int = 0
    content: str = ""  # what the model wrote (stop strings cut)
    shown: str = ""  # the text appended to the stream so far (moderated: masks applied)
    tokens: int = 0
    first_token_at: float | None = None
    flushed_once: bool = False
    stop_seen: bool = False
    backend: Backend | None = None
    moderation: OutputFilter | None = None  # output rules, when there are any
    preempted: bool = False  # a background reply cancelled for an interactive one: put back, not ended

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def background(self) -> bool:
        return self.request.background


@dataclass
class Finished:
    """A result waiting to be stored (retried while the database is unavailable)."""

    reply: Reply
    done: Done


@dataclass
class Loaded:
    backend: Backend
    version: tuple
    last_used: float


class InferenceWorker:
    def __init__(self, worker_id: str | None = None, max_batch: int | None = None) -> None:
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.max_batch = max_batch or settings.INFERENCE_MAX_BATCH
        self.flush_interval = settings.CHAT_FLUSH_INTERVAL_MS / 1000
        self.flush_max = max(settings.CHAT_FLUSH_MAX_MS / 1000, self.flush_interval)
        self.models: dict[str, Loaded] = {}
        self.broken_adapters: set[str] = set()  # tuned models whose adapter failed to load: merged copy
        self.replies: dict[str, Reply] = {}
        self.unstored: list[Finished] = []
        self.stopping = threading.Event()
        self._last_flush = 0.0
        self._last_poll = 0.0
        self._last_reap = 0.0
        self._last_store_try = 0.0
        self._last_unload_check = time.monotonic()

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
        try:
            default = LanguageModel.default()
            if default is not None:
                self._backend(default)
        except Exception:
            logger.exception("could not preload the default model; it will be retried on request")

    def run_once(self) -> None:
        requests = self._pull_requests()
        if requests:
            close_old_connections()
        # Shortest prompts first: llama.cpp reads waiting prompts one after another, so a short
        # one queued behind a long one would wait for all of it.
        prepared = [p for p in map(self.prepare, requests) if p is not None]
        if any(not generation.background for _, generation in prepared):
            # People first: background requests taken in the same pull go back unstarted, and
            # those running are preempted.
            for _, generation in [p for p in prepared if p[1].background]:
                self._put_back(self.replies[generation.id])
            prepared = [p for p in prepared if not p[1].background]
            self._preempt_background()
        for backend, generation in sorted(prepared, key=lambda p: len(p[1].prompt_ids)):
            backend.add(generation)
        for slug, loaded in list(self.models.items()):
            backend = loaded.backend
            if not backend.has_work:
                continue
            loaded.last_used = time.monotonic()
            try:
                events = backend.step()
            except Exception as exc:
                logger.exception("generation step failed on %s", slug)
                events = backend.fail_all(f"Generation failed on the inference worker ({type(exc).__name__}).")
            for event in events:
                self._on_event(loaded.backend, event)
        try:
            self._flush()
        except RedisError as exc:
            # Redis restarting: keep generating; text waits in memory until it is back.
            logger.warning("Redis unavailable (%s); will retry", exc)
        self._store_unstored()
        now = time.monotonic()
        if now - self._last_reap > REAP_INTERVAL_S:
            self._last_reap = now
            try:
                close_old_connections()
                reaper.reap_all()
            except (RedisError, DatabaseError) as exc:
                logger.warning("reaping skipped (%s)", exc)
        if now - self._last_unload_check > UNLOAD_CHECK_S:
            self._last_unload_check = now
            self._unload_idle()

    def _pull_requests(self) -> list[dict]:
        """Take only as many requests as the batch has room for: the rest stay in the shared
        queue for other workers (and a full batch costs no Redis round trip per step).
        Background replies do not take room from interactive ones (they are preempted), and
        background requests are taken one at a time, only when nothing else runs or waits."""
        busy = sum(loaded.backend.load for loaded in self.models.values()) + len(self.unstored)
        background = sum(1 for reply in self.replies.values() if reply.background)
        room = self.max_batch - busy + background  # for interactive requests
        try:
            if busy:
                # A Redis round trip: while generating, once per flush interval at most (it grows
                # with the replies running, like the flushes); at once when only background
                # work runs, so a person's request preempts it without waiting.
                every = BUSY_POLL_S if busy == background else max(BUSY_POLL_S, self.current_flush_interval())
                if room <= 0 or time.monotonic() - self._last_poll < every:
                    return []
                self._last_poll = time.monotonic()
                return streams.pop_requests(room)
            first = streams.wait_request(timeout=1.0)
            if first is None:
                return []
            if room <= 1 or first.get("priority") == BACKGROUND:
                # One background request at a time (llama.cpp keeps one slot for them), and
                # only when no interactive one waits (wait_request takes from that queue first).
                return [first]
            return [first, *streams.pop_requests(room - 1)]
        except RedisError as exc:
            logger.warning("Redis unavailable (%s); retrying", exc)
            if not busy:
                self.stopping.wait(0.5)
            return []

    def _preempt_background(self) -> None:
        """An interactive request is about to start: cancel every running background reply in
        its engine; each is put back in its queue when the engine reports it ended (_on_event)."""
        for reply in self.replies.values():
            if reply.background and not reply.preempted and reply.backend is not None:
                reply.preempted = True
                reply.backend.cancel(reply.id)

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
            "models": sorted(self.models),
            "backends": {slug: loaded.backend.name for slug, loaded in list(self.models.items())},
            # tuned models served as LoRA adapters over each loaded model
            "adapters": {slug: sorted(loaded.backend.adapters) for slug, loaded in list(self.models.items())},
            "active": len(self.replies),
            "time": time.time(),
        }

    def _shutdown(self) -> None:
        """On a clean stop, end every running request as interrupted (its text so far is kept)."""
        for reply in list(self.replies.values()):
            self._finish(reply, "interrupted", error="The inference worker was shut down; regenerate to try again.")
        for _ in range(3):
            if not self.unstored:
                break
            self._last_store_try = 0
            self._store_unstored()
        for loaded in self.models.values():
            loaded.backend.close()
        try:
            streams.client().delete(streams.worker_key(self.worker_id))
        except RedisError:
            pass
        logger.info("Inference worker %s stopped", self.worker_id)

    # --- requests ------------------------------------------------------------------------------
    def prepare(self, raw: dict) -> tuple[Backend, GenerationRequest] | None:
        """Claim a request and build its prompt; None if it ended here (refused, failed, gone)."""
        try:
            request = Request.from_dict(raw)
        except (ProtocolError, TypeError, KeyError) as exc:
            logger.error("dropping a malformed request (%s): %r", exc, raw)
            return
        sink = sinks.get(request.sink) if request.sink else None
        try:
            if sink is not None and not sink.claim(request.id, self.worker_id):
                return  # deleted, reaped or already handled
        except DatabaseError:
            logger.exception("could not claim %s; it will be reaped and failed", request.id)
            return
        reply = Reply(request=request, prompt_tokens=0)
        try:
            stopped = bool(streams.stopped_among([request.id]))
        except RedisError:
            stopped = False
        if stopped:
            return self._finish(reply, "cancelled")
        if request.expired:
            return self._finish(reply, "cancelled", error=EXPIRED_TEXT)
        try:
            backend, adapter = self._serving(request.model)
            ids = prompt_ids(backend.tokenizer, request.messages, int(request.max_input_tokens))
        except ModelLoadError as exc:
            logger.error("could not load %s: %s", request.model, exc)
            return self._finish(reply, "error", error=public_load_error(request.model))
        except TooLong as exc:
            return self._finish(reply, "error", error=str(exc))
        except Exception:
            logger.exception("could not start %s", request.id)
            return self._finish(reply, "error", error="Generation could not start on the inference worker.")
        reply.prompt_tokens = len(ids)
        reply.backend = backend
        reply.moderation = output_filter()
        self.replies[request.id] = reply
        generation = GenerationRequest.build(
            request.id, ids, request.sampling, adapter=adapter, background=request.background
        )
        return backend, generation

    def _serving(self, slug: str) -> tuple[Backend, str]:
        """The backend that serves a model, and the LoRA adapter it applies ("" for none).

        A tuned model with an adapter is served over its base's loaded copy (ten tuned models
        cost one base and ten adapters). When that cannot be done now (llama.cpp loads adapters
        only when it starts, and is busy; or the adapter has no llama.cpp copy) its merged copy
        is served as a model of its own.
        """
        row = LanguageModel.objects.select_related("base").filter(slug=slug).first()
        if row is None or not row.enabled:
            raise ModelLoadError(f"The model {slug!r} is not available any more.")
        base = row.base
        if row.adapter and base is not None and base.enabled:
            try:
                folder = adapter_folder(row)
            except ModelLoadError as exc:
                logger.warning("%s; serving the merged copy of %s", exc, slug)
                return self._backend(row), ""
            backend = self._backend(base)
            try:
                if backend.add_adapter(slug, folder):
                    return backend, slug
            except Exception:  # a broken adapter: its merged copy still answers
                logger.exception("could not load the adapter of %s", slug)
                self.broken_adapters.add(slug)
            if self._can_reopen(backend) and slug not in self.broken_adapters and adapter_gguf(folder).is_file():
                wanted = list({**backend.adapters, slug: str(folder)}.items())[-settings.INFERENCE_MAX_ADAPTERS :]
                backend = self._backend(base, reopen_with=dict(wanted), adding=slug)
                if backend.add_adapter(slug, folder):
                    return backend, slug
        return self._backend(row), ""

    def _can_reopen(self, backend: Backend) -> bool:
        """llama.cpp takes new adapters only when it starts: reopen it when nothing runs on it
        (nor waits to be added, see run_once)."""
        busy = backend.has_work or any(reply.backend is backend for reply in self.replies.values())
        return isinstance(backend, LlamaCppBackend) and not busy

    def _backend(self, row: LanguageModel, reopen_with: dict | None = None, adding: str = "") -> Backend:
        slug = row.slug
        loaded = self.models.get(slug)
        if reopen_with is not None and loaded is not None and self._can_reopen(loaded.backend):
            loaded.backend.close()
            del self.models[slug]
            loaded = None
        if loaded is not None and (loaded.version == row.load_version or loaded.backend.has_work):
            loaded.last_used = time.monotonic()
            return loaded.backend  # (a changed model is reloaded once its running requests end)
        if loaded is not None:
            loaded.backend.close()
            del self.models[slug]
        self._make_room()
        adapters = reopen_with if reopen_with is not None else self._adapters_of(row)
        try:
            backend = self._open(row, adapters)
        except Exception:
            if not adapters:
                raise
            # A broken adapter file must not take its base (and every user of it) down: the one
            # being added is marked broken (its merged copy serves it); on a first load all are
            # left out, and each is added back when asked for.
            logger.exception("could not load %s with adapters %s", slug, sorted(adapters))
            if adding:
                self.broken_adapters.add(adding)
            adapters = {name: folder for name, folder in adapters.items() if adding and name != adding}
            backend = self._open(row, adapters)
        self.models[slug] = Loaded(backend, row.load_version, time.monotonic())
        return backend

    def _open(self, row: LanguageModel, adapters: dict) -> Backend:
        return open_backend(
            ModelSpec.of(row),
            settings.MODEL_DIR,
            max_batch=self.max_batch,
            prefill_chunk=settings.INFERENCE_PREFILL_CHUNK,
            parallel=min(self.max_batch, settings.INFERENCE_LLAMACPP_PARALLEL),
            threads=settings.INFERENCE_LLAMACPP_THREADS,
            batch=settings.INFERENCE_LLAMACPP_BATCH,
            max_input_tokens=row.max_input_tokens,
            max_new_tokens=row.max_new_tokens_cap,
            max_adapters=settings.INFERENCE_MAX_ADAPTERS,
            adapters=adapters,
        )

    def _adapters_of(self, base: LanguageModel) -> dict:
        """The tuned models over `base` (newest first, up to INFERENCE_MAX_ADAPTERS), for a
        backend that loads its adapters when it starts."""
        rows = LanguageModel.objects.enabled().filter(base=base).exclude(adapter="").order_by("-updated_at")
        found = {}
        for row in rows[: settings.INFERENCE_MAX_ADAPTERS]:
            if row.slug in self.broken_adapters:
                continue
            try:
                found[row.slug] = adapter_folder(row)
            except ModelLoadError:
                continue
        return found

    def _make_room(self) -> None:
        """Keep at most INFERENCE_MAX_MODELS loaded: unload the least recently used idle one."""
        while len(self.models) >= settings.INFERENCE_MAX_MODELS:
            idle = [(loaded.last_used, slug) for slug, loaded in self.models.items() if not loaded.backend.has_work]
            if not idle:
                return  # all busy: load one more rather than fail a request
            _, slug = min(idle)
            logger.info("Unloading %s to make room for another model", slug)
            self.models.pop(slug).backend.close()

    def _unload_idle(self) -> None:
        limit = settings.INFERENCE_IDLE_UNLOAD_S
        if not limit:
            return
        now = time.monotonic()
        for slug, loaded in list(self.models.items()):
            if not loaded.backend.has_work and now - loaded.last_used > limit:
                logger.info("Unloading %s: unused for %d s", slug, now - loaded.last_used)
                self.models.pop(slug).backend.close()

    # --- streaming -----------------------------------------------------------------------------
    def _on_event(self, backend: Backend, event) -> None:
        reply = self.replies.get(event.request_id)
        if reply is None:
            return  # ended already (stop string, or failed)
        if reply.preempted and event.finish_reason == "cancelled" and not reply.stop_seen:
            return self._put_back(reply)
        if event.new_tokens and reply.first_token_at is None:
            reply.first_token_at = time.time()
        reply.tokens += event.new_tokens
        reply.content += event.text
        cut = _stop_string_at(reply.content, reply.request.stop, len(reply.content) - len(event.text))
        if cut is not None:
            reply.content = reply.content[:cut]
            backend.cancel(reply.id)
            return self._finish(reply, "stop")
        if event.finish_reason:
            self._finish(reply, event.finish_reason, error=event.error)

    def _flush(self) -> None:
        """Append every reply's new text as one delta each (one pipelined round trip), then look
        for stop markers. Text is only marked sent once Redis accepted it; the tail that could
        begin a stop string is held back until it is decided."""
        now = time.monotonic()
        # (a background reply is never flushed while it runs: it must not count as first pieces,
        # or every step would flush while a title runs)
        first_pieces = any(r.content and not r.flushed_once and not r.background for r in self.replies.values())
        if not first_pieces and now - self._last_flush < self.current_flush_interval():
            return
        self._last_flush = now
        ready, blocked = [], []
        for reply in self.replies.values():
            if reply.background:
                continue  # appended once, when it ends (see the module's docstring)
            text, block = _view(reply, final=False)
            if block:
                blocked.append(reply)
            elif len(text) > len(reply.shown):
                ready.append((reply, text))
        if ready:
            pipe = streams.client().pipeline(transaction=False)
            for reply, text in ready:
                streams.append(pipe, reply.id, reply.seq + 1, "delta", {"text": text[len(reply.shown) :]})
            pipe.execute()
            for reply, text in ready:
                reply.seq += 1
                reply.shown = text
                reply.flushed_once = True
        for reply in blocked:  # a block rule matched: the reply ends before the match
            reply.backend.cancel(reply.id)
            self._finish(reply, "moderated")
        for request_id in streams.stopped_among([r.id for r in self.replies.values() if not r.stop_seen]):
            reply = self.replies[request_id]
            reply.stop_seen = True
            reply.backend.cancel(request_id)

    def current_flush_interval(self) -> float:
        """The flush interval grows with the replies running at once (up to `flush_max`): their
        tokens share the engine, so each reply's chunks keep about the same number of tokens while
        the web tier's work per token (a stream read, a frame, a live rendering per chunk), which
        on a CPU is taken from the engine's cores, stays flat (bench/cpu_split.py). First pieces
        are never held."""
        interactive = sum(1 for reply in self.replies.values() if not reply.background)
        return min(self.flush_interval * max(interactive, 1), self.flush_max)

    def _put_back(self, reply: Reply) -> None:
        """A preempted background reply: back to the front of its queue, to start over later."""
        self.replies.pop(reply.id, None)
        try:
            streams.put_back(reply.request)
        except RedisError:
            logger.warning("Redis unavailable: preempted %s is ended instead of put back", reply.id)
            self.replies[reply.id] = reply
            reply.preempted = False
            self._finish(reply, "cancelled", error="The inference worker could not put it back in its queue.")

    def _finish(self, reply: Reply, reason: str, error: str = "") -> None:
        """Flush the reply's last text, record metrics, and queue its result for storing."""
        text, block = _view(reply, final=True)
        if block:
            if reason != "moderated":
                reply.backend.cancel(reply.id)
            reason, error = "moderated", _withheld(reply.moderation.block)
        reply.content = text  # what is stored: what people were shown
        if len(text) > len(reply.shown):
            try:
                pipe = streams.client().pipeline(transaction=False)
                streams.append(pipe, reply.id, reply.seq + 1, "delta", {"text": text[len(reply.shown) :]})
                pipe.execute()
                reply.seq += 1
                reply.shown = text
            except RedisError:
                logger.warning("Redis unavailable: %s ends without its last delta (its sink has it)", reply.id)
        self.replies.pop(reply.id, None)
        now = time.time()
        ttft_ms = (reply.first_token_at - reply.request.enqueued_at) * 1000 if reply.first_token_at else None
        tokens_per_s = None
        if reply.first_token_at and reply.tokens > 1 and now > reply.first_token_at:
            tokens_per_s = (reply.tokens - 1) / (now - reply.first_token_at)
        done = Done(
            finish_reason=reason,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.tokens,
            ttft_ms=round(ttft_ms, 1) if ttft_ms is not None else None,
            tokens_per_s=round(tokens_per_s, 2) if tokens_per_s is not None else None,
            error=error,
            worker=self.worker_id,
            moderation=reply.moderation.moderation if reply.moderation else [],
        )
        # Metrics first: whoever sees the done event can already read them.
        try:
            metrics.record_reply(
                model=reply.request.model,
                worker=self.worker_id,
                finish_reason=reason,
                tokens=reply.tokens,
                ttft_s=ttft_ms / 1000 if ttft_ms is not None else None,
                itl_s=1 / tokens_per_s if tokens_per_s else None,
                tokens_per_s=tokens_per_s,
            )
        except RedisError:
            logger.warning("Redis unavailable: metrics of %s not recorded", reply.id)
        self.unstored.append(Finished(reply, done))
        self._last_store_try = 0.0
        self._store_unstored()

    def _store_unstored(self) -> None:
        """Store finished results; one that fails on a database error stays for a retry."""
        if not self.unstored or time.monotonic() - self._last_store_try < RETRY_STORE_S:
            return
        self._last_store_try = time.monotonic()
        waiting, self.unstored = self.unstored, []
        for item in waiting:
            reply = item.reply
            try:
                results.finish(reply.request.sink, reply.id, reply.content, item.done, reply.seq + 1)
            except DatabaseError as exc:
                logger.warning("could not store %s (%s); retrying in %.0f s", reply.id, exc, RETRY_STORE_S)
                close_old_connections()
                self.unstored.append(item)


def _view(reply: Reply, final: bool) -> tuple[str, bool]:
    """The reply's text that may be shown now, and whether a block rule ended it. Held back
    until decided: a tail that could begin a stop string, and one an output rule could match."""
    content = reply.content
    cut = len(content) if final else len(content) - _held_back(content, reply.request.stop)
    if reply.moderation is None:
        return content[:cut], False
    return reply.moderation.view(content, cut, final)


def _withheld(block) -> str:
    about = f" ({block.rule.category})" if block.rule.category else ""
    return f"The rest of this reply was withheld by the moderation rules{about}."


def _stop_string_at(text: str, stops: list[str], new_from: int) -> int | None:
    """Where the first stop string in `text` begins, looking only where new text could complete one."""
    best = None
    for stop in stops:
        index = text.find(stop, max(0, new_from - len(stop) + 1))
        if index != -1 and (best is None or index < best):
            best = index
    return best


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could be the start of a stop string (not sent yet)."""
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:n]):
                held = n
                break
    return held
