"""Benchmark: does the stack's sampling chain cost llama.cpp speed? One stream of bare llama.cpp
(the packaged GGUF, as bench/run.py runs it), greedy, 96 new tokens, with llama.cpp's default
sampling, with the packaged model's settings (repetition penalty 1.1 over the last 64 tokens,
top_k 40, top_p 0.9, min_p 0.05: llama.cpp's penalty step looks up every vocabulary entry), and
with top_k moved before the penalties. Rounds alternate; tokens/s per round.

    .venv/bin/python bench/sampler_cost.py [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    from bench.run import PROMPTS, BareLlamaCpp, chat_prompt
    from inference.prompts import apply_template

    bare = BareLlamaCpp(96, os.cpu_count() or 1, 8)

    def tokens_per_s(prompt: str, extra: dict) -> float:
        body = {"prompt": apply_template(bare.tokenizer, chat_prompt(prompt)), "max_tokens": 96, "stream": True}
        body |= {"temperature": 0, **extra}
        out = {}
        started = time.perf_counter()

        def on_chunk(chunk) -> bool:
            if chunk.get("usage"):
                out["tokens"], out["done"] = chunk["usage"]["completion_tokens"], time.perf_counter()
            return False

        bare.server.handle_completions(body, on_chunk)
        return out["tokens"] / (out["done"] - started)

    packaged = {"repeat_penalty": 1.1, "repeat_last_n": 64, "top_k": 40, "top_p": 0.9, "min_p": 0.05}
    variants = {
        "llama.cpp defaults": {},
        "packaged settings": packaged,
        "packaged, top_k first": {**packaged, "samplers": ["top_k", "penalties", "top_p", "min_p", "temperature"]},
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(args.rounds):
        for name, extra in variants.items():
            results[name].append(tokens_per_s(f"{PROMPTS[i % len(PROMPTS)]} ({name} {i})", extra))
    for name, values in results.items():
        print(f"{name}: tokens/s {', '.join(f'{v:.1f}' for v in values)}")


if __name__ == "__main__":
    main()
