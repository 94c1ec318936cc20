"""Torch work of the inference worker runs on a thread that ends when idle (inference/backends/
torch_thread.py): a torch thread pool left on the worker's own thread slowed its llama.cpp models
about threefold for good (bench/mixed_engines.py measures the speeds; these tests check where
the work runs and that the thread ends)."""

import threading
import time

import pytest

from inference.backends import torch_thread
from inference.backends.torch_thread import IdleEndingThread


def wait_until(condition, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_calls_run_on_a_thread_of_their_own_that_ends_when_idle_and_comes_back():
    runner = IdleEndingThread("torch-test", idle_s=0.2)
    first = runner.call(threading.current_thread)
    assert first is not threading.current_thread() and first.name == "torch-test"
    assert runner.call(threading.current_thread) is first  # one thread while calls keep coming
    assert wait_until(lambda: not first.is_alive() and not runner.alive)
    second = runner.call(threading.current_thread)
    assert second is not first and second.is_alive()


def test_a_call_s_exception_reaches_the_caller_and_the_thread_goes_on():
    runner = IdleEndingThread("torch-test", idle_s=0.5)

    def fails():
        raise RuntimeError("simulated")

    with pytest.raises(RuntimeError, match="simulated"):
        runner.call(fails)
    assert runner.call(lambda x: x + 1, 1) == 2


def test_a_call_made_from_a_call_runs_at_once_instead_of_waiting_for_itself():
    runner = IdleEndingThread("torch-test", idle_s=0.5)
    assert runner.call(lambda: runner.call(lambda: threading.current_thread().name)) == "torch-test"


def test_calls_from_many_threads_each_get_their_own_result():
    runner = IdleEndingThread("torch-test", idle_s=0.05)
    results: dict[int, int] = {}

    def caller(i: int) -> None:
        for _ in range(20):
            results[i] = runner.call(lambda i=i: i * i)
            time.sleep(0.003)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: i * i for i in range(8)}


@pytest.mark.django_db(transaction=True)
async def test_the_worker_s_transformers_model_runs_torch_on_the_torch_thread_only(alice, tiny_model, monkeypatch):
    """The real worker serving the tiny transformers model (loaded on first use) through the chat
    socket: its steps run on the torch thread, never on the worker's own, and the torch thread
    ends once the model is idle."""
    from inference.backends.transformers import BatchEngine

    from .conftest import WorkerThread
    from .socket_client import connect, receive, send, until_done

    monkeypatch.setattr(torch_thread.TORCH, "idle_s", 0.3)
    seen: set[str] = set()
    real_step = BatchEngine.step

    def step(self):
        seen.add(threading.current_thread().name)
        return real_step(self)

    monkeypatch.setattr(BatchEngine, "step", step)
    thread = WorkerThread("torch-thread-test").start()
    try:
        ws, _ = await connect(alice)
        await send(ws, {"type": "chat.send", "content": "Hello", "params": {"max_tokens": 4}})
        started = await receive(ws)
        _, done = await until_done(ws, started["message"])
        assert done["finish_reason"] in ("stop", "length")
        await ws.disconnect()
        assert thread.worker.models["tiny"].backend.name == "transformers"
    finally:
        thread.stop()
    assert seen == {"torch"}
    assert wait_until(lambda: not torch_thread.TORCH.alive)
