"""Torch work of an inference worker runs on one thread that ends once idle.

torch's CPU operations start an OpenMP thread pool that belongs to the thread that ran them and
lives as long as it does. llama.cpp's CPU backend uses the same OpenMP runtime, and while that
pool exists its threads wait far worse: one llama.cpp stream measured 71.7 tokens/s alone, 24.5
after one torch matmul on the process's main thread, 70.5 after the same matmul on a thread that
had ended (bench/mixed_engines.py, a 2-core Intel VM; 25-32 % slower on AMD ones). A worker that
served a transformers model, even once, served its llama.cpp models at a third of their speed
for the rest of its life.

So every call that runs torch in a transformers backend (loading, each step, adapters, closing)
goes to `TORCH`, a thread that ends IDLE_S after its last call (and its pool with it); the next
call starts a new one. The worker's loop waits for each call, so a backend is never used by two
threads at once.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from .base import Backend, GenerationRequest, StepEvent

IDLE_S = 2.0  # a torch thread with no call for this long ends


class IdleEndingThread:
    """Runs calls one at a time on a thread that ends after `idle_s` without a call."""

    def __init__(self, name: str, idle_s: float) -> None:
        self.name, self.idle_s = name, idle_s
        self._calls: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        with self._lock:
            return self._thread is not None

    def call(self, fn, *args, **kwargs):
        """Run fn(*args, **kwargs) on the thread; return its result or raise its exception."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)  # called from a call (loading resolves its location)
        done: Future = Future()
        with self._lock:
            self._calls.put((fn, args, kwargs, done))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        return done.result()

    def _run(self) -> None:
        while True:
            try:
                fn, args, kwargs, done = self._calls.get(timeout=self.idle_s)
            except queue.Empty:
                with self._lock:
                    if self._calls.empty():  # a call put meanwhile keeps this thread going
                        self._thread = None
                        return
                continue
            try:
                done.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # the caller gets it, the thread goes on
                done.set_exception(exc)


TORCH = IdleEndingThread("torch", IDLE_S)


class OnTorchThread(Backend):
    """A transformers backend whose torch work runs on TORCH. Bookkeeping that runs no torch
    (adding a request to the waiting list, marking one cancelled) stays on the caller's thread."""

    def __init__(self, engine: Backend) -> None:
        self.engine = engine
        self.name = engine.name
        self.tokenizer = engine.tokenizer

    def __getattr__(self, attribute):  # the engine's own attributes (its model, its rows)
        return getattr(self.engine, attribute)

    @property
    def adapters(self) -> dict[str, str]:
        return self.engine.adapters

    @property
    def has_work(self) -> bool:
        return self.engine.has_work

    @property
    def load(self) -> int:
        return self.engine.load

    def add(self, request: GenerationRequest) -> None:
        self.engine.add(request)

    def cancel(self, request_id: str) -> None:
        self.engine.cancel(request_id)

    def step(self) -> list[StepEvent]:
        return TORCH.call(self.engine.step)

    def add_adapter(self, name: str, folder) -> bool:
        return TORCH.call(self.engine.add_adapter, name, folder)

    def fail_all(self, error: str) -> list[StepEvent]:
        return TORCH.call(self.engine.fail_all, error)

    def close(self) -> None:
        TORCH.call(self.engine.close)
