"""The llama.cpp backend: GGUF models served by llama.cpp's own server code running in-process
(the `xllamacpp` wheel: prebuilt, no compiler, continuous batching over parallel slots).

Each request runs `Server.handle_completions` in a thread of its own (the call blocks until the
request ends and releases the GIL while llama.cpp works); its streaming callback puts text
pieces on a queue that `step` drains, so the worker sees the same events as from the
transformers backend. Returning True from the callback cancels the request in llama.cpp.
The prompt is the token ids the worker built with the model's chat template, so both backends
see the same prompt, trim history the same way and count the same tokens.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path

from ..sampling import PENALTY_WINDOW
from .base import Backend, GenerationRequest, StepEvent, merge_events

logger = logging.getLogger(__name__)

WAIT_S = 0.02  # longest a step waits for a first event while requests run
# Once every running request has its first token, a step gathers events for this long: the
# worker wakes a few times per flush instead of once per token, leaving the CPU to llama.cpp's
# threads (on a 2-core machine each wake-up costs them tokens). First tokens are never held.
GATHER_S = 0.025


def choose_slot(
    free: list[int], cached: dict[int, list[int]], prompt: list[int], n_batch: int, generated: dict | None = None
) -> int:
    """The llama.cpp slot for a prompt, among the free ones. llama.cpp fills each batch slot by
    slot in slot order, so a prompt being read in a low slot holds back every prompt in a higher
    one until it is read whole (bench/llamacpp_slots.py: a short prompt's first token after 0.46 s
    below a 1,900-token one, 9.71 s above it). So: the slot whose cache (`cached`: the prompt it
    last read, followed by the `generated` tokens of its reply) shares the longest start with this
    prompt, when that leaves at most one batch to read or saves at least a batch; otherwise, the
    highest free slot for a long read and the lowest for a short one. A conversation's next turn
    starts with the last turn's prompt and reply: its reply's tokens count as shared (their ids
    are not known here; the reply's text, templated again, mostly gives the same ones)."""
    generated = generated or {}
    best, shared = free[0], -1
    for slot in free:
        last = cached.get(slot, ())
        common = _common_start(last, prompt)
        if last and common == len(last):
            common += min(generated.get(slot, 0), len(prompt) - common)
        if common > shared:
            best, shared = slot, common
    if len(prompt) - shared <= n_batch and shared > 0 or shared >= n_batch:
        return best
    return max(free) if len(prompt) > n_batch else min(free)


def _common_start(a, b) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def adapter_gguf(folder) -> Path:
    """Where a LoRA adapter folder keeps its llama.cpp copy (finetuning.gguf_files.write_lora)."""
    return Path(folder) / "adapter.gguf"


class LlamaCppBackend(Backend):
    name = "llamacpp"

    def __init__(
        self,
        gguf_path: str,
        tokenizer,
        *,
        n_parallel: int,
        n_threads: int,
        slot_context: int,
        n_batch: int = 256,
        adapters: dict[str, str] | None = None,  # name → adapter folder holding adapter.gguf
    ) -> None:
        import xllamacpp

        self.tokenizer = tokenizer
        self.gguf_path = gguf_path
        params = xllamacpp.CommonParams()
        params.model.path = gguf_path
        # LoRA adapters (GGUF) are fixed when the server starts; each request names the one it
        # uses by its index (see _body). The worker reopens the backend to add one.
        self.adapters = {name: str(folder) for name, folder in (adapters or {}).items()}
        self._adapter_index = {name: i for i, name in enumerate(self.adapters)}
        params.lora_adapters = [
            xllamacpp.CommonAdapterLoraInfo(str(adapter_gguf(folder)), 1.0) for folder in self.adapters.values()
        ]
        params.lora_init_without_apply = True
        params.n_parallel = n_parallel + 1  # the last one for background work (see background_slot)
        # One KV stream per slot, each with room for one request of the model's full length
        # (`slot_context` tokens). In one pool shared by the slots (kv_unified), the idle caches
        # kept below made every batch's attention span them: a 2,000-token prompt read in 14.2 s
        # instead of 10.3 s, and 8 users' second turns ran at 0.70x bare llama.cpp
        # (docs/performance-history.md, 2026-12-07). The price is memory: slots x slot_context
        # tokens of KV, about 850 MB for the default model's 9 x 4,096.
        params.kv_unified = False
        params.n_ctx = slot_context * params.n_parallel
        # Keep an idle slot's cache in its stream. llama.cpp's default moves it to a RAM cache and
        # clears it whenever another slot starts, and restores it only into a slot llama.cpp picks
        # itself, never into the one a request names (`id_slot`, see choose_slot): the next turn of
        # a 60-turn conversation then read its 1,870 tokens again (11.3 s instead of 0.28 s).
        params.cache_idle_slots = False
        # llama.cpp puts prompt tokens and other slots' next tokens in one batch of n_batch: a
        # small batch reads a long prompt in chunks, so the others keep getting tokens meanwhile.
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        threads = n_threads or os.cpu_count() or 1
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = -1
        params.warmup = True
        self.server = xllamacpp.Server(params)
        self.n_parallel = n_parallel
        # One slot more than asked, kept for background work (titles): it never takes, and so
        # never overwrites, the cache of a slot where a person's conversation was read.
        self.background_slot = n_parallel
        self.n_batch = n_batch
        self._free_slots = set(range(n_parallel))
        self._slot_of: dict[str, int] = {}
        self._cached: dict[int, list[int]] = {}  # slot → the prompt it last read (its cache)
        self._generated: dict[int, int] = {}  # slot → the tokens of the reply that followed it
        self._slot_adapter: dict[int, str] = {}  # slot → the LoRA adapter its cache was computed with
        self._fresh: set[str] = set()  # requests that must read their whole prompt (see add)
        self._events: queue.Queue[StepEvent] = queue.Queue()
        self._running: dict[str, threading.Thread] = {}
        # Every request thread still inside llama.cpp, including those `fail_all` stopped
        # counting: the server must outlive them (destroyed under one, the process aborted).
        self._threads: set[threading.Thread] = set()
        self._cancelled: set[str] = set()
        self._producing: set[str] = set()  # running requests that have their first token
        self._lock = threading.Lock()

    @property
    def has_work(self) -> bool:
        return bool(self._running) or not self._events.empty()

    @property
    def load(self) -> int:
        return len(self._running)

    def add(self, request: GenerationRequest) -> None:
        if not request.prompt_ids:
            raise ValueError("A request needs at least one prompt token.")
        thread = threading.Thread(target=self._run, args=(request,), name=f"llamacpp-{request.id}", daemon=True)
        with self._lock:
            self._running[request.id] = thread
            self._threads.add(thread)
            if request.background:
                # Its own slot, the highest: llama.cpp fills each batch in slot order, so a
                # person's prompt in a lower slot is read first (a second background request
                # waits in llama.cpp's queue for it; the worker runs one at a time).
                self._slot_of[request.id] = self.background_slot
            elif self._free_slots:  # else llama.cpp queues it for the first slot that frees
                free = sorted(self._free_slots)
                # Only a cache computed with the same adapter (or none) is worth reusing; a slot
                # whose cache was computed with another one reads the whole prompt again (a
                # prompt read without the adapter changed an adapter's greedy answer).
                same = {k: v for k, v in self._cached.items() if self._slot_adapter.get(k, "") == request.adapter}
                slot = choose_slot(free, same, request.prompt_ids, self.n_batch, self._generated)
                if self._slot_adapter.get(slot, "") != request.adapter:
                    self._fresh.add(request.id)
                self._free_slots.discard(slot)
                self._slot_of[request.id] = slot
                self._slot_adapter[slot] = request.adapter
                self._cached[slot] = list(request.prompt_ids)
                self._generated[slot] = 0
        thread.start()

    def cancel(self, request_id: str) -> None:
        with self._lock:
            if request_id in self._running:
                self._cancelled.add(request_id)

    def step(self) -> list[StepEvent]:
        events = []
        try:
            events.append(self._events.get(timeout=WAIT_S if self._running else 0))
        except queue.Empty:
            return []
        with self._lock:
            waiting_first = any(rid not in self._producing for rid in self._running)
        if not waiting_first:
            deadline = time.monotonic() + GATHER_S
            while (left := deadline - time.monotonic()) > 0:
                try:
                    event = self._events.get(timeout=left)
                except queue.Empty:
                    break
                events.append(event)
                if event.finish_reason:
                    break  # a reply ended: let the worker store it and admit the next one
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        for event in events:
            with self._lock:
                if event.finish_reason:
                    self._running.pop(event.request_id, None)
                    self._cancelled.discard(event.request_id)
                    self._producing.discard(event.request_id)
                elif event.new_tokens and event.request_id in self._running:
                    self._producing.add(event.request_id)
        return merge_events(events)

    def add_adapter(self, name: str, folder) -> bool:
        return self.adapters.get(name) == str(folder)

    def fail_all(self, error: str) -> list[StepEvent]:
        with self._lock:
            ids = list(self._running)
            self._cancelled.update(ids)
            self._running.clear()
            self._producing.clear()
        return [StepEvent(i, finish_reason="error", error=error) for i in ids]

    def close(self) -> None:
        with self._lock:
            self._cancelled.update(self._running)
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
        self.server = None

    # --- the request's own thread ------------------------------------------------------------------
    def _body(self, request: GenerationRequest) -> dict:
        body = {
            "prompt": list(request.prompt_ids),
            "max_tokens": request.max_new_tokens,
            "stream": True,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "top_k": request.top_k,
            "min_p": request.min_p,
            "repeat_penalty": request.repetition_penalty,
            "frequency_penalty": request.frequency_penalty,
            "presence_penalty": request.presence_penalty,
            "repeat_last_n": PENALTY_WINDOW,
            # A seeded request reads its whole prompt: one partly read from a slot's cache is
            # computed in other batch shapes, whose last bits differ on some CPUs, and at
            # temperature 1 that changed a seeded reply (the same seed twice, once on CI).
            "cache_prompt": request.seed is None and request.id not in self._fresh,
            # A (text-less) chunk after each batch of the prompt is read: the callback can then
            # cancel a request while its prompt is read, not only once it writes (a stop, or a
            # background request giving way to a person's).
            "return_progress": True,
        }
        if request.seed is not None:
            body["seed"] = int(request.seed)
        slot = self._slot_of.get(request.id)
        if slot is not None:
            body["id_slot"] = slot
        if self.adapters:
            # Every adapter's scale, always: one left out keeps its load-time scale.
            chosen = self._adapter_index.get(request.adapter)
            body["lora"] = [{"id": i, "scale": 1.0 if i == chosen else 0.0} for i in range(len(self.adapters))]
        return body

    def _run(self, request: GenerationRequest) -> None:
        state = {"tokens": 0, "finished": False}

        def on_chunk(chunk) -> bool:
            if request.id in self._cancelled:
                return True
            if "error" in chunk:
                message = (chunk.get("error") or {}).get("message", "llama.cpp refused the request")
                self._put(request, state, StepEvent(request.id, finish_reason="error", error=message))
                return True
            choice = (chunk.get("choices") or [{}])[0]
            text = choice.get("text") or ""
            reason = choice.get("finish_reason")
            usage = chunk.get("usage")
            if not (text or reason or usage):
                return False  # the prompt's reading progress: nothing to report
            new_tokens = 1 if text and not reason else 0
            if usage and usage.get("completion_tokens") is not None:
                new_tokens = max(int(usage["completion_tokens"]) - state["tokens"], 0)
            event = StepEvent(request.id, text=text, new_tokens=new_tokens)
            if reason:
                event.finish_reason = "length" if reason == "length" else "stop"
            self._put(request, state, event)
            return False

        try:
            self.server.handle_completions(self._body(request), on_chunk)
        except Exception as exc:  # a crash inside the binding: fail this request only
            logger.exception("llama.cpp failed on %s", request.id)
            # Users see the kind only: the text may name paths (it is in the log above).
            error = f"Generation failed ({type(exc).__name__})."
            self._put(request, state, StepEvent(request.id, finish_reason="error", error=error))
        with self._lock:
            slot = self._slot_of.pop(request.id, None)
            self._fresh.discard(request.id)
            if slot is not None and slot != self.background_slot:
                self._free_slots.add(slot)
                self._generated[slot] = state["tokens"]
            self._threads.discard(threading.current_thread())
        if not state["finished"]:
            reason = "cancelled" if request.id in self._cancelled else "error"
            error = "" if reason == "cancelled" else "llama.cpp ended the request without a result."
            self._put(request, state, StepEvent(request.id, finish_reason=reason, error=error))

    def _put(self, request: GenerationRequest, state: dict, event: StepEvent) -> None:
        if state["finished"]:
            return
        state["tokens"] += event.new_tokens
        state["finished"] = bool(event.finish_reason)
        self._events.put(event)
