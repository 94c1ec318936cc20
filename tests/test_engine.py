"""The batching engine against plain `generate` on the tiny random model (no Django needed)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.backends.base import GenerationRequest
from inference.backends.transformers import BatchEngine, IncrementalDecoder, stop_token_ids

PROMPTS = ["Hello", "Write a poem about the sea and the sky", "2+2?", "Tell me a story about a dragon"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tokenizer


def prompt_ids(tokenizer, text):
    return list(
        tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)["input_ids"]
    )


def reference(model, tokenizer, text, n):
    ids = torch.tensor([prompt_ids(tokenizer, text)])
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False
        )
    return out[0, ids.shape[1] :].tolist()


def run(engine, arrivals, max_steps=1000):
    """arrivals: {step: [GenerationRequest]}; returns {id: (text, tokens, finish_reason)}."""
    results = {}
    step = 0
    while (engine.has_work or any(s >= step for s in arrivals)) and step < max_steps:
        for request in arrivals.get(step, []):
            engine.add(request)
        for event in engine.step():
            text, tokens, _ = results.get(event.request_id, ("", 0, None))
            results[event.request_id] = (text + event.text, tokens + event.new_tokens, event.finish_reason)
        step += 1
    return results


def test_requests_joining_mid_batch_get_exactly_what_generate_gives(tiny):
    model, tokenizer = tiny
    engine = BatchEngine(model, tokenizer, max_batch=8)
    engine.stop_ids = set()  # random weights: decode a fixed length to compare token for token
    arrivals = {
        0: [GenerationRequest("a", prompt_ids(tokenizer, PROMPTS[0]), 20)],
        3: [GenerationRequest("b", prompt_ids(tokenizer, PROMPTS[1]), 12)],
        7: [
            GenerationRequest("c", prompt_ids(tokenizer, PROMPTS[2]), 25),
            GenerationRequest("d", prompt_ids(tokenizer, PROMPTS[3]), 5),
        ],
    }
    results = run(engine, arrivals)
    for request_id, prompt, n in (
        ("a", PROMPTS[0], 20),
        ("b", PROMPTS[1], 12),
        ("c", PROMPTS[2], 25),
        ("d", PROMPTS[3], 5),
    ):
        text, tokens, reason = results[request_id]
        assert tokens == n and reason == "length"
        assert text == tokenizer.decode(reference(model, tokenizer, prompt, n), skip_special_tokens=True)
    assert not engine.has_work and engine.cache is None


def test_sampled_and_greedy_requests_share_a_batch(tiny):
    model, tokenizer = tiny
    engine = BatchEngine(model, tokenizer, max_batch=8)
    engine.stop_ids = set()
    torch.manual_seed(1)
    arrivals = {
        0: [
            GenerationRequest("greedy", prompt_ids(tokenizer, PROMPTS[1]), 15),
            GenerationRequest("hot", prompt_ids(tokenizer, PROMPTS[1]), 15, temperature=1.5, top_p=0.95),
        ]
    }
    results = run(engine, arrivals)
    expected = tokenizer.decode(reference(model, tokenizer, PROMPTS[1], 15), skip_special_tokens=True)
    assert results["greedy"][0] == expected
    assert results["hot"][1] == 15
    assert results["hot"][0] != expected  # sampling at temperature 1.5 over 49k tokens diverges


def test_cancel_removes_a_request_and_the_others_continue(tiny):
    model, tokenizer = tiny
    engine = BatchEngine(model, tokenizer, max_batch=8)
    engine.stop_ids = set()
    engine.add(GenerationRequest("keep", prompt_ids(tokenizer, PROMPTS[0]), 10))
    engine.add(GenerationRequest("drop", prompt_ids(tokenizer, PROMPTS[3]), 50))
    engine.step()
    engine.step()
    engine.cancel("drop")
    events = engine.step()
    assert any(e.request_id == "drop" and e.finish_reason == "cancelled" for e in events)
    assert engine.active_count == 1
    results = run(engine, {})
    assert results["keep"][2] == "length"


def test_a_finished_request_frees_its_row_for_a_waiting_one(tiny):
    model, tokenizer = tiny
    engine = BatchEngine(model, tokenizer, max_batch=1)
    engine.stop_ids = set()
    arrivals = {
        0: [
            GenerationRequest("first", prompt_ids(tokenizer, "a"), 3),
            GenerationRequest("second", prompt_ids(tokenizer, "b"), 3),
        ]
    }
    results = run(engine, arrivals)
    assert results["first"][1] == 3 and results["second"][1] == 3


def test_the_decoder_never_splits_a_utf8_character(tiny):
    _, tokenizer = tiny
    text = "Prix: 10 € — ünïcödé 日本語のテキスト 🐉🔥 done"
    ids = tokenizer.encode(text, add_special_tokens=False)
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.step(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tokenizer.decode(ids)
    assert len([p for p in pieces if p]) > 1


def test_the_chat_end_token_stops_generation(tiny):
    model, tokenizer = tiny
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(model, tokenizer)
