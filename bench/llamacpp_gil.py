"""Benchmark: does Python work in the inference worker's process slow llama.cpp's stream down?

xllamacpp calls back into Python for every token, and that callback needs the interpreter lock.
The inference worker's own loop (decoding, moderation, Redis writes) holds that lock too. This
measures one llama.cpp stream (the packaged GGUF, greedy, 96 new tokens, distinct prompts) with
llama.cpp on ONE thread, so another core stays free, three ways:

- alone;
- beside a Python thread that holds the lock doing pure-Python work half of the time
  (like a busy worker loop), and sleeps the other half;
- beside a Python thread that does the same work in C with the lock released (hashing a large
  buffer), as a control: a free core is taken, but not the lock.

    .venv/bin/python bench/llamacpp_gil.py [--tokens 96] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

from bench.run import PROMPTS


def python_work(stop: threading.Event) -> None:
    """Holds the interpreter lock about half of the time, in slices of about 5 ms."""
    while not stop.is_set():
        until = time.perf_counter() + 0.005
        while time.perf_counter() < until:
            sum(i * i for i in range(200))
        time.sleep(0.005)


def c_work(stop: threading.Event) -> None:
    """The same duty cycle in C with the lock released (hashlib releases it for large buffers)."""
    data = os.urandom(8 << 20)
    while not stop.is_set():
        until = time.perf_counter() + 0.005
        while time.perf_counter() < until:
            hashlib.sha256(data[: 1 << 20]).digest()
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import django

    django.setup()
    import xllamacpp
    from django.conf import settings
    from transformers import AutoTokenizer

    from inference.loading import PACKAGED_GGUF, install_packaged_model, packaged_gguf_folder
    from inference.prompts import apply_template

    tokenizer = AutoTokenizer.from_pretrained(install_packaged_model(settings.MODEL_DIR))
    params = xllamacpp.CommonParams()
    params.model.path = str(packaged_gguf_folder() / PACKAGED_GGUF)
    params.n_parallel = 1
    params.n_ctx = 4096
    params.n_batch = settings.INFERENCE_LLAMACPP_BATCH
    params.n_ubatch = settings.INFERENCE_LLAMACPP_BATCH
    params.warmup = True
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.verbosity = -1
    server = xllamacpp.Server(params)
    prompts = iter(PROMPTS * 10)

    def stream() -> float:
        ids = apply_template(
            tokenizer,
            [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": next(prompts)}],
        )
        out: dict = {}
        started = time.perf_counter()

        def on_chunk(chunk) -> bool:
            usage = chunk.get("usage")
            if usage:
                out["tokens"] = usage["completion_tokens"]
                out["done"] = time.perf_counter()
            return False

        server.handle_completions(
            {"prompt": ids, "max_tokens": args.tokens, "stream": True, "temperature": 0}, on_chunk
        )
        return out["tokens"] / (out["done"] - started)

    stream()  # warm-up
    results: dict[str, list[float]] = {"alone": [], "beside Python work": [], "beside C work (control)": []}
    for _ in range(args.rounds):  # alternate, so a slow spell of the machine hits every case
        for name, work in (("alone", None), ("beside Python work", python_work), ("beside C work (control)", c_work)):
            stop = threading.Event()
            helper = threading.Thread(target=work, args=(stop,)) if work else None
            if helper:
                helper.start()
            try:
                results[name].append(stream())
            finally:
                stop.set()
                if helper:
                    helper.join()
    print(f"llama.cpp, 1 thread, 1 stream, {args.tokens} new tokens, {os.cpu_count()} cores, {args.rounds} rounds:")
    for name, values in results.items():
        print(f"- {name}: median {statistics.median(values):.1f} tokens/s ({', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
