"""Which engine? Bare throughput of the candidates on the default model, same prompts, same run.

    .venv/bin/python bench/engines.py [--tokens 64] [--users 8]

Compares, for one stream and for N streams at once: plain `model.generate` (batched, left
padded), transformers' own continuous batching (`generate_batch`), and inference.backends.transformers.BatchEngine
(our step-level continuous batching, what the inference worker runs). Greedy, fixed length.
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

from bench.run import PROMPTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--users", type=int, default=8)
    args = parser.parse_args()

    import django

    django.setup()
    import torch
    from django.conf import settings
    from transformers import GenerationConfig

    from inference.backends.base import GenerationRequest
    from inference.backends.transformers import BatchEngine
    from inference.loading import PACKAGED_SLUG, ModelSpec, load_model

    model, tokenizer = load_model(ModelSpec(PACKAGED_SLUG, "packaged", ""), settings.MODEL_DIR)
    n, users = args.tokens, args.users
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in PROMPTS[:users]
    ]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    results = {}

    def generate(count: int) -> float:
        enc = tokenizer(
            prompts[:count], return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        )
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=4, do_sample=False)
            started = time.perf_counter()
            model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return count * n / (time.perf_counter() - started)

    def engine(count: int) -> float:
        eng = BatchEngine(model, tokenizer, max_batch=max(16, count))
        eng.stop_ids = set()  # fixed length, like min_new_tokens above
        for i in range(count):
            eng.add(GenerationRequest(str(i), ids[i], n))
        started = time.perf_counter()
        tokens = 0
        while eng.has_work:
            tokens += sum(e.new_tokens for e in eng.step())
        return tokens / (time.perf_counter() - started)

    def continuous(count: int) -> float:
        config = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=-1)
        started = time.perf_counter()
        out = model.generate_batch(inputs=ids[:count], generation_config=config)
        elapsed = time.perf_counter() - started
        tokens = sum(len(r.generated_tokens) for r in out.values())
        return tokens / elapsed

    # transformers' continuous batching first: its background thread cannot update tensors
    # that an earlier inference_mode run created.
    for name, fn in (
        ("transformers generate_batch", continuous),
        ("model.generate", generate),
        ("BatchEngine (ours)", engine),
    ):
        for count in (1, users):
            try:
                results[(name, count)] = f"{fn(count):.1f}"
            except Exception as exc:  # report, do not hide, an engine that fails here
                results[(name, count)] = f"failed: {type(exc).__name__}: {str(exc)[:80]}"
    dtype = next(model.parameters()).dtype
    print(f"\n## Engines, {n} new tokens per stream, {dtype}, {os.cpu_count()} cores\n")
    print(f"| engine | 1 stream tok/s | {users} streams tok/s |")
    print("|---|---|---|")
    for name in ("model.generate", "BatchEngine (ours)", "transformers generate_batch"):
        print(f"| {name} | {results[(name, 1)]} | {results[(name, users)]} |")


if __name__ == "__main__":
    main()
