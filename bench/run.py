"""Benchmark: the real stack (daphne + inference worker + Redis) driven by real websocket clients,
against bare `model.generate` on the same model, prompts and machine, in the same run.

    make bench                      # or: .venv/bin/python bench/run.py [--tokens 128] [--users 8]

Prints a Markdown report (copy it into docs/performance.md) and writes bench/results/latest.json.
Needs Redis on 127.0.0.1:6379 (or REDIS_URL / STACK_REDIS_URL); uses database 14.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

PROMPTS = [
    "Write a long story about a dragon who learns to read.",
    "Explain in detail how a car engine works.",
    "Describe the history of the Roman Empire.",
    "Write a long poem about autumn leaves.",
    "What are the benefits of regular exercise? Explain at length.",
    "Tell me everything about the planets of the solar system.",
    "Explain how computers store and process information.",
    "Write a detailed recipe for a chocolate cake.",
    "Describe a walk through a busy city market.",
    "Explain how airplanes stay in the air.",
    "Write a letter to a friend about a summer holiday.",
    "Describe how bees make honey.",
    "Explain the water cycle to a child.",
    "Write a story about a robot who wants to be a painter.",
    "Describe the life of a medieval knight.",
    "Explain how vaccines work.",
]


# --- bare model.generate ---------------------------------------------------------------------
def bare_generate(tokens: int, users: int) -> dict:
    import django

    django.setup()
    import torch
    from django.conf import settings

    from inference.loading import PACKAGED_SLUG, ModelSpec, load_model

    model, tokenizer = load_model(ModelSpec(PACKAGED_SLUG, "packaged", ""), settings.MODEL_DIR)
    dtype = str(next(model.parameters()).dtype)

    def template(prompt: str) -> str:
        return tokenizer.apply_chat_template(
            [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": prompt}],
            add_generation_prompt=True,
            tokenize=False,
        )

    with torch.inference_mode():
        one = tokenizer([template(PROMPTS[0])], return_tensors="pt", add_special_tokens=False)
        model.generate(**one, max_new_tokens=8, do_sample=False)  # warm-up
        prefill = []
        for _ in range(5):
            started = time.perf_counter()
            model(**one)
            prefill.append(time.perf_counter() - started)
        single = []
        for _ in range(3):
            started = time.perf_counter()
            out = model.generate(**one, max_new_tokens=tokens, do_sample=False)
            elapsed = time.perf_counter() - started
            new = out.shape[1] - one["input_ids"].shape[1]
            single.append((new, elapsed))
        batch_enc = tokenizer(
            [template(p) for p in PROMPTS[:users]],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        )
        started = time.perf_counter()
        out = model.generate(**batch_enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        batch_elapsed = time.perf_counter() - started
    single_tokens = single[0][0]
    single_rate = statistics.median(n / t for n, t in single)
    return {
        "dtype": dtype,
        "prompt_tokens": int(one["input_ids"].shape[1]),
        "prefill_ms": statistics.median(prefill) * 1000,
        "single_tokens": single_tokens,
        "single_tok_s": single_rate,
        "batch_tok_s": users * tokens / batch_elapsed,
    }


# --- the stack through websockets ------------------------------------------------------------
async def one_reply(stack, cookie: str, prompt: str, tokens: int) -> dict:
    """One user: a socket, one greedy message, its timings (the client checks seq order)."""
    from tests.live_client import Client

    async with Client(stack, cookie) as client:
        reply = await client.chat(prompt, temperature=0, max_tokens=tokens)
        if reply.errors:
            raise RuntimeError(reply.errors)
        await client.follow(reply, timeout=600)
    usage, timing = reply.done["usage"], reply.done["timing"]
    return {
        "sent": reply.sent_at,
        "first": reply.first_at,
        "done": reply.done_at,
        "ttft_ms": (reply.first_at - reply.sent_at) * 1000,
        "tokens": usage["completion_tokens"],
        "tok_s": usage["completion_tokens"] / (reply.done_at - reply.sent_at),
        "server_ttft_ms": timing["ttft_ms"],
    }


async def many(stack, cookie: str, n: int, tokens: int) -> list[dict]:
    return await asyncio.gather(*(one_reply(stack, cookie, PROMPTS[i % len(PROMPTS)], tokens) for i in range(n)))


def stack_run(tokens: int, users: int) -> dict:
    from tests.live_client import login_cookie, rss_mb
    from tests.stack import LiveStack

    with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp:
        stack = LiveStack(Path(tmp), workers=1, extra_env={"CHAT_RATE_LIMIT": "0", "LOG_LEVEL": "WARNING"})
        stack.start()
        try:
            cookie = login_cookie(stack, "bench")
            worker_pid = list(stack.worker_pids.values())[0]
            asyncio.run(one_reply(stack, cookie, "Hello", 8))  # warm-up
            single = [asyncio.run(one_reply(stack, cookie, PROMPTS[0], tokens)) for _ in range(3)]
            rss_1 = rss_mb(worker_pid)
            concurrent = asyncio.run(many(stack, cookie, users, tokens))
            sixteen = asyncio.run(many(stack, cookie, 16, 32))
            rss_16 = rss_mb(worker_pid)
        finally:
            stack.stop()
    start = min(r["sent"] for r in concurrent)
    end = max(r["done"] for r in concurrent)
    first_done = min(r["done"] for r in concurrent)
    return {
        "single_tok_s": statistics.median(r["tok_s"] for r in single),
        "single_tokens": single[0]["tokens"],
        "single_ttft_ms": statistics.median(r["ttft_ms"] for r in single),
        "single_server_ttft_ms": statistics.median(r["server_ttft_ms"] for r in single),
        "users": users,
        "aggregate_tok_s": sum(r["tokens"] for r in concurrent) / (end - start),
        "users_ttft_ms": [round(r["ttft_ms"]) for r in concurrent],
        "all_first_tokens_before_any_reply_ended": all(r["first"] < first_done for r in concurrent),
        "sixteen_completed": len(sixteen),
        "worker_rss_mb_1_user": rss_1,
        "worker_rss_mb_16_users": rss_16,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128, help="max new tokens per reply")
    parser.add_argument("--users", type=int, default=8, help="concurrent users in the batch test")
    args = parser.parse_args()
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")

    bare = bare_generate(args.tokens, args.users)
    stack = stack_run(args.tokens, args.users)
    ratios = {
        "single_vs_bare": stack["single_tok_s"] / bare["single_tok_s"],
        "ttft_minus_prefill_ms": stack["single_ttft_ms"] - bare["prefill_ms"],
        "aggregate_vs_single": stack["aggregate_tok_s"] / stack["single_tok_s"],
        "bare_batch_vs_bare_single": bare["batch_tok_s"] / bare["single_tok_s"],
    }
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "bare": bare,
        "stack": stack,
        "ratios": ratios,
    }
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(result, indent=2))
    checks = [
        ("single user tokens/s ≥ 0.9 × bare generate", ratios["single_vs_bare"] >= 0.9),
        ("time to first token ≤ bare prefill + 100 ms", ratios["ttft_minus_prefill_ms"] <= 100),
        (f"{args.users} users aggregate ≥ 3.5 × single user", ratios["aggregate_vs_single"] >= 3.5),
        ("no user waits for another's whole reply", stack["all_first_tokens_before_any_reply_ended"]),
    ]
    print(f"""
