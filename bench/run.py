"""Benchmark: the real stack (daphne + inference worker + Redis) driven by real websocket clients,
on both backends, against bare llama.cpp (xllamacpp, same GGUF file) and bare `model.generate`
(same weights), same prompts, same machine, in the same run; then one user's very long
conversation beside another user's short reply.

    make bench                      # or: .venv/bin/python bench/run.py [--tokens 96] [--users 8]

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
SYSTEM = "You are a helpful assistant."


def chat_prompt(prompt: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


# --- bare llama.cpp ----------------------------------------------------------------------------
def bare_llamacpp(tokens: int, users: int, threads: int, parallel: int) -> dict:
    """The packaged GGUF in xllamacpp directly: 1 stream, then `users` parallel sequences, each
    with a prompt of its own (a repeated prompt would be replayed from llama.cpp's cache)."""
    import threading

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
    params.n_parallel = parallel
    params.n_ctx = 8192
    params.kv_unified = True
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.verbosity = -1
    server = xllamacpp.Server(params)

    def one(prompt: str, out: dict) -> None:
        ids = apply_template(tokenizer, chat_prompt(prompt))
        body = {"prompt": ids, "max_tokens": tokens, "stream": True, "temperature": 0}
        out["sent"] = time.perf_counter()

        def on_chunk(chunk) -> bool:
            now = time.perf_counter()
            out.setdefault("first", now)
            usage = chunk.get("usage")
            if usage:
                out["tokens"] = usage["completion_tokens"]
                out["done"] = now
            return False

        server.handle_completions(body, on_chunk)

    runs = []
    for prompt in ["Say hello.", *PROMPTS[:3]]:  # the first is a warm-up
        out: dict = {}
        one(prompt, out)
        runs.append(out)
    single = runs[1:]
    outs = [{} for _ in range(users)]
    threads_ = [threading.Thread(target=one, args=(PROMPTS[3 + i], outs[i])) for i in range(users)]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join()
    start = min(o["sent"] for o in outs)
    end = max(o["done"] for o in outs)
    return {
        "threads": threads,
        "parallel": parallel,
        "single_tok_s": statistics.median(o["tokens"] / (o["done"] - o["sent"]) for o in single),
        "single_ttft_ms": statistics.median((o["first"] - o["sent"]) * 1000 for o in single),
        "batch_tok_s": sum(o["tokens"] for o in outs) / (end - start),
    }


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
async def one_reply(stack, cookie: str, prompt: str, tokens: int, conversation=None) -> dict:
    """One user: a socket, one greedy message, its timings (the client checks seq order)."""
    from tests.live_client import Client

    async with Client(stack, cookie) as client:
        reply = await client.chat(prompt, conversation=conversation, temperature=0, max_tokens=tokens)
        if reply.errors:
            raise RuntimeError(reply.errors)
        await client.follow(reply, timeout=600)
    usage, timing = reply.done["usage"], reply.done["timing"]
    return {
        "sent": reply.sent_at,
        "first": reply.first_at,
        "done": reply.done_at,
        "ttft_ms": (reply.first_at - reply.sent_at) * 1000,
        "total_s": reply.done_at - reply.sent_at,
        "tokens": usage["completion_tokens"],
        "prompt_tokens": usage["prompt_tokens"],
        "tok_s": usage["completion_tokens"] / (reply.done_at - reply.sent_at),
        "server_ttft_ms": timing["ttft_ms"],
    }


async def many(stack, cookie: str, prompts: list[str], tokens: int) -> list[dict]:
    return await asyncio.gather(*(one_reply(stack, cookie, p, tokens) for p in prompts))


# --- the stack through the OpenAI-compatible API (the official SDK) ----------------------------
async def api_reply(stack, key: str, prompt: str, tokens: int) -> dict:
    """One SDK client: a streamed greedy completion, timed like a websocket reply."""
    import openai

    from inference.loading import PACKAGED_SLUG

    client = openai.AsyncOpenAI(base_url=stack.url + "v1", api_key=key, max_retries=0, timeout=600)
    sent = time.monotonic()
    first = None
    usage = None
    stream = await client.chat.completions.create(
        model=PACKAGED_SLUG,
        messages=chat_prompt(prompt),
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.monotonic()
        if chunk.usage is not None:
            usage = chunk.usage
    done = time.monotonic()
    await client.close()
    return {
        "sent": sent,
        "first": first or done,
        "done": done,
        "ttft_ms": ((first or done) - sent) * 1000,
        "tokens": usage.completion_tokens,
        "tok_s": usage.completion_tokens / (done - sent),
    }


def stack_api(stack, cookie: str, key: str, backend: str, tokens: int, users: int, offset: int) -> dict:
    """1 SDK client three times; then `users` SDK clients and `users // 2` websocket users at once."""
    set_backend(stack, backend)
    asyncio.run(api_reply(stack, key, f"Say hello to the API on {backend}.", 8))
    single = [
        asyncio.run(api_reply(stack, key, f"{PROMPTS[(offset + i) % len(PROMPTS)]} (api)", tokens)) for i in range(3)
    ]

    async def mixed():
        sdk = [api_reply(stack, key, f"{PROMPTS[(offset + i) % len(PROMPTS)]} (api {i})", tokens) for i in range(users)]
        ws = [
            one_reply(stack, cookie, f"{PROMPTS[(offset + 7 + i) % len(PROMPTS)]} (ws {i})", tokens)
            for i in range(users // 2)
        ]
        return await asyncio.gather(*sdk, *ws)

    together = asyncio.run(mixed())
    start = min(r["sent"] for r in together)
    end = max(r["done"] for r in together)
    first_done = min(r["done"] for r in together)
    return {
        "single_tok_s": statistics.median(r["tok_s"] for r in single),
        "single_ttft_ms": statistics.median(r["ttft_ms"] for r in single),
        "mixed_tok_s": sum(r["tokens"] for r in together) / (end - start),
        "mixed_all_first_before_any_end": all(r["first"] < first_done for r in together),
    }


def set_backend(stack, backend: str) -> None:
    """Switch the default model's backend as an admin would (the worker reloads it, no restart)."""
    stack.run_manage(
        "shell",
        "-c",
        "from inference.models import LanguageModel\n"
        f"LanguageModel.objects.filter(is_default=True).update(backend={backend!r})\n",
    )


def long_conversation(stack, username: str, turns: int) -> int:
    """A conversation of `turns` user/assistant pairs for `username`; returns its id."""
    out = stack.run_manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model\n"
        "from chat.models import Conversation, Message\n"
        "from inference.models import LanguageModel\n"
        f"user = get_user_model().objects.get(username={username!r})\n"
        "c = Conversation.objects.create(user=user, title='long', model=LanguageModel.objects.get(is_default=True))\n"
        "rows = []\n"
        f"for i in range({turns}):\n"
        "    rows.append(Message(conversation=c, role='user', content=f'Question {i}: tell me about the number {i}.'))\n"
        "    rows.append(Message(conversation=c, role='assistant', content=f'The number {i} is a whole number.'))\n"
        "Message.objects.bulk_create(rows)\n"
        "print(c.pk)\n",
    )
    return int(out.strip().splitlines()[-1])


def stack_backend(stack, cookie: str, backend: str, tokens: int, users: int, offset: int) -> dict:
    """1 user three times, then `users` at once, on one backend (prompts not used before)."""
    set_backend(stack, backend)
    asyncio.run(one_reply(stack, cookie, f"Say hello to {backend}.", 8))  # warm-up (and reload)
    single = [asyncio.run(one_reply(stack, cookie, PROMPTS[(offset + i) % len(PROMPTS)], tokens)) for i in range(3)]
    prompts = [f"{PROMPTS[(offset + 3 + i) % len(PROMPTS)]} ({backend} {i})" for i in range(users)]
    concurrent = asyncio.run(many(stack, cookie, prompts, tokens))
    start = min(r["sent"] for r in concurrent)
    end = max(r["done"] for r in concurrent)
    first_done = min(r["done"] for r in concurrent)
    return {
        "single_tok_s": statistics.median(r["tok_s"] for r in single),
        "single_ttft_ms": statistics.median(r["ttft_ms"] for r in single),
        "single_server_ttft_ms": statistics.median(r["server_ttft_ms"] for r in single),
        "aggregate_tok_s": sum(r["tokens"] for r in concurrent) / (end - start),
        "users_ttft_ms": [round(r["ttft_ms"]) for r in concurrent],
        "all_first_tokens_before_any_reply_ended": all(r["first"] < first_done for r in concurrent),
    }


def stack_long(stack, cookie: str, backend: str, conversation: int) -> dict:
    """One user's reply in a very long conversation and another's short reply, started together."""
    set_backend(stack, backend)
    asyncio.run(one_reply(stack, cookie, f"Say hi to {backend}.", 4))

    async def both():
        return await asyncio.gather(
            one_reply(stack, cookie, "And what about the next number?", 16, conversation=conversation),
            one_reply(stack, cookie, f"hi ({backend})", 8),
        )

    long, short = asyncio.run(both())
    return {"long": long, "short": short}


def stack_run(tokens: int, users: int, turns: int) -> dict:
    from tests.live_client import login_cookie, rss_mb
    from tests.stack import LiveStack

    with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp:
        env = {
            "CHAT_RATE_LIMIT": "0",
            "API_RATE_LIMIT": "0",
            "CHAT_MAX_ACTIVE_PER_USER": str(2 * users + 2),
            # Room for the API run's users + users // 2 replies at once in llama.cpp's slots (the
            # 8-user runs use 8 of them; the KV pool is shared, so idle slots cost nothing).
            "INFERENCE_LLAMACPP_PARALLEL": str(users + users // 2),
            "LOG_LEVEL": "WARNING",
        }
        stack = LiveStack(Path(tmp), workers=1, extra_env=env)
        stack.start()
        try:
            cookie = login_cookie(stack, "bench")
            key = stack.run_manage("createapikey", "bench").strip().splitlines()[-1]
            worker_pid = list(stack.worker_pids.values())[0]
            conversation = long_conversation(stack, "bench", turns)
            result = {}
            for offset, backend in enumerate(("llamacpp", "transformers")):
                result[backend] = stack_backend(stack, cookie, backend, tokens, users, offset * 4)
                result[backend]["worker_rss_mb"] = rss_mb(worker_pid)
                result[backend]["long"] = stack_long(stack, cookie, backend, conversation)
                result[backend]["api"] = stack_api(stack, cookie, key, backend, tokens, users, offset * 4 + 1)
        finally:
            stack.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=96, help="max new tokens per reply")
    parser.add_argument("--users", type=int, default=8, help="concurrent users in the batch test")
    parser.add_argument("--turns", type=int, default=2000, help="turns of the long conversation")
    args = parser.parse_args()
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
    import django

    django.setup()
    from django.conf import settings

    # Bare llama.cpp at its best here (a thread per core); the stack with what it is configured to use.
    threads = settings.INFERENCE_LLAMACPP_THREADS or os.cpu_count() or 1
    parallel = min(settings.INFERENCE_MAX_BATCH, settings.INFERENCE_LLAMACPP_PARALLEL)
    bare_cpp = bare_llamacpp(args.tokens, args.users, os.cpu_count() or 1, parallel)
    bare = bare_generate(args.tokens, args.users)
    stack = stack_run(args.tokens, args.users, args.turns)
    cpp, hf = stack["llamacpp"], stack["transformers"]
    best_8 = max(bare_cpp["batch_tok_s"], hf["aggregate_tok_s"])
    ratios = {
        "cpp_single_vs_bare": cpp["single_tok_s"] / bare_cpp["single_tok_s"],
        "cpp_ttft_minus_bare_ms": cpp["single_ttft_ms"] - bare_cpp["single_ttft_ms"],
        "cpp_users_vs_best": cpp["aggregate_tok_s"] / best_8,
        "hf_single_vs_bare": hf["single_tok_s"] / bare["single_tok_s"],
        "hf_ttft_minus_prefill_ms": hf["single_ttft_ms"] - bare["prefill_ms"],
        "hf_users_vs_single": hf["aggregate_tok_s"] / hf["single_tok_s"],
        "api_cpp_single_vs_bare": cpp["api"]["single_tok_s"] / bare_cpp["single_tok_s"],
        "api_hf_single_vs_bare": hf["api"]["single_tok_s"] / bare["single_tok_s"],
    }
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "bare_llamacpp": bare_cpp,
        "bare_generate": bare,
        "stack": stack,
        "ratios": ratios,
    }
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(result, indent=2))
    checks = [
        ("llama.cpp: 1 user tokens/s ≥ 0.9 × bare llama.cpp", ratios["cpp_single_vs_bare"] >= 0.9),
        ("llama.cpp: first token ≤ bare + 50 ms", ratios["cpp_ttft_minus_bare_ms"] <= 50),
        (
            f"llama.cpp: {args.users} users ≥ 0.9 × the better of bare llama.cpp ({args.users} parallel) "
            "and the transformers stack",
            ratios["cpp_users_vs_best"] >= 0.9,
        ),
        ("transformers: 1 user tokens/s ≥ 0.9 × bare generate", ratios["hf_single_vs_bare"] >= 0.9),
        ("transformers: first token ≤ bare prefill + 100 ms", ratios["hf_ttft_minus_prefill_ms"] <= 100),
        (
            "no user waits for another's whole reply (both backends)",
            cpp["all_first_tokens_before_any_reply_ended"] and hf["all_first_tokens_before_any_reply_ended"],
        ),
        ("API, llama.cpp: 1 SDK client tokens/s ≥ 0.9 × bare llama.cpp", ratios["api_cpp_single_vs_bare"] >= 0.9),
        ("API, transformers: 1 SDK client tokens/s ≥ 0.9 × bare generate", ratios["api_hf_single_vs_bare"] >= 0.9),
        (
            f"API: {args.users} SDK clients and {args.users // 2} websocket users share batches (both backends)",
            cpp["api"]["mixed_all_first_before_any_end"] and hf["api"]["mixed_all_first_before_any_end"],
        ),
    ]

    def long_row(name: str, data: dict) -> str:
        long, short = data["long"]["long"], data["long"]["short"]
        return (
            f"| {name} | {long['prompt_tokens']} | {long['ttft_ms']:.0f} | {short['ttft_ms']:.0f} | "
            f"{short['total_s'] * 1000:.0f} |"
        )

    print(f"""
## Benchmark ({result["date"]}, {result["machine"]})

Default model SmolLM2-135M-Instruct (the packaged Q4_1 GGUF for llama.cpp; the same weights
de-quantized, {bare["dtype"]}, for transformers), greedy, up to {args.tokens} new tokens, a different
prompt per reply; llama.cpp with {parallel} parallel sequences, {bare_cpp["threads"]} threads bare and
{threads} in the stack.

| measure | bare llama.cpp | stack, llama.cpp | bare `generate` | stack, transformers |
|---|---|---|---|---|
| 1 user tokens/s | {bare_cpp["single_tok_s"]:.1f} | {cpp["single_tok_s"]:.1f} ({ratios["cpp_single_vs_bare"]:.2f}×) | {bare["single_tok_s"]:.1f} | {hf["single_tok_s"]:.1f} ({ratios["hf_single_vs_bare"]:.2f}×) |
| 1 user first token (ms) | {bare_cpp["single_ttft_ms"]:.0f} | {cpp["single_ttft_ms"]:.0f} (+{ratios["cpp_ttft_minus_bare_ms"]:.0f}) | prefill {bare["prefill_ms"]:.0f} | {hf["single_ttft_ms"]:.0f} (+{ratios["hf_ttft_minus_prefill_ms"]:.0f}) |
| {args.users} users tokens/s | {bare_cpp["batch_tok_s"]:.1f} | {cpp["aggregate_tok_s"]:.1f} ({ratios["cpp_users_vs_best"]:.2f}× best) | {bare["batch_tok_s"]:.1f} | {hf["aggregate_tok_s"]:.1f} ({ratios["hf_users_vs_single"]:.2f}× single) |
| {args.users} users first tokens (ms) | | {", ".join(map(str, cpp["users_ttft_ms"]))} | | {", ".join(map(str, hf["users_ttft_ms"]))} |
| worker RSS (MB) | | {cpp["worker_rss_mb"]:.0f} | | {hf["worker_rss_mb"]:.0f} |

Through the OpenAI-compatible API (the official `openai` SDK, streamed, the same prompts and settings):

| measure | stack, llama.cpp | stack, transformers |
|---|---|---|
| 1 SDK client tokens/s | {cpp["api"]["single_tok_s"]:.1f} ({ratios["api_cpp_single_vs_bare"]:.2f}× bare) | {hf["api"]["single_tok_s"]:.1f} ({ratios["api_hf_single_vs_bare"]:.2f}× bare) |
| 1 SDK client first token (ms) | {cpp["api"]["single_ttft_ms"]:.0f} | {hf["api"]["single_ttft_ms"]:.0f} |
| {args.users} SDK + {args.users // 2} websocket users, tokens/s | {cpp["api"]["mixed_tok_s"]:.1f} | {hf["api"]["mixed_tok_s"]:.1f} |

A reply in a {args.turns}-turn conversation (trimmed to the model's input limit) started together with
another user's 8-token "hi":

| backend | long prompt tokens | long first token (ms) | "hi" first token (ms) | "hi" whole reply (ms) |
|---|---|---|---|---|
{long_row("llama.cpp", cpp)}
{long_row("transformers", hf)}
""")
    for label, ok in checks:
        print(f"- [{'x' if ok else ' '}] {label}")


if __name__ == "__main__":
    main()
