"""One suite for both engine backends (transformers and llama.cpp), on the real packaged model:
the same behaviour for length, end of turn, cancel, seeds, UTF-8-safe text and token counts."""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest

from inference.backends import open_backend
from inference.backends.base import GenerationRequest
from inference.loading import PACKAGED_GGUF, PACKAGED_SLUG, ModelSpec
from inference.prompts import apply_template

from .conftest import TEST_MODEL_DIR

pytestmark = pytest.mark.slow

BACKENDS = ["transformers", "llamacpp"]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    spec = ModelSpec(
        slug=PACKAGED_SLUG, source="packaged", location="", backend=request.param, gguf_file=PACKAGED_GGUF, dtype="auto"
    )
    engine = open_backend(
        spec,
        TEST_MODEL_DIR,
        max_batch=4,
        prefill_chunk=64,
        parallel=4,
        threads=0,
        max_input_tokens=1024,
        max_new_tokens=256,
    )
    assert engine.name == request.param
    yield engine
    engine.close()


def ask(backend, text: str, **sampling) -> list[int]:
    return apply_template(backend.tokenizer, [{"role": "user", "content": text}])


def run(backend, requests, cancel_after: dict[str, int] | None = None, timeout: float = 120):
    """Run requests to the end; returns {id: (pieces, tokens, finish_reason, error)}."""
    for request in requests:
        backend.add(request)
    results = {r.id: ([], 0, None, "") for r in requests}
    deadline = time.monotonic() + timeout
    while backend.has_work and time.monotonic() < deadline:
        for event in backend.step():
            pieces, tokens, _, _ = results[event.request_id]
            if event.text:
                pieces.append(event.text)
            tokens += event.new_tokens
            results[event.request_id] = (pieces, tokens, event.finish_reason, event.error)
            if cancel_after and tokens >= cancel_after.get(event.request_id, 10**9) and not event.finish_reason:
                backend.cancel(event.request_id)
    assert not backend.has_work, "the backend did not finish in time"
    return results


def test_a_reply_ends_at_its_token_limit_with_length(backend):
    request = GenerationRequest("len", ask(backend, "Tell me a long story about a dragon."), max_new_tokens=7)
    pieces, tokens, reason, _ = run(backend, [request])["len"]
    assert reason == "length" and tokens == 7 and "".join(pieces).strip()


def test_the_end_of_turn_stops_a_reply_with_stop(backend):
    request = GenerationRequest("eot", ask(backend, "What is the capital of Germany?"), max_new_tokens=64)
    pieces, tokens, reason, _ = run(backend, [request])["eot"]
    assert reason == "stop" and tokens < 64
    assert "Berlin" in "".join(pieces)
    assert "<|im_end|>" not in "".join(pieces)


def test_cancel_ends_one_reply_and_the_others_go_on(backend):
    long = "Write a very long essay about the history of the sea."
    requests = [
        GenerationRequest("cancel-me", ask(backend, long), max_new_tokens=200),
        GenerationRequest("keep-me", ask(backend, long + " Please."), max_new_tokens=12),
    ]
    results = run(backend, requests, cancel_after={"cancel-me": 3})
    assert results["cancel-me"][2] == "cancelled" and results["cancel-me"][1] < 200
    assert results["keep-me"][2] == "length" and results["keep-me"][1] == 12


def test_the_same_seed_and_settings_give_the_same_reply(backend):
    settings = dict(temperature=1.0, top_p=0.95, top_k=50, min_p=0.0, max_new_tokens=24)
    prompt = ask(backend, "Invent a name for a new color.")
    texts = []
    for i, seed in enumerate((7, 7, 8)):
        request = GenerationRequest(f"seed-{i}", prompt, seed=seed, **settings)
        texts.append("".join(run(backend, [request])[f"seed-{i}"][0]))
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


def test_text_pieces_never_split_a_utf8_character(backend):
    prompt = ask(backend, "Write three words in French with accents, like café, and a heart emoji.")
    pieces, _, _, _ = run(backend, [GenerationRequest("utf8", prompt, max_new_tokens=48)])["utf8"]
    assert pieces and all("\ufffd" not in piece for piece in pieces)


def test_penalties_make_a_greedy_loop_less_repetitive(backend):
    prompt = ask(backend, "Repeat the word flour forever: flour flour flour flour")
    plain = "".join(run(backend, [GenerationRequest("plain", prompt, max_new_tokens=40)])["plain"][0])
    penalised_request = GenerationRequest(
        "pen", prompt, max_new_tokens=40, repetition_penalty=1.5, frequency_penalty=1.0, presence_penalty=1.0
    )
    penalised = "".join(run(backend, [penalised_request])["pen"][0])
    # The loop's word depends on the dtype (picked per machine by measurement): compare how often
    # each reply repeats its most frequent word, whatever it is.
    assert top_repeats(penalised) < top_repeats(plain), (plain, penalised)


def top_repeats(text: str) -> int:
    words = re.findall(r"\w+", text.lower())
    return max(Counter(words).values(), default=0)


def test_fail_all_ends_every_running_request_with_the_error(backend):
    prompt = ask(backend, "Count from one to one hundred.")
    backend.add(GenerationRequest("f1", prompt, max_new_tokens=100))
    backend.add(GenerationRequest("f2", prompt, max_new_tokens=100))
    events = backend.fail_all("boom")
    assert {(e.request_id, e.finish_reason, e.error) for e in events} >= {
        ("f1", "error", "boom"),
        ("f2", "error", "boom"),
    }
    deadline = time.monotonic() + 30
    while backend.has_work and time.monotonic() < deadline:
        backend.step()  # late events of failed requests are drained, not reported as new
    assert not backend.has_work