## Benchmark ({result["date"]}, {result["machine"]})

Default model SmolLM2-135M-Instruct, dtype {bare["dtype"]} (chosen by measurement), greedy, up to {args.tokens} new tokens,
prompt of {bare["prompt_tokens"]} tokens.

| measure | bare `generate` | stack over websocket | ratio |
|---|---|---|---|
| 1 user tokens/s | {bare["single_tok_s"]:.1f} | {stack["single_tok_s"]:.1f} | {ratios["single_vs_bare"]:.2f} |
| 1 user first token (ms) | prefill {bare["prefill_ms"]:.0f} | {stack["single_ttft_ms"]:.0f} (server {stack["single_server_ttft_ms"]:.0f}) | +{ratios["ttft_minus_prefill_ms"]:.0f} ms |
| {args.users} users aggregate tokens/s | batched {bare["batch_tok_s"]:.1f} ({ratios["bare_batch_vs_bare_single"]:.2f}×) | {stack["aggregate_tok_s"]:.1f} | {ratios["aggregate_vs_single"]:.2f}× single |
| {args.users} users first token (ms) | | {", ".join(map(str, stack["users_ttft_ms"]))} | |
| worker RSS (MB) | | 1 user {stack["worker_rss_mb_1_user"]:.0f}, 16 users {stack["worker_rss_mb_16_users"]:.0f} | |
""")
    for label, ok in checks:
        print(f"- [{'x' if ok else ' '}] {label}")


if __name__ == "__main__":
    main()
