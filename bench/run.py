"""Benchmark: the real stack (daphne + inference worker + Redis) driven by real websocket clients,
on both backends, against bare llama.cpp (xllamacpp, same GGUF file) and bare `model.generate`
(same weights), same prompts, same machine, in the same run, bare and stack rounds alternating;
then one user's very long conversation beside another user's short reply.

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
import subprocess
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


# --- prompts -----------------------------------------------------------------------------------
SYSTEM = "You are a helpful assistant."


def chat_prompt(prompt: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


# --- bare llama.cpp ----------------------------------------------------------------------------
class BareLlamaCpp:
    """The packaged GGUF in xllamacpp directly, kept loaded for the whole run: its rounds alternate
    with the stack's (this machine's speed drifts by tens of percent within minutes, so a ratio
    is only fair between rounds run back to back). Every reply gets a prompt of its own (a
    repeated prompt would be replayed from llama.cpp's cache)."""

    def __init__(self, tokens: int, threads: int, parallel: int) -> None:
        import django

        django.setup()
        import xllamacpp
        from django.conf import settings
        from transformers import AutoTokenizer

        from inference.loading import PACKAGED_GGUF, install_packaged_model, packaged_gguf_folder

        self.tokens, self.threads, self.parallel = tokens, threads, parallel
        self.tokenizer = AutoTokenizer.from_pretrained(install_packaged_model(settings.MODEL_DIR))
        params = xllamacpp.CommonParams()
        params.model.path = str(packaged_gguf_folder() / PACKAGED_GGUF)
        params.n_parallel = parallel
        params.n_ctx = 8192
        params.kv_unified = True
        # The batch sizes the stack's backend uses (inference/backends/llamacpp.py), so both run
        # the same llama.cpp configuration.
        params.n_batch = settings.INFERENCE_LLAMACPP_BATCH
        params.n_ubatch = settings.INFERENCE_LLAMACPP_BATCH
        params.warmup = True
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = -1
        self.server = xllamacpp.Server(params)
        self._reply("Say hello. (bare warm-up)")

    def _reply(self, prompt: str) -> dict:
        from inference.prompts import apply_template

        out: dict = {}
        ids = apply_template(self.tokenizer, chat_prompt(prompt))
        body = {"prompt": ids, "max_tokens": self.tokens, "stream": True, "temperature": 0}
        out["sent"] = time.perf_counter()

        def on_chunk(chunk) -> bool:
            now = time.perf_counter()
            out.setdefault("first", now)
            usage = chunk.get("usage")
            if usage:
                out["tokens"] = usage["completion_tokens"]
                out["done"] = now
            return False

        self.server.handle_completions(body, on_chunk)
        return out

    def single(self, prompt: str) -> dict:
        out = self._reply(prompt)
        return {"tok_s": out["tokens"] / (out["done"] - out["sent"]), "ttft_ms": (out["first"] - out["sent"]) * 1000}

    def each(self, prompts: list[str]) -> list[dict]:
        """All prompts at once, a thread each: every reply's sent, first and done times."""
        import threading

        outs: list[dict] = [{} for _ in prompts]

        def run(i: int) -> None:
            outs[i] = self._reply(prompts[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return outs

    def together(self, prompts: list[str]) -> float:
        outs = self.each(prompts)
        return sum(o["tokens"] for o in outs) / (max(o["done"] for o in outs) - min(o["sent"] for o in outs))


# --- bare model.generate ---------------------------------------------------------------------
class BareGenerate:
    """The same weights de-quantized, in the dtype `auto` picks, through `model.generate`, kept
    loaded so its rounds alternate with the stack's like bare llama.cpp's."""

    def __init__(self, tokens: int) -> None:
        import django

        django.setup()
        import torch
        from django.conf import settings

        from inference.loading import PACKAGED_SLUG, ModelSpec, load_model

        self.torch, self.tokens = torch, tokens
        self.model, self.tokenizer = load_model(ModelSpec(PACKAGED_SLUG, "packaged", ""), settings.MODEL_DIR)
        self.dtype = str(next(self.model.parameters()).dtype)
        with torch.inference_mode():
            one = self._encode([PROMPTS[0]])
            self.prompt_tokens = int(one["input_ids"].shape[1])
            self.model.generate(**one, max_new_tokens=8, do_sample=False)  # warm-up
            prefill = []
            for _ in range(5):
                started = time.perf_counter()
                self.model(**one)
                prefill.append(time.perf_counter() - started)
        self.prefill_ms = statistics.median(prefill) * 1000

    def _encode(self, prompts: list[str]):
        texts = [
            self.tokenizer.apply_chat_template(chat_prompt(p), add_generation_prompt=True, tokenize=False)
            for p in prompts
        ]
        return self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)

    def single(self, prompt: str) -> dict:
        encoded = self._encode([prompt])
        with self.torch.inference_mode():
            started = time.perf_counter()
            out = self.model.generate(**encoded, max_new_tokens=self.tokens, do_sample=False)
            elapsed = time.perf_counter() - started
        return {"tok_s": (out.shape[1] - encoded["input_ids"].shape[1]) / elapsed}

    def together(self, prompts: list[str]) -> float:
        encoded = self._encode(prompts)
        with self.torch.inference_mode():
            started = time.perf_counter()
            self.model.generate(**encoded, max_new_tokens=self.tokens, min_new_tokens=self.tokens, do_sample=False)
            elapsed = time.perf_counter() - started
        return len(prompts) * self.tokens / elapsed


CONVERT = (
    "import django; django.setup(); from django.conf import settings; "
    "from inference.loading import install_packaged_model; install_packaged_model(settings.MODEL_DIR)"
)


class InChild:
    """An engine (BareLlamaCpp, BareGenerate) in a process of its own, driven through a pipe: as a
    user of bare llama.cpp runs it, and away from the other engine (after torch has run in a
    process, llama.cpp in that process measured 25-32 % slower: bench/mixed_engines.py)."""

    def __init__(self, engine: type, *args) -> None:
        import multiprocessing

        # On a fresh checkout the packaged model is converted to safetensors first (torch work),
        # in a process of its own: done in the engine's process, it slowed bare llama.cpp there
        # 2.6 times for the rest of the run (bench/mixed_engines.py).
        subprocess.run([sys.executable, "-c", CONVERT], check=True, cwd=REPO)
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve_engine, args=(child, engine, args), daemon=True)
        self.process.start()
        self.info = self._answer()

    def _answer(self):
        ok, value = self.conn.recv()
        if not ok:
            raise RuntimeError(value)
        return value

    def single(self, prompt: str) -> dict:
        return self.call("single", prompt)

    def together(self, prompts: list[str]) -> float:
        return self.call("together", prompts)

    def call(self, method: str, argument):
        self.conn.send((method, argument))
        return self._answer()

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(timeout=30)


def _serve_engine(conn, engine: type, args: tuple) -> None:
    try:
        instance = engine(*args)
        conn.send((True, {k: v for k, v in vars(instance).items() if isinstance(v, (int, float, str))}))
    except Exception as exc:
        conn.send((False, repr(exc)))
        return
    while (message := conn.recv()) is not None:
        method, argument = message
        try:
            conn.send((True, getattr(instance, method)(argument)))
        except Exception as exc:
            conn.send((False, repr(exc)))


# --- the stack through websockets ------------------------------------------------------------
async def one_reply(stack, cookie: str, prompt: str, tokens: int, conversation=None, ready=None) -> dict:
    """One user: a socket, one greedy message, its timings (the client checks seq order). With
    `ready` (an asyncio.Barrier), the message goes out once every user's socket is open."""
    from tests.live_client import Client

    async with Client(stack, cookie) as client:
        if ready is not None:
            await ready.wait()
        reply = await client.chat(prompt, conversation=conversation, temperature=0, max_tokens=tokens)
        if reply.errors:
            raise RuntimeError(reply.errors)
        await client.follow(reply, timeout=600)
    usage, timing = reply.done["usage"], reply.done["timing"]
    return {
        "sent": reply.sent_at,
        "started": reply.started_at,
        "first": reply.first_at,
        "done": reply.done_at,
        "ttft_ms": (reply.first_at - reply.sent_at) * 1000,
        "total_s": reply.done_at - reply.sent_at,
        "tokens": usage["completion_tokens"],
        "prompt_tokens": usage["prompt_tokens"],
        "tok_s": usage["completion_tokens"] / (reply.done_at - reply.sent_at),
        "server_ttft_ms": timing["ttft_ms"],
        # The worker's own rate (first token to last) and the time from the last delta to `done`
        # (storing the reply, announcing it, the final rendering): where the client's rate goes.
        "server_tok_s": timing["tokens_per_s"],
        "tail_ms": (reply.done_at - (reply.last_at or reply.done_at)) * 1000,
    }


async def many(stack, cookies: list[str], prompts: list[str], tokens: int) -> list[dict]:
    """Users who have the chat open send at once (as bare llama.cpp gets its sequences at once):
    the sockets open first, so the round does not time 8 handshakes racing the first replies.
    Each prompt comes from a user of its own (cookies[i]): one user's tabs would also get each
    other's replies announced (chat.sync), which 8 people do not."""
    ready = asyncio.Barrier(len(prompts))
    return await asyncio.gather(
        *(one_reply(stack, cookies[i % len(cookies)], p, tokens, ready=ready) for i, p in enumerate(prompts))
    )


def user_cookies(stack, count: int) -> list[str]:
    """`count` users created in the stack, each logged in: their session cookies (one manage.py
    run for all of them)."""
    from tests.live_client import SESSION_CODE

    names = [f"bench-user-{i}" for i in range(count)]
    code = "from django.contrib.auth import get_user_model\n" + "".join(
        f"get_user_model().objects.create_user(username={name!r}, password='bench-password-123')\n"
        + SESSION_CODE.format(username=name)
        for name in names
    )
    out = stack.run_manage("shell", "-c", code)
    keys = [line.split()[1] for line in out.splitlines() if line.startswith("SESSION ")]
    if len(keys) != count:
        raise RuntimeError(f"expected {count} sessions, got {len(keys)}: {out[-2000:]}")
    return [f"sessionid={key}" for key in keys]


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


def bare_and_llamacpp_stack(name: str, users: int, tokens: int, env: dict | None = None):
    """For the llama.cpp-only scripts (cpu_split, admission, worker_only): bare llama.cpp in a
    process of its own and the real stack (one worker, `users` parallel slots, the llama.cpp
    backend, warmed up), as (bare, stack, cookie, cookies); both end when the `with` does."""
    import contextlib

    from tests.live_client import login_cookie
    from tests.stack import LiveStack

    @contextlib.contextmanager
    def opened():
        threads = int(os.environ.get("INFERENCE_LLAMACPP_THREADS") or os.cpu_count() or 1)
        bare = InChild(BareLlamaCpp, tokens, threads, users)
        try:
            with tempfile.TemporaryDirectory(prefix=f"chat-{name}-") as tmp:
                stack_env = {"CHAT_RATE_LIMIT": "0", "LOG_LEVEL": "WARNING", "INFERENCE_LLAMACPP_PARALLEL": str(users)}
                stack = LiveStack(Path(tmp), workers=1, extra_env={**stack_env, **(env or {})})
                stack.start()
                try:
                    cookie = login_cookie(stack, "bench")
                    cookies = user_cookies(stack, users)
                    set_backend(stack, "llamacpp")
                    asyncio.run(one_reply(stack, cookie, "Say hello.", 8))
                    yield bare, stack, cookie, cookies
                finally:
                    stack.stop()
        finally:
            bare.close()

    return opened()


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
        "for previous, message in zip(rows, rows[1:]):  # one branch: each message follows the one before\n"
        "    message.parent_id = previous.pk\n"
        "Message.objects.bulk_update(rows[1:], ['parent'], batch_size=500)\n"
        "print(c.pk)\n",
    )
    return int(out.strip().splitlines()[-1])


