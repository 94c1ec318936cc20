"""Benchmark: how 8 users who send at once get into the llama.cpp stack, beside bare llama.cpp
given its 8 sequences at once. Per reply, from the round's first send: when chat.started came
back (daphne stored the turn and queued it), the worker's first token (from the queue,
done.timing.ttft_ms) and when the first delta reached the client; then the round's aggregate
tokens/s. A round's aggregate is total tokens / (last done - first send), so a reply admitted
late stretches the round while fewer sequences share the engine.

    .venv/bin/python bench/admission.py [--rounds 3] [--users 8] [--tokens 96] [--env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")


def ms(values) -> str:
    return ", ".join(f"{v * 1000:.0f}" for v in sorted(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the stack (repeatable)")
    args = parser.parse_args()

    from bench import run

    rows = []
    env = dict(item.split("=", 1) for item in args.env)
    with run.bare_and_llamacpp_stack("admission", args.users, args.tokens, env) as (bare, stack, _, cookies):
        for i in range(args.rounds):
            prompts = [f"{run.PROMPTS[(i * 5 + j) % len(run.PROMPTS)]} (admission {i} {j})" for j in range(args.users)]
            time.sleep(run.SETTLE_S)
            outs = bare.call("each", [p + " bare" for p in prompts])
            start = min(o["sent"] for o in outs)
            bare_round = max(o["done"] for o in outs) - start
            bare_agg = sum(o["tokens"] for o in outs) / bare_round
            print(f"round {i}: bare llama.cpp {bare_agg:.1f} tokens/s in {bare_round:.2f} s")
            print(f"  bare first tokens (ms from the first send): {ms(o['first'] - start for o in outs)}")
            time.sleep(run.SETTLE_S)
            replies = asyncio.run(run.many(stack, cookies, prompts, args.tokens))
            start = min(r["sent"] for r in replies)
            stack_round = max(r["done"] for r in replies) - start
            stack_agg = sum(r["tokens"] for r in replies) / stack_round
            print(f"  stack {stack_agg:.1f} tokens/s in {stack_round:.2f} s ({stack_agg / bare_agg:.2f}x)")
            print(f"  sends (ms after the first): {ms(r['sent'] - start for r in replies)}")
            print(f"  chat.started (ms): {ms(r['started'] - start for r in replies)}")
            print(f"  worker first token from queueing (ms): {ms(r['server_ttft_ms'] / 1000 for r in replies)}")
            print(f"  first delta at the client (ms): {ms(r['first'] - start for r in replies)}")
            print(f"  replies done (ms): {ms(r['done'] - start for r in replies)}")
            rows.append(stack_agg / bare_agg)
    print(f"stack / bare, median of {len(rows)} rounds: {statistics.median(rows):.2f}")


if __name__ == "__main__":
    main()
