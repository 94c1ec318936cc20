"""The llama.cpp backend chooses each request's slot: llama.cpp reads waiting prompts slot by slot
in slot order, so a short prompt in a slot above a long one's waits for all of it
(bench/llamacpp_slots.py measures it)."""

from __future__ import annotations

import time

import pytest

from inference.backends import open_backend
from inference.backends.base import GenerationRequest
from inference.backends.llamacpp import choose_slot
from inference.loading import PACKAGED_GGUF, PACKAGED_SLUG, ModelSpec
from inference.prompts import apply_template

from .conftest import TEST_MODEL_DIR


def test_a_long_prompt_takes_the_highest_free_slot_and_a_short_one_the_lowest():
    assert choose_slot([0, 1, 2, 3], {}, list(range(500)), 64) == 3
    assert choose_slot([0, 1, 2, 3], {}, list(range(20)), 64) == 0
    assert choose_slot([1, 2], {}, list(range(20)), 64) == 1


def test_a_conversation_goes_back_to_the_slot_that_holds_its_start():
    history = list(range(1000))
    cached = {0: [7, 7, 7], 2: history}
    # The next turn: the history plus a short message; only the new tokens are left to read.
    assert choose_slot([0, 1, 2, 3], cached, history + [5, 6, 7], 64) == 2
    # A long prompt sharing more than a batch with a cached one still reuses it.
    assert choose_slot([0, 1, 2, 3], cached, history[:200] + list(range(5000, 5800)), 64) == 2
    # Sharing a little while a long read is left: the highest free slot, as for a new prompt.
    assert choose_slot([0, 1, 2, 3], {0: [1, 2]}, [1, 2] + list(range(9000, 9500)), 64) == 3


def test_a_next_turn_goes_back_to_the_slot_that_read_its_last_turn_and_wrote_its_reply():
    first_turn = list(range(100, 140))  # 40 prompt tokens, then a reply of 90 tokens
    next_turn = first_turn + list(range(1000, 1090)) + list(range(2000, 2024))
    cached = {0: list(range(7000, 7040)), 1: first_turn}
    # Only the prompt counted: 40 shared tokens of 154 leave more than a batch to read (slot 3).
    assert choose_slot([0, 1, 2, 3], cached, next_turn, 64) == 3
    # With the reply's 90 tokens (llama.cpp's cache holds them too), about 24 are left: slot 1.
    assert choose_slot([0, 1, 2, 3], cached, next_turn, 64, generated={1: 90}) == 1
    # A reply counts only behind a prompt shared whole.
    assert choose_slot([0, 1, 2, 3], {1: [100, 5]}, next_turn, 64, generated={1: 90}) == 3


@pytest.mark.slow
def test_background_work_has_a_slot_of_its_own():
    spec = ModelSpec(
        slug=PACKAGED_SLUG, source="packaged", location="", backend="llamacpp", gguf_file=PACKAGED_GGUF, dtype="auto"
    )
    backend = open_backend(
        spec, TEST_MODEL_DIR, max_batch=4, prefill_chunk=64, parallel=2, threads=0,
        max_input_tokens=1024, max_new_tokens=64,
    )  # fmt: skip
    try:
        prompt = apply_template(backend.tokenizer, [{"role": "user", "content": "Say hi."}])
        backend.add(GenerationRequest("person", prompt, max_new_tokens=2))
        backend.add(GenerationRequest("title", prompt, max_new_tokens=2, background=True))
        assert backend._slot_of == {"person": 0, "title": 2}  # 2 slots for people, the third for titles
        deadline = time.monotonic() + 60
        ended = set()
        while backend.has_work and time.monotonic() < deadline:
            ended |= {e.request_id for e in backend.step() if e.finish_reason}
        assert ended == {"person", "title"}
        assert backend._free_slots == {0, 1}
        assert backend._generated[0] == 2  # the person's reply follows its prompt in slot 0's cache
    finally:
        backend.close()


@pytest.mark.slow
def test_a_short_prompt_starts_before_a_long_one_that_came_first_has_been_read():
    """Real llama.cpp on the packaged GGUF, batches of 32 tokens: a ~600-token prompt is added,
    then a short one; the short one's first token comes before the long one's."""
    spec = ModelSpec(
        slug=PACKAGED_SLUG, source="packaged", location="", backend="llamacpp", gguf_file=PACKAGED_GGUF, dtype="auto"
    )
    backend = open_backend(
        spec, TEST_MODEL_DIR, max_batch=4, prefill_chunk=64, parallel=4, threads=0, batch=32,
        max_input_tokens=1024, max_new_tokens=64,
    )  # fmt: skip
    try:
        template = backend.tokenizer
        long_prompt = apply_template(template, [{"role": "user", "content": " ".join(f"item{i}" for i in range(150))}])
        short_prompt = apply_template(template, [{"role": "user", "content": "hi"}])
        assert len(long_prompt) > 500
        backend.add(GenerationRequest("long", long_prompt, max_new_tokens=2))
        assert backend._slot_of["long"] == 3  # the highest of the 4 slots
        time.sleep(0.2)  # the long prompt is being read
        backend.add(GenerationRequest("short", short_prompt, max_new_tokens=2))
        assert backend._slot_of["short"] == 0
        first: list[str] = []
        deadline = time.monotonic() + 120
        while backend.has_work and time.monotonic() < deadline:
            for event in backend.step():
                if event.new_tokens and event.request_id not in first:
                    first.append(event.request_id)
        assert first == ["short", "long"]
    finally:
        backend.close()


