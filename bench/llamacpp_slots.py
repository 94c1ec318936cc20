"""Benchmark: does a short prompt wait for a long one's whole prefill in llama.cpp? It depends on
the slots they get.

llama.cpp's server fills each batch slot by slot, in slot order: a prompt in a lower slot is read
first. Bare llama.cpp (xllamacpp, the packaged GGUF, 4 parallel slots, batches of 64 tokens, 2
threads) gets a prompt of about 1,900 tokens, then 0.3 s later a one-word prompt, each pinned to
a slot with `id_slot`, both ways round; printed: each one's first token, counted from its own
send. (The inference worker lets llama.cpp pick the slot today; `make bench`'s "hi" beside a
2,000-turn reply shows the same effect when the short one lands in the higher slot.)

    .venv/bin/python bench/llamacpp_slots.py
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")


def main() -> None:
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
    params.n_parallel, params.n_ctx, params.kv_unified = 4, 8192, True
    params.n_batch = params.n_ubatch = 64
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 2
    params.verbosity = -1
    server = xllamacpp.Server(params)
    long_ids = apply_template(tokenizer, [{"role": "user", "content": " ".join(f"word{i}" for i in range(500))}])
    short_ids = apply_template(tokenizer, [{"role": "user", "content": "hi"}])

    def run(ids: list[int], slot: int, out: dict, name: str) -> None:
        body = {"prompt": ids, "max_tokens": 4, "stream": True, "temperature": 0, "cache_prompt": False}
        body["id_slot"] = slot
        sent = time.perf_counter()

        def on_chunk(chunk) -> bool:
            out.setdefault(name, time.perf_counter() - sent)
            return False

        server.handle_completions(body, on_chunk)

    print(f"a {len(long_ids)}-token prompt, then 0.3 s later a {len(short_ids)}-token one:")
    for long_slot, short_slot in ((0, 3), (3, 0)):
        out: dict = {}
        first = threading.Thread(target=run, args=(long_ids, long_slot, out, "long"))
        first.start()
        time.sleep(0.3)
        second = threading.Thread(target=run, args=(short_ids, short_slot, out, "short"))
        second.start()
        first.join()
        second.join()
        print(
            f"- long in slot {long_slot}, short in slot {short_slot}: long's first token {out['long']:.2f} s, "
            f"short's {out['short']:.2f} s"
        )


if __name__ == "__main__":
    main()
