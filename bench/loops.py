"""How often does the default model fall into a repeated loop, per sampling setting and backend?

    .venv/bin/python bench/loops.py [--tokens 256] [--backends llamacpp transformers]

Runs a fixed set of prompts written for this project (open-ended ones that tempt a small model
into repeating itself, and short questions with known answers) through the real backends, with
each candidate setting, a fixed seed per prompt. Reports per setting and backend the share of
replies that loop (see `loops`) and the share of known-answer questions answered right, so a
setting that stops loops by damaging the answers shows up. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

OPEN_PROMPTS = [
    "Give me a recipe for a lemon cake with a list of ingredients.",
    "Write a short poem in French about the sea.",
    "List ten ideas for a child's birthday party.",
    "Explain how a bicycle works, step by step.",
    "Write a story about a cat who becomes a sailor.",
    "What should I pack for a week of hiking in the mountains?",
    "Describe your ideal weekend in a small village.",
    "Write a product description for a wooden chair.",
    "Explain why the sky changes colour at sunset.",
    "Give me a weekly meal plan for a vegetarian family.",
    "Translate into French: The cat sleeps on the warm window sill.",
    "Write the lyrics of a song about rain in the city.",
    "What are the steps to plant a tomato garden?",
    "Write a letter to my neighbour asking to borrow a ladder.",
    "Summarise the plot of a detective story you invent.",
    "List the planets of the solar system with one fact each.",
]
KNOWN = [
    ("What is the capital of Germany?", "berlin"),
    ("What is 2 + 2?", "4"),
    ("What colour is a clear daytime sky?", "blue"),
    ("How many days are there in a week?", "7|seven"),
    ("What is the opposite of hot?", "cold"),
    ("Which animal says moo?", "cow"),
    ("What is frozen water called?", "ice"),
    ("How many legs does a spider have?", "8|eight"),
]
CANDIDATES = {
    "old: temp 0.2, top_p 0.9": dict(temperature=0.2, top_p=0.9, top_k=0, min_p=0.0, repetition_penalty=1.0),
    "greedy + repetition 1.1": dict(temperature=0.0, repetition_penalty=1.1),
    "temp 0.3, top_k 40, min_p 0.05, repetition 1.1": dict(
        temperature=0.3, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1
    ),
    "temp 0.5, top_k 40, min_p 0.05, repetition 1.1": dict(
        temperature=0.5, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1
    ),
    "temp 0.3, top_k 40, min_p 0.05, repetition 1.2": dict(
        temperature=0.3, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.2
    ),
    "temp 0.3, top_k 40, min_p 0.05, frequency 0.3, presence 0.3": dict(
        temperature=0.3, top_p=0.9, top_k=40, min_p=0.05, frequency_penalty=0.3, presence_penalty=0.3
    ),
}


def loops(token_ids: list[int], text: str) -> bool:
    """A reply loops when its last tokens are one short sequence repeated (period ≤ 60 tokens,
    at least 3 times and 30 tokens), or when one line of 10+ characters appears 3 times or more."""
    n = len(token_ids)
    for period in range(1, 61):
        repeats = 0
        i = n - period
        while i - period >= 0 and token_ids[i - period : i] == token_ids[i : i + period]:
            repeats += 1
            i -= period
        if repeats + 1 >= 3 and (repeats + 1) * period >= 30:
            return True
    lines = [line.strip().lower() for line in text.splitlines() if len(line.strip()) >= 10]
    return any(lines.count(line) >= 3 for line in set(lines))


def run_backend(name: str, tokens: int) -> dict:
    import django

    django.setup()
    from django.conf import settings

    from inference.backends import open_backend
    from inference.backends.base import GenerationRequest
    from inference.loading import PACKAGED_GGUF, PACKAGED_SLUG, ModelSpec
    from inference.prompts import apply_template

    spec = ModelSpec(slug=PACKAGED_SLUG, source="packaged", location="", backend=name, gguf_file=PACKAGED_GGUF)
    backend = open_backend(
        spec,
        settings.MODEL_DIR,
        max_batch=8,
        prefill_chunk=256,
        parallel=8,
        threads=0,
        max_input_tokens=1024,
        max_new_tokens=tokens,
    )
    system = {"role": "system", "content": "You are a helpful assistant."}
    results = {}
    for label, setting in CANDIDATES.items():
        started = time.monotonic()
        requests = []
        prompts = OPEN_PROMPTS + [q for q, _ in KNOWN]
        for i, prompt in enumerate(prompts):
            ids = apply_template(backend.tokenizer, [system, {"role": "user", "content": prompt}])
            max_new = tokens if i < len(OPEN_PROMPTS) else 48
            requests.append(GenerationRequest(f"{label}-{i}", ids, max_new_tokens=max_new, seed=1000 + i, **setting))
        texts = {r.id: "" for r in requests}
        for request in requests:
            backend.add(request)
        while backend.has_work:
            for event in backend.step():
                texts[event.request_id] += event.text
        looped = 0
        for request in requests[: len(OPEN_PROMPTS)]:
            text = texts[request.id]
            ids = backend.tokenizer(text, add_special_tokens=False)["input_ids"]
            looped += loops(ids, text)
        right = sum(
            any(a in texts[r.id].lower() for a in answer.split("|"))
            for r, (_, answer) in zip(requests[len(OPEN_PROMPTS) :], KNOWN, strict=True)
        )
        results[label] = {
            "loop_share": looped / len(OPEN_PROMPTS),
            "right_share": right / len(KNOWN),
            "seconds": time.monotonic() - started,
        }
        print(f"{name:12} {label:60} loops {looped}/{len(OPEN_PROMPTS)} right {right}/{len(KNOWN)}", flush=True)
    backend.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256, help="new tokens per open-ended reply")
    parser.add_argument("--backends", nargs="+", default=["llamacpp", "transformers"])
    args = parser.parse_args()
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
    table = {name: run_backend(name, args.tokens) for name in args.backends}
    print(f"\n{len(OPEN_PROMPTS)} open prompts (up to {args.tokens} tokens) and {len(KNOWN)} known-answer questions:\n")
    print("| setting | " + " | ".join(f"{b}: loops / right" for b in args.backends) + " |")
    print("|---|" + "---|" * len(args.backends))
    for label in CANDIDATES:
        cells = [f"{table[b][label]['loop_share']:.0%} / {table[b][label]['right_share']:.0%}" for b in args.backends]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