def test_a_seeded_request_reads_its_whole_prompt_and_others_reuse_the_cache():
    """A prompt partly read from a slot's cache is computed in other batch shapes, whose last bits
    differ on some CPUs: a seeded reply once changed between two runs with the same seed."""
    from types import SimpleNamespace

    from inference.backends.llamacpp import LlamaCppBackend

    state = SimpleNamespace(_slot_of={}, adapters={}, _fresh=set())
    seeded = LlamaCppBackend._body(state, GenerationRequest("a", [1, 2, 3], max_new_tokens=8, seed=7))
    unseeded = LlamaCppBackend._body(state, GenerationRequest("b", [1, 2, 3], max_new_tokens=8))
    assert seeded["cache_prompt"] is False and seeded["seed"] == 7
    assert unseeded["cache_prompt"] is True and "seed" not in unseeded
    # A slot whose cache was computed with another LoRA adapter: the whole prompt again.
    state._fresh.add("c")
    assert LlamaCppBackend._body(state, GenerationRequest("c", [1, 2, 3], max_new_tokens=8))["cache_prompt"] is False


@pytest.mark.slow
def test_closing_right_after_fail_all_waits_for_the_request_threads():
    """fail_all stops counting its requests at once while their threads are still inside
    llama.cpp; closing then destroyed the server under them, and the process aborted at exit
    ("FATAL: exception not rethrown")."""
    import threading

    spec = ModelSpec(
        slug=PACKAGED_SLUG, source="packaged", location="", backend="llamacpp", gguf_file=PACKAGED_GGUF, dtype="auto"
    )
    backend = open_backend(
        spec, TEST_MODEL_DIR, max_batch=4, prefill_chunk=64, parallel=4, threads=0,
        max_input_tokens=1024, max_new_tokens=64,
    )  # fmt: skip
    prompt = apply_template(backend.tokenizer, [{"role": "user", "content": "Count from one to one hundred."}])
    backend.add(GenerationRequest("f1", prompt, max_new_tokens=60))
    backend.add(GenerationRequest("f2", prompt, max_new_tokens=60))
    backend.fail_all("boom")
    backend.close()
    assert not [t.name for t in threading.enumerate() if t.name in ("llamacpp-f1", "llamacpp-f2")]


def test_every_slot_holds_a_request_of_the_model_s_full_length_at_once():
    """One KV stream per slot (kv_unified off), each sized for the model's input limit plus its
    new-token cap: two people's longest prompts and a background one are read side by side, and
    each gets every token it asked for, none an error for want of room."""
    spec = ModelSpec(
        slug=PACKAGED_SLUG, source="packaged", location="", backend="llamacpp", gguf_file=PACKAGED_GGUF, dtype="auto"
    )
    backend = open_backend(
        spec, TEST_MODEL_DIR, max_batch=4, prefill_chunk=64, parallel=2, threads=0,
        max_input_tokens=300, max_new_tokens=16,
    )  # fmt: skip
    try:
        prompts = {}
        for name in ("first", "second", "title"):
            words = [f"{name}{i}" for i in range(200)]
            while len(ids := apply_template(backend.tokenizer, [{"role": "user", "content": " ".join(words)}])) > 300:
                words.pop()
            assert len(ids) > 280
            prompts[name] = ids
        backend.add(GenerationRequest("title", prompts["title"], max_new_tokens=16, background=True))
        backend.add(GenerationRequest("first", prompts["first"], max_new_tokens=16))
        backend.add(GenerationRequest("second", prompts["second"], max_new_tokens=16))
        tokens, ends = dict.fromkeys(prompts, 0), {}
        deadline = time.monotonic() + 120
        while backend.has_work and time.monotonic() < deadline:
            for event in backend.step():
                tokens[event.request_id] += event.new_tokens
                if event.finish_reason:
                    ends[event.request_id] = (event.finish_reason, event.error)
        assert set(ends) == set(prompts)
        for name, (reason, error) in ends.items():
            assert reason in ("length", "stop") and not error, (name, reason, error)
            assert tokens[name] == 16 or reason == "stop", (name, tokens[name])
    finally:
        backend.close()
