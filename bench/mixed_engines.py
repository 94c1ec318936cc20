"""Benchmark: each engine's speed in a process where the other one has run.

The inference worker can hold a llama.cpp model and a transformers model in one process. First,
in one process: one llama.cpp stream (the packaged GGUF, greedy, 96 new tokens, a prompt of its
own per reply, 4 replies) alone, after `import torch`, after one small torch matmul on the
inference worker's torch thread once that thread has ended (inference/backends/torch_thread.py),
and after the same matmul on the main thread (which leaves torch's OpenMP threads to that thread;
llama.cpp's CPU backend uses the same OpenMP runtime). Then, in a
fresh process: `model.generate` on the same weights (one reply of 96 tokens, 3 times) alone and
after one llama.cpp reply in that process.

    .venv/bin/python bench/mixed_engines.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")


def main() -> None:
    from bench import run as bench

    engine = bench.BareLlamaCpp(96, os.cpu_count() or 1, 8)

    def rate(label: str) -> None:
        rates = [engine.single(f"{bench.PROMPTS[i]} ({label} {i})")["tok_s"] for i in range(4)]
        print(f"- {label}: median {statistics.median(rates):.1f} tokens/s ({', '.join(f'{r:.0f}' for r in rates)})")

    print(f"one llama.cpp stream, {engine.threads} threads, {os.cpu_count()} cores:")
    rate("alone")
    import torch

    from inference.backends.torch_thread import TORCH

    rate("after import torch")

    def matmul() -> None:
        x = torch.randn(512, 512)
        (x @ x).sum()

    # What the inference worker does (inference/backends/torch_thread.py): torch on a thread
    # that ends when idle; then, for comparison, on this process's main thread.
    TORCH.call(matmul)
    while TORCH.alive:
        time.sleep(0.1)
    rate("after one torch matmul on the worker's torch thread, ended")
    matmul()
    rate("after one torch matmul on the main thread")


def generate_side() -> None:
    from bench import run as bench

    engine = bench.BareGenerate(96)

    def rate(label: str) -> None:
        rates = [engine.single(bench.PROMPTS[i])["tok_s"] for i in range(3)]
        print(f"- {label}: median {statistics.median(rates):.1f} tokens/s ({', '.join(f'{r:.1f}' for r in rates)})")

    print(f"model.generate, one reply, {engine.dtype}:")
    rate("alone")
    bench.BareLlamaCpp(96, os.cpu_count() or 1, 8)  # loads, warms up and answers once
    rate("after a llama.cpp reply in this process")


if __name__ == "__main__":
    if sys.argv[1:] == ["--generate-side"]:
        generate_side()
    else:
        main()
        import subprocess

        subprocess.run([sys.executable, __file__, "--generate-side"], check=True)
