"""Benchmark: the inference worker alone (no daphne, no websocket) beside bare llama.cpp, 8
replies at once. The requests go straight into the Redis queue (no sink: nothing is stored) and
their streams are read here, so the stack's round minus this round is what the web tier costs,
and this round against bare llama.cpp's is what the worker costs.

    .venv/bin/python bench/worker_only.py [--rounds 3] [--users 8] [--tokens 96] [--stagger-ms 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")


def worker_round(redis_url: str, prompts: list[str], tokens: int, stagger_s: float = 0.0) -> dict:
    """Queue one request per prompt at once (with `stagger_s`, the first one that long before
    the others, as the stack's first turn reaches the queue before the rest); read every stream
    to its `done`."""
    import json

    import redis

    from bench.run import chat_prompt
    from inference.loading import PACKAGED_SLUG
    from inference.protocol import Request
    from inference.sampling import PACKAGED_DEFAULTS
    from inference.streams import QUEUE_KEY, stream_key

    conn = redis.Redis.from_url(redis_url)
    sampling = {**PACKAGED_DEFAULTS.to_dict(), "temperature": 0.0, "max_tokens": tokens, "stop": []}
    ids = [f"bench-{uuid.uuid4().hex[:12]}" for _ in prompts]
    requests = [
        json.dumps(Request(rid, PACKAGED_SLUG, chat_prompt(prompt), sampling, max_input_tokens=2048).to_dict())
        for rid, prompt in zip(ids, prompts, strict=True)
    ]
    sent = time.monotonic()
    if stagger_s:
        conn.rpush(QUEUE_KEY, requests.pop(0))
        time.sleep(stagger_s)
    conn.rpush(QUEUE_KEY, *requests)
    last = {stream_key(rid): "0" for rid in ids}
    done, first, total = {}, {}, 0
    while len(done) < len(ids):
        result = conn.xread({k: v for k, v in last.items() if k not in done}, block=1000)
        now = time.monotonic()
        for key, entries in result or []:
            key = key.decode()
            for entry_id, fields in entries:
                last[key] = entry_id.decode()
                first.setdefault(key, now)
                if fields[b"kind"] == b"done":
                    done[key] = now
                    total += json.loads(fields[b"data"])["usage"]["completion_tokens"]
    for key in last:
        conn.delete(key)
    return {"tok_s": total / (max(done.values()) - sent), "first_ms": sorted((f - sent) * 1000 for f in first.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--stagger-ms", type=float, default=0, help="queue the first request this long before the rest")
    args = parser.parse_args()

    from bench import run

    ratios = []
    with run.bare_and_llamacpp_stack("worker-only", args.users, args.tokens) as (bare, stack, _, _):
        for i in range(args.rounds):
            prompts = [f"{run.PROMPTS[(i * 5 + j) % len(run.PROMPTS)]} (worker {i} {j})" for j in range(args.users)]
            time.sleep(run.SETTLE_S)
            bare_tok_s = bare.together([p + " bare" for p in prompts])
            time.sleep(run.SETTLE_S)
            worker = worker_round(stack.redis_url, prompts, args.tokens, args.stagger_ms / 1000)
            ratios.append(worker["tok_s"] / bare_tok_s)
            print(
                f"round {i}: bare {bare_tok_s:.1f} tokens/s, worker alone {worker['tok_s']:.1f} "
                f"({ratios[-1]:.2f}x); worker first tokens (ms): {', '.join(f'{v:.0f}' for v in worker['first_ms'])}"
            )
    print(f"worker alone / bare, median of {len(ratios)} rounds: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