ROUNDS = 3  # bare and stack rounds, alternating
SETTLE_S = 1.0  # before each round: llama.cpp's threads spin a while after work ends


STOLEN: list[float] = []  # per measured round: the share of the cores' time the host gave other guests


def cpu_jiffies() -> tuple[int, int]:
    """(stolen, total) CPU time of all cores since boot, from /proc/stat; stolen is the time the
    hypervisor ran other guests while this VM wanted its cores (0 where the kernel does not say)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def settled(measure, *args):
    """Run one measured round after a pause; note how much of it the host stole (STOLEN)."""
    time.sleep(SETTLE_S)
    stolen, total = cpu_jiffies()
    result = measure(*args)
    stolen_after, total_after = cpu_jiffies()
    if total_after > total:
        STOLEN.append((stolen_after - stolen) / (total_after - total))
    return result


def stack_backend(
    stack, cookie: str, cookies: list[str], backend: str, bare, tokens: int, users: int, offset: int
) -> dict:
    """On one backend, alternating with its bare engine: 1 reply ROUNDS times each, then `users`
    at once ROUNDS times each (prompts not used before). Ratios are the median of each round's
    stack / bare."""
    set_backend(stack, backend)
    asyncio.run(one_reply(stack, cookie, f"Say hello to {backend}.", 8))  # warm-up (and reload)
    single, bare_single, concurrent, bare_together, aggregates = [], [], [], [], []
    for i in range(ROUNDS):
        prompt = PROMPTS[(offset + i) % len(PROMPTS)]
        bare_single.append(settled(bare.single, f"{prompt} (bare {backend})"))
        single.append(settled(asyncio.run, one_reply(stack, cookie, prompt, tokens)))
    overlapped = []  # per round: every reply had its first token before any reply ended
    for round_no in range(ROUNDS):
        prompts = [f"{PROMPTS[(offset + 3 + i) % len(PROMPTS)]} ({backend} {round_no} {i})" for i in range(users)]
        bare_together.append(settled(bare.together, [f"{p} (bare)" for p in prompts]))
        concurrent = settled(asyncio.run, many(stack, cookies, prompts, tokens))
        start = min(r["sent"] for r in concurrent)
        end = max(r["done"] for r in concurrent)
        aggregates.append(sum(r["tokens"] for r in concurrent) / (end - start))
        first_done = min(r["done"] for r in concurrent)
        overlapped.append(all(r["first"] < first_done for r in concurrent))
    return {
        "single_tok_s": statistics.median(r["tok_s"] for r in single),
        "single_vs_bare": statistics.median(s["tok_s"] / b["tok_s"] for s, b in zip(single, bare_single, strict=True)),
        "single_ttft_ms": statistics.median(r["ttft_ms"] for r in single),
        "single_server_ttft_ms": statistics.median(r["server_ttft_ms"] for r in single),
        "single_server_tok_s": statistics.median(r["server_tok_s"] for r in single),
        "single_tail_ms": statistics.median(r["tail_ms"] for r in single),
        "aggregate_tok_s": statistics.median(aggregates),
        "aggregate_rounds": [round(a, 1) for a in aggregates],
        "aggregate_vs_bare": statistics.median(a / b for a, b in zip(aggregates, bare_together, strict=True)),
        "users_ttft_ms": [round(r["ttft_ms"]) for r in concurrent],  # the last round's
        "all_first_tokens_before_any_reply_ended": all(overlapped),
        "bare": {
            "single_tok_s": statistics.median(b["tok_s"] for b in bare_single),
            # llama.cpp streams its first token; `generate` gives the whole reply at once.
            "single_ttft_ms": statistics.median(b["ttft_ms"] for b in bare_single)
            if "ttft_ms" in bare_single[0]
            else None,
            "batch_tok_s": statistics.median(bare_together),
            "batch_rounds": [round(b, 1) for b in bare_together],
        },
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


def stack_run(tokens: int, users: int, turns: int, bares: dict) -> dict:
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
            cookies = user_cookies(stack, users)
            key = stack.run_manage("createapikey", "bench").strip().splitlines()[-1]
            worker_pid = list(stack.worker_pids.values())[0]
            conversation = long_conversation(stack, "bench", turns)
            result = {}
            for offset, backend in enumerate(("llamacpp", "transformers")):
                result[backend] = stack_backend(
                    stack, cookie, cookies, backend, bares[backend], tokens, users, offset * 4
                )
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

    # Bare llama.cpp and the stack with the threads the stack is configured with (by default a
    # thread per core; on a machine with cores to spare, INFERENCE_LLAMACPP_THREADS leaves some
    # to the web tier, and bare llama.cpp gets the same number).
    threads = settings.INFERENCE_LLAMACPP_THREADS or os.cpu_count() or 1
    parallel = min(settings.INFERENCE_MAX_BATCH, settings.INFERENCE_LLAMACPP_PARALLEL)
    bare_cpp_engine = InChild(BareLlamaCpp, args.tokens, threads, parallel)
    bare_engine = InChild(BareGenerate, args.tokens)
    try:
        stack = stack_run(
            args.tokens, args.users, args.turns, {"llamacpp": bare_cpp_engine, "transformers": bare_engine}
        )
    finally:
        bare_cpp_engine.close()
        bare_engine.close()
    cpp, hf = stack["llamacpp"], stack["transformers"]
    bare_cpp = {**cpp["bare"], "threads": threads, "parallel": parallel}
    bare = {**hf["bare"], "dtype": bare_engine.info["dtype"], "prefill_ms": bare_engine.info["prefill_ms"]}
    ratios = {
        "cpp_single_vs_bare": cpp["single_vs_bare"],
        "cpp_ttft_minus_bare_ms": cpp["single_ttft_ms"] - bare_cpp["single_ttft_ms"],
        # The better of bare llama.cpp (this round's) and the transformers stack (its median).
        "cpp_users_vs_best": min(cpp["aggregate_vs_bare"], cpp["aggregate_tok_s"] / hf["aggregate_tok_s"]),
        "hf_single_vs_bare": hf["single_vs_bare"],
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
        # Per measured round, the share of the cores' time the host gave other guests.
        "stolen": {"median": statistics.median(STOLEN or [0.0]), "max": max(STOLEN or [0.0]), "rounds": len(STOLEN)},
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
{threads} in the stack. Bare and stack rounds alternate ({ROUNDS} each); a ratio is the median of each
round's stack / bare. {args.users}-user rounds, tokens/s: llama.cpp bare {bare_cpp["batch_rounds"]}, stack
{cpp["aggregate_rounds"]}; `generate` bare {bare["batch_rounds"]}, stack {hf["aggregate_rounds"]}.
Host CPU stolen by other guests (/proc/stat) in the {result["stolen"]["rounds"]} measured rounds: median
{result["stolen"]["median"]:.1%}, at most {result["stolen"]["max"]:.1%} of a round's core time (beyond a few
percent, the ratios say more about the host than about the stack).

| measure | bare llama.cpp | stack, llama.cpp | bare `generate` | stack, transformers |
|---|---|---|---|---|
| 1 user tokens/s | {bare_cpp["single_tok_s"]:.1f} | {cpp["single_tok_s"]:.1f} ({ratios["cpp_single_vs_bare"]:.2f}×) | {bare["single_tok_s"]:.1f} | {hf["single_tok_s"]:.1f} ({ratios["hf_single_vs_bare"]:.2f}×) |
| 1 user: the worker's own tokens/s, last delta → done (ms) | | {cpp["single_server_tok_s"]:.1f}, {cpp["single_tail_ms"]:.0f} | | {hf["single_server_tok_s"]:.1f}, {hf["single_tail_ms"]:.0f} |
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
