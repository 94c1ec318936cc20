"""Benchmark: the product as a user gets it, against bare engines, in the same run.

The real stack (daphne, one inference worker, Redis: tests/stack.py) with `make run`'s settings
(model titles on, 8 llama.cpp slots, 3 replies at once per account, the shipped sampling settings;
greedy, as the targets are stated), driven by real websocket clients, each user on an account of
their own; beside it bare llama.cpp (xllamacpp in a process of its own: the same GGUF, threads and
slots) and bare `model.generate` (the same weights). Every stack round sits between two bare
rounds (bare, stack, bare, ..., stack, bare) and a ratio is the median over rounds of stack / the
mean of the bare rounds either side: this machine's speed drifts by tens of percent within
minutes. After each stack round the bench waits until the stack is idle (the titles it queued are
written: `wait_idle`), so the next round is not charged for them; those waits are reported.

On llama.cpp: 1 user in a new conversation, then a second turn in it; 8 users on 8 accounts, each
in a new conversation, then a second turn each; one API client (the official openai SDK); the
next turn of a 60-turn conversation against a fresh conversation's; a ~2,000-token prompt against
bare llama.cpp with llama.cpp's default batch sizes. On transformers: 1 user, 8 users and one API
client against bare `generate`. On both: a reply in a 2,000-turn conversation beside another
user's "hi". Prints the detailed tables, then one headline table (docs/performance.md); writes
bench/results/latest.json.

    make bench        # about 15 minutes on 2 cores; make bench ARGS="--skip-transformers"
    .venv/bin/python bench/run.py --rounds 1 --tokens 12 --users 2 --long-tokens 300 \\
        --prefix-turns 8 --turns 100 --skip-transformers      # a quick check of the script itself

The stack runs a Redis of its own (tests/stack.py) unless STACK_REDIS_URL names one.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
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
# A second turn's message, after the reply to one of PROMPTS.
FOLLOW_UPS = [
    "Go on, with more detail.",
    "Now say it again for a ten-year-old.",
    "What is the most surprising part of that?",
    "Give me three more examples.",
    "Which part would you change, and why?",
    "Summarise that, then add one new idea.",
    "What would a sceptic say about that?",
    "Continue from where you stopped.",
]

ROUNDS = 3  # stack rounds per measure, each between two bare rounds
LONG_ROUNDS = 2  # the same for the ~2,000-token prompt (each round reads the whole prompt)
SETTLE_S = 1.0  # before each round: llama.cpp's threads spin a while after work ends
FIRST_TOKEN_TOKENS = 16  # the replies of measures that time only the first token
# Targets (the issue's): stack / bare tokens/s at least, first token at most bare + ms, a long
# prompt's first token at most × bare's with llama.cpp's default batch, a 60-turn conversation's
# next turn at most × a fresh conversation's first token.
TOKENS_TARGET = 0.95
FIRST_TOKEN_EXTRA_MS = 50
LONG_PROMPT_TARGET = 1.3
NEXT_TURN_TARGET = 1.5


# --- prompts -----------------------------------------------------------------------------------
SYSTEM = "You are a helpful assistant."  # the packaged model's system prompt (inference/defaults.py)


def chat_prompt(prompt: str, history: Sequence[tuple[str, str]] = ()) -> list[dict]:
    """The messages the stack sends for `prompt` after the exchanges in `history`."""
    messages = [{"role": "system", "content": SYSTEM}]
    for question, answer in history:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return [*messages, {"role": "user", "content": prompt}]


def ask(tag: str, n: int) -> str:
    """The n-th prompt of a measure: its tag and number first, so no two prompts share more than
    the template's prefix (llama.cpp would read a shared one from its cache)."""
    return f"({tag} {n}) {PROMPTS[n % len(PROMPTS)]}"


def follow_up(n: int) -> str:
    return FOLLOW_UPS[n % len(FOLLOW_UPS)]


@functools.cache
def tokenizer():
    """The packaged model's tokenizer, to size the long prompts."""
    from django.conf import settings
    from transformers import AutoTokenizer

    from inference.loading import install_packaged_model

    return AutoTokenizer.from_pretrained(install_packaged_model(settings.MODEL_DIR))


def prompt_tokens(messages: list[dict]) -> int:
    from inference.prompts import apply_template

    return len(apply_template(tokenizer(), messages))


LEDGER_WHO = [
    "the old lighthouse keeper", "a young botanist", "the baker's twin daughters", "a retired sea captain",
    "the village schoolteacher", "two travelling musicians", "a clockmaker from the north", "the mayor's grey cat",
    "an apprentice glassblower", "the night-shift nurse", "a beekeeper with a red scarf", "three curious ravens",
]  # fmt: skip
LEDGER_DID = ["repaired", "painted", "carried", "counted", "buried", "found", "sold", "borrowed", "weighed", "lost"]
LEDGER_WHAT = ["gulls", "barrels of salt", "lanterns", "sacks of flour", "copper nails", "oak planks", "tins of tea"]
LEDGER_WHERE = [
    "behind the chapel", "at the edge of the marsh", "under the railway bridge", "in the crowded market",
    "beside the frozen canal", "on the roof of the mill", "near the fishing harbour", "inside the empty theatre",
]  # fmt: skip


def ledger(seed: int, tokens: int) -> str:
    """A message that makes a prompt of at most `tokens` tokens (with the system prompt and the
    chat template): a ledger of varied entries (people, goods, places, sums, receipt numbers), so
    that it is not one sentence repeated. Dense in numbers on purpose: the chat socket estimates a
    message at 3.2 characters a token (chat/limits.py) and refuses one over the model's input
    limit, and plain prose, 4.7 characters a token with this tokenizer, is refused from about
    1,400 real tokens on; this ledger is about 2.5."""
    rng = random.Random(seed)
    text = f"Ledger {seed}. Read it and tell me which entry is the strangest, and why."
    while True:
        entry = (
            f"Day {rng.randint(1, 365)}, {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}: {rng.choice(LEDGER_WHO)} "
            f"{rng.choice(LEDGER_DID)} {rng.randint(2, 999)} {rng.choice(LEDGER_WHAT)} {rng.choice(LEDGER_WHERE)} "
            f"for {rng.randint(1, 99)}.{rng.randint(0, 99):02d} crowns (receipt {rng.randint(1000, 99999)})."
        )
        if prompt_tokens(chat_prompt(f"{text} {entry}")) > tokens:
            return text
        text = f"{text} {entry}"


def number_question(i: int) -> str:
    """A user turn of a long conversation (`long_conversation`), and its next turns."""
    return f"Tell me about the number {i}."


# --- bare llama.cpp ----------------------------------------------------------------------------
class BareLlamaCpp:
    """The packaged GGUF in xllamacpp directly, kept loaded for the whole run: its rounds alternate
    with the stack's. Every reply gets a prompt of its own (a repeated prompt would be replayed
    from llama.cpp's cache). With `default_batch`, llama.cpp's own batch sizes (n_batch 2048,
    n_ubatch 512) instead of the stack's."""

    def __init__(self, tokens: int, threads: int, parallel: int, default_batch: bool = False) -> None:
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
        if not default_batch:
            # The batch sizes the stack's backend uses (inference/backends/llamacpp.py), so both
            # run the same llama.cpp configuration.
            params.n_batch = settings.INFERENCE_LLAMACPP_BATCH
            params.n_ubatch = settings.INFERENCE_LLAMACPP_BATCH
        self.n_batch, self.n_ubatch = params.n_batch, params.n_ubatch
        params.warmup = True
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = -1
        self.server = xllamacpp.Server(params)
        self._reply("Say hello. (bare warm-up)")

    def _reply(self, prompt: str | list[dict]) -> dict:
        """One greedy reply to a prompt (or to a list of messages): its sent, first (token) and
        done times, tokens, prompt tokens (and how many of them llama.cpp had cached), text."""
        from inference.prompts import apply_template

        messages = chat_prompt(prompt) if isinstance(prompt, str) else prompt
        out: dict = {}
        pieces: list[str] = []
        ids = apply_template(self.tokenizer, messages)
        body = {"prompt": ids, "max_tokens": self.tokens, "stream": True, "temperature": 0}
        out["sent"] = time.perf_counter()

        def on_chunk(chunk) -> bool:
            now = time.perf_counter()
            text = (chunk.get("choices") or [{}])[0].get("text") or ""
            if text:
                out.setdefault("first", now)
                pieces.append(text)
            usage = chunk.get("usage")
            if usage:
                out.setdefault("first", now)
                out["tokens"] = usage["completion_tokens"]
                out["prompt_tokens"] = usage["prompt_tokens"]
                out["cached_tokens"] = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                out["done"] = now
            return False

        self.server.handle_completions(body, on_chunk)
        out["text"] = "".join(pieces)
        return out

    def single(self, prompt: str | list[dict]) -> dict:
        out = self._reply(prompt)
        return {
            **out,
            "tok_s": out["tokens"] / (out["done"] - out["sent"]),
            "ttft_ms": (out["first"] - out["sent"]) * 1000,
        }

    def each(self, prompts: list) -> list[dict]:
        """All prompts (or message lists) at once, a thread each: every reply's `_reply`."""
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

    def single(self, prompt: str | list[dict]) -> dict:
        return self.call("single", prompt)

    def each(self, prompts: list) -> list[dict]:
        return self.call("each", prompts)

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
    """One user: a socket, one greedy message (in `conversation`, else a new one), its timings
    (the client checks seq order). With `ready` (an asyncio.Barrier), the message goes out once
    every user's socket is open."""
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
        "conversation": reply.started["conversation"],
        "text": reply.text,
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


async def many(stack, cookies: list[str], prompts: list[str], tokens: int, conversations=None) -> list[dict]:
    """Users who have the chat open send at once (as bare llama.cpp gets its sequences at once):
    the sockets open first, so the round does not time 8 handshakes racing the first replies.
    Each prompt comes from a user of its own (cookies[i]): one user's tabs would also get each
    other's replies announced (chat.sync), which 8 people do not. With `conversations`, prompt i
    goes into conversations[i]."""
    ready = asyncio.Barrier(len(prompts))
    conversations = conversations or [None] * len(prompts)
    return await asyncio.gather(
        *(
            one_reply(stack, cookies[i % len(cookies)], p, tokens, conversation=conversations[i], ready=ready)
            for i, p in enumerate(prompts)
        )
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
        "prompt_tokens": usage.prompt_tokens,
        "tok_s": usage.completion_tokens / (done - sent),
    }


def bare_and_llamacpp_stack(name: str, users: int, tokens: int, env: dict | None = None):
    """For the llama.cpp-only scripts (cpu_split, admission, worker_only): bare llama.cpp in a
    process of its own and the real stack (one worker, `users` parallel slots, the llama.cpp
    backend, warmed up; model titles off, as tests/stack.py sets, so that each round times only
    its own replies), as (bare, stack, cookie, cookies); both end when the `with` does."""
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
    """A conversation of `turns` user/assistant pairs for `username` (the user turns as
    `number_question` writes them; 60 turns make a prompt of about 1,800 tokens); returns its id."""
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
        "    rows.append(Message(conversation=c, role='user', content=f'Tell me about the number {i}.'))\n"
        "    rows.append(Message(conversation=c, role='assistant', content=f'The number {i} is a whole number.'))\n"
        "Message.objects.bulk_create(rows)\n"
        "for previous, message in zip(rows, rows[1:]):  # one branch: each message follows the one before\n"
        "    message.parent_id = previous.pk\n"
        "Message.objects.bulk_update(rows[1:], ['parent'], batch_size=500)\n"
        "print(c.pk)\n",
    )
    return int(out.strip().splitlines()[-1])


# --- rounds ------------------------------------------------------------------------------------
STOLEN: list[float] = []  # per measured round: the share of the cores' time the host gave other guests
IDLE_FOR_S = 1.5  # longer than a worker's heartbeat period (INFERENCE_HEARTBEAT_TTL_S / 4: 1.25 s)


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


def wait_idle(stack, timeout: float = 60) -> float:
    """Wait until the stack has nothing to do: both request queues (interactive and background:
    titles) empty and every worker's heartbeat, one written since, saying no reply runs, for
    IDLE_FOR_S in a row. Returns the seconds until it was idle: how long the work the last round
    left behind (its titles) took, to within a heartbeat period."""
    from inference.streams import QUEUE_KEYS, worker_key

    started = time.monotonic()
    idle_since: tuple[float, float] | None = None  # (monotonic, wall clock) since all looked idle
    with stack.redis() as conn:
        while True:
            pipe = conn.pipeline(transaction=False)
            for key in QUEUE_KEYS:
                pipe.llen(key)
            for worker in stack.worker_ids:
                pipe.get(worker_key(worker))
            values = pipe.execute()
            queued = sum(values[: len(QUEUE_KEYS)])
            beats = [json.loads(v) if v else {} for v in values[len(QUEUE_KEYS) :]]
            now = time.monotonic()
            if queued or any(beat.get("active", 1) for beat in beats):  # no heartbeat: not idle
                idle_since = None
            elif idle_since is None:
                idle_since = (now, time.time())
            elif now - idle_since[0] >= IDLE_FOR_S and all(beat["time"] > idle_since[1] for beat in beats):
                return idle_since[0] - started
            if now - started > timeout:
                raise RuntimeError(f"the stack was still busy after {timeout} s: {queued} queued, workers {beats}")
            time.sleep(0.1)


def alternate(stack, rounds: int, bare_round: Callable[[int], dict], stack_round: Callable[[int], dict]) -> dict:
    """bare, stack, bare, ..., stack, bare: `rounds` stack rounds, each between two bare rounds
    (`bare_round(i)`, `stack_round(i)`). After each stack round, the next waits until the stack is
    idle (the waits are in "idle_s")."""
    bares, stacks, idle = [settled(bare_round, 0)], [], []
    for i in range(rounds):
        stacks.append(settled(stack_round, i))
        idle.append(wait_idle(stack))
        bares.append(settled(bare_round, i + 1))
    return {"bare": bares, "stack": stacks, "idle_s": idle}


def compare(bares: list[float], stacks: list[float]) -> dict:
    """One measure over alternating rounds: each stack round against the mean of the bare rounds
    either side (its ratio and difference); the medians."""
    either_side = [(before + after) / 2 for before, after in zip(bares[:-1], bares[1:], strict=True)]
    return {
        "bare": statistics.median(bares),
        "stack": statistics.median(stacks),
        "ratio": statistics.median(s / b for s, b in zip(stacks, either_side, strict=True)),
        "difference": statistics.median(s - b for s, b in zip(stacks, either_side, strict=True)),
        "bare_rounds": [round(v, 1) for v in bares],
        "stack_rounds": [round(v, 1) for v in stacks],
    }


def round_figures(replies: list[dict]) -> dict:
    """A round of replies sent at once: their tokens over the round's time (first send to last
    done), the first tokens (median and each), and whether every reply had its first token before
    any reply ended."""
    first_done = min(r["done"] for r in replies)
    ttfts = [(r["first"] - r["sent"]) * 1000 for r in replies]
    figures = {
        "tok_s": sum(r["tokens"] for r in replies)
        / (max(r["done"] for r in replies) - min(r["sent"] for r in replies)),
        "ttft_ms": statistics.median(ttfts),
        "ttfts_ms": [round(t) for t in ttfts],
        "tokens": statistics.median(r["tokens"] for r in replies),
        "prompt_tokens": statistics.median(r["prompt_tokens"] for r in replies),
        "overlapped": all(r["first"] < first_done for r in replies),
    }
    for key in ("cached_tokens", "server_tok_s", "tail_ms"):  # bare llama.cpp's; the stack's
        if key in replies[0]:
            figures[key] = statistics.median(r[key] for r in replies)
    return figures


def conversation_rounds(stack, bare, cookies: list[str], tokens: int, rounds: int, tag: str) -> dict:
    """`len(cookies)` users at once, each on an account of their own, in a new conversation each;
    then, once the stack is idle again (their titles written: a person reads a reply before
    answering), a second turn each in that conversation. Bare llama.cpp's round: as many prompts
    at once, then each one's first exchange and a follow-up at once (its slots' prompt cache
    holds the first exchange, as the stack's may)."""
    users = len(cookies)

    def bare_round(i: int) -> dict:
        prompts = [ask(f"{tag} bare", i * users + j) for j in range(users)]
        first = bare.each(prompts)
        time.sleep(SETTLE_S)
        histories = [[(p, reply["text"])] for p, reply in zip(prompts, first, strict=True)]
        second = bare.each([chat_prompt(follow_up(i * users + j), histories[j]) for j in range(users)])
        return {"new": round_figures(first), "second": round_figures(second)}

    def stack_round(i: int) -> dict:
        first = asyncio.run(many(stack, cookies, [ask(tag, i * users + j) for j in range(users)], tokens))
        titles_s = wait_idle(stack)
        conversations = [reply["conversation"] for reply in first]
        follow_ups = [follow_up(i * users + j) for j in range(users)]
        second = asyncio.run(many(stack, cookies, follow_ups, tokens, conversations))
        return {"new": round_figures(first), "second": round_figures(second), "titles_s": titles_s}

    runs = alternate(stack, rounds, bare_round, stack_round)

    def measure(part: str, key: str) -> dict:
        return compare([b[part][key] for b in runs["bare"]], [s[part][key] for s in runs["stack"]])

    def median(side: str, part: str, key: str) -> float:
        return statistics.median(r[part][key] for r in runs[side])

    return {
        "users": users,
        "new_tok_s": measure("new", "tok_s"),
        "new_ttft_ms": measure("new", "ttft_ms"),
        "second_tok_s": measure("second", "tok_s"),
        "second_ttft_ms": measure("second", "ttft_ms"),
        "prompt_tokens": {
            part: {"bare": median("bare", part, "prompt_tokens"), "stack": median("stack", part, "prompt_tokens")}
            for part in ("new", "second")
        },
        "reply_tokens": {part: median("stack", part, "tokens") for part in ("new", "second")},
        "bare_second_cached_tokens": median("bare", "second", "cached_tokens"),
        "server_tok_s": median("stack", "new", "server_tok_s"),
        "tail_ms": median("stack", "new", "tail_ms"),
        "first_tokens_ms": {part: runs["stack"][-1][part]["ttfts_ms"] for part in ("new", "second")},
        "overlapped": all(s[part]["overlapped"] for s in runs["stack"] for part in ("new", "second")),
        "titles_s": [s["titles_s"] for s in runs["stack"]],
        "idle_s": runs["idle_s"],
    }


def api_rounds(stack, key: str, bare, tokens: int, rounds: int, tag: str) -> dict:
    """One SDK client, a new prompt each round, against one bare reply."""
    asyncio.run(api_reply(stack, key, f"Say hello to the API ({tag}).", 8))  # the SDK's first connection
    runs = alternate(
        stack,
        rounds,
        lambda i: bare.single(ask(f"{tag} bare", i)),
        lambda i: asyncio.run(api_reply(stack, key, ask(tag, i), tokens)),
    )
    out = {
        "tok_s": compare([b["tok_s"] for b in runs["bare"]], [s["tok_s"] for s in runs["stack"]]),
        "ttft_ms": statistics.median(s["ttft_ms"] for s in runs["stack"]),
        "idle_s": runs["idle_s"],
    }
    if "ttft_ms" in runs["bare"][0]:  # llama.cpp streams its first token; `generate` does not
        out["ttft"] = compare([b["ttft_ms"] for b in runs["bare"]], [s["ttft_ms"] for s in runs["stack"]])
    return out


def bare_next_turns(bare_cpp, turns: int, rounds: int) -> dict:
    """The same measure on bare llama.cpp, its floor: the `turns`-turn conversation's first reply
    (cold), then its next turns (each with the replies before it), each after a fresh
    conversation's first reply; first tokens."""
    history = [(number_question(i), f"The number {i} is a whole number.") for i in range(turns)]
    cold = bare_cpp.single(chat_prompt(number_question(turns), history))
    history.append((number_question(turns), cold["text"]))
    fresh, following = [], []
    for i in range(rounds):
        fresh.append(bare_cpp.single(ask("bare fresh", i))["ttft_ms"])
        question = number_question(turns + 1 + i)
        reply = bare_cpp.single(chat_prompt(question, history))
        following.append(reply["ttft_ms"])
        history.append((question, reply["text"]))
    fresh.append(bare_cpp.single(ask("bare fresh", rounds))["ttft_ms"])
    return {"cold_ttft_ms": cold["ttft_ms"], "fresh_ttft_ms": fresh, "next_ttft_ms": following,
            "ratio": statistics.median(following) / statistics.median(fresh)}  # fmt: skip


def next_turn_rounds(stack, cookie: str, turns: int, rounds: int) -> dict:
    """Prefix reuse: a `turns`-turn conversation's first reply here (cold: llama.cpp reads the
    whole prompt), then its next turns, each between two fresh conversations' first replies
    (fresh, next turn, fresh, ...; the stack idle before each). Short replies, so the
    conversation stays under the model's input limit (a trimmed prompt starts elsewhere: nothing
    to reuse)."""
    conversation = long_conversation(stack, "bench", turns)
    cold = settled(
        asyncio.run, one_reply(stack, cookie, number_question(turns), FIRST_TOKEN_TOKENS, conversation=conversation)
    )
    cold_idle_s = wait_idle(stack)

    def fresh(i: int) -> dict:
        reply = asyncio.run(one_reply(stack, cookie, ask("cpp fresh", i), FIRST_TOKEN_TOKENS))
        reply["idle_s"] = wait_idle(stack)  # its title
        return reply

    def next_turn(i: int) -> dict:
        question = number_question(turns + 1 + i)
        return asyncio.run(one_reply(stack, cookie, question, FIRST_TOKEN_TOKENS, conversation=conversation))

    runs = alternate(stack, rounds, fresh, next_turn)
    return {
        "turns": turns,
        "cold_ttft_ms": cold["ttft_ms"],
        "cold_prompt_tokens": cold["prompt_tokens"],
        "ttft_ms": compare([f["ttft_ms"] for f in runs["bare"]], [n["ttft_ms"] for n in runs["stack"]]),
        "prompt_tokens": [n["prompt_tokens"] for n in runs["stack"]],
        "fresh_prompt_tokens": statistics.median(f["prompt_tokens"] for f in runs["bare"]),
        "titles_s": [f["idle_s"] for f in runs["bare"]],
        "idle_s": [cold_idle_s, *runs["idle_s"]],
    }


def long_prompt_rounds(stack, cookie: str, threads: int, parallel: int, tokens: int, rounds: int) -> dict:
    """A prompt of about `tokens` tokens (one message in a new conversation) through the stack,
    against the same prompt in bare llama.cpp with llama.cpp's default batch sizes (an instance
    opened for this only, with the stack's slots and threads): first tokens. Each round has a
    prompt of its own; bare round i reads stack round i's."""
    texts = [ledger(i, tokens) for i in range(rounds + 1)]
    bare = InChild(BareLlamaCpp, FIRST_TOKEN_TOKENS, threads, parallel, True)
    try:
        runs = alternate(
            stack,
            rounds,
            lambda i: bare.single(texts[i]),
            lambda i: asyncio.run(one_reply(stack, cookie, texts[i], FIRST_TOKEN_TOKENS)),
        )
    finally:
        bare.close()
    return {
        "ttft_ms": compare([b["ttft_ms"] for b in runs["bare"]], [s["ttft_ms"] for s in runs["stack"]]),
        "prompt_tokens": statistics.median(s["prompt_tokens"] for s in runs["stack"]),
        "bare_prompt_tokens": statistics.median(b["prompt_tokens"] for b in runs["bare"]),
        "server_ttft_ms": [round(s["server_ttft_ms"]) for s in runs["stack"]],
        "bare_batch": f"{bare.info['n_batch']}/{bare.info['n_ubatch']}",
        "parallel": parallel,
        "idle_s": runs["idle_s"],
    }


def beside_long(stack, cookie: str, other: str, backend: str, conversation: int) -> dict:
    """One user's reply in a very long conversation (theirs) and another user's short reply in a
    new one, started together."""

    async def both():
        return await asyncio.gather(
            one_reply(stack, cookie, "And what about the next number?", 16, conversation=conversation),
            one_reply(stack, other, f"hi ({backend})", 8),
        )

    long, short = settled(asyncio.run, both())
    return {"long": long, "short": short, "idle_s": wait_idle(stack)}


def generate_rounds(stack, bare, cookie: str, cookies: list[str], tokens: int, rounds: int) -> dict:
    """The transformers backend against bare `generate`: 1 user, then `len(cookies)` users at once,
    each in a new conversation."""
    users = len(cookies)
    one = alternate(
        stack,
        rounds,
        lambda i: bare.single(ask("hf 1u bare", i)),
        lambda i: round_figures([asyncio.run(one_reply(stack, cookie, ask("hf 1u", i), tokens))]),
    )
    together = alternate(
        stack,
        rounds,
        lambda i: {"tok_s": bare.together([ask("hf bare", i * users + j) for j in range(users)])},
        lambda i: round_figures(
            asyncio.run(many(stack, cookies, [ask("hf", i * users + j) for j in range(users)], tokens))
        ),
    )
    return {
        "one_tok_s": compare([b["tok_s"] for b in one["bare"]], [s["tok_s"] for s in one["stack"]]),
        "one_ttft_ms": statistics.median(s["ttft_ms"] for s in one["stack"]),
        "server_tok_s": statistics.median(s["server_tok_s"] for s in one["stack"]),
        "tail_ms": statistics.median(s["tail_ms"] for s in one["stack"]),
        "users_tok_s": compare([b["tok_s"] for b in together["bare"]], [s["tok_s"] for s in together["stack"]]),
        "users_vs_one": statistics.median(s["tok_s"] for s in together["stack"])
        / statistics.median(s["tok_s"] for s in one["stack"]),
        "first_tokens_ms": together["stack"][-1]["ttfts_ms"],
        "overlapped": all(s["overlapped"] for s in together["stack"]),
        "idle_s": {"1 user": one["idle_s"], "users": together["idle_s"]},
    }


def shipped_env() -> dict[str, str]:
    """The stack's settings: `make run`'s (as this process reads them, so that INFERENCE_LLAMACPP_*
    set for a run reach the stack and bare llama.cpp alike), undoing what tests/stack.py sets for
    tests (model titles off, 1,000 replies at once per account)."""
    from django.conf import settings

    return {
        "CHAT_MODEL_TITLES": "1" if settings.CHAT_MODEL_TITLES else "0",
        "CHAT_MAX_ACTIVE_PER_USER": str(settings.CHAT_MAX_ACTIVE_PER_USER),
        # The one change from `make run`: the bench's user sends more messages a minute than
        # CHAT_RATE_LIMIT lets one account send (20), and its rounds would be refused.
        "CHAT_RATE_LIMIT": "0",
    }


def stack_run(args, bare_cpp, bare_hf, threads: int, parallel: int) -> dict:
    from tests.live_client import login_cookie, rss_mb
    from tests.stack import LiveStack

    with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp:
        stack = LiveStack(Path(tmp), workers=1, extra_env=shipped_env())
        stack.start()
        try:
            cookie = login_cookie(stack, "bench")
            cookies = user_cookies(stack, args.users)
            key = stack.run_manage("createapikey", "bench").strip().splitlines()[-1]
            worker_pid = list(stack.worker_pids.values())[0]
            very_long = long_conversation(stack, "bench", args.turns)

            set_backend(stack, "llamacpp")
            asyncio.run(one_reply(stack, cookie, "Say hello to llamacpp.", 8))  # warm-up (and reload)
            wait_idle(stack)
            cpp = {
                "one_user": conversation_rounds(stack, bare_cpp, [cookie], args.tokens, args.rounds, "cpp 1u"),
                "users": conversation_rounds(stack, bare_cpp, cookies, args.tokens, args.rounds, "cpp"),
                "api": api_rounds(stack, key, bare_cpp, args.tokens, args.rounds, "cpp api"),
                "next_turn": next_turn_rounds(stack, cookie, args.prefix_turns, args.rounds),
                "bare_next_turn": bare_next_turns(bare_cpp, args.prefix_turns, args.rounds),
                "long_prompt": long_prompt_rounds(stack, cookie, threads, parallel, args.long_tokens, args.long_rounds),
                "worker_rss_mb": rss_mb(worker_pid),
                "beside_long": beside_long(stack, cookie, cookies[0], "llamacpp", very_long),
            }
            result = {"llamacpp": cpp}
            if bare_hf is not None:
                set_backend(stack, "transformers")
                asyncio.run(one_reply(stack, cookie, "Say hello to transformers.", 8))
                wait_idle(stack)
                hf = generate_rounds(stack, bare_hf, cookie, cookies, args.tokens, args.rounds)
                hf["api"] = api_rounds(stack, key, bare_hf, args.tokens, args.rounds, "hf api")
                hf["worker_rss_mb"] = rss_mb(worker_pid)
                hf["beside_long"] = beside_long(stack, cookie, cookies[0], "transformers", very_long)
                result["transformers"] = hf
        finally:
            stack.stop()
    return result


# --- the report --------------------------------------------------------------------------------
def nums(values, digits: int = 0) -> str:
    return ", ".join(f"{v:,.{digits}f}" for v in values)


def tokens_row(measure: str, figures: dict) -> dict:
    return {
        "measure": measure,
        "bare": f"{figures['bare']:.1f}",
        "stack": f"{figures['stack']:.1f}",
        "ratio": f"{figures['ratio']:.2f}×",
        "target": f"≥ {TOKENS_TARGET}×",
        "met": figures["ratio"] >= TOKENS_TARGET,
    }


def first_token_row(measure: str, figures: dict) -> dict:
    return {
        "measure": measure,
        "bare": f"{figures['bare']:,.0f}",
        "stack": f"{figures['stack']:,.0f}",
        "ratio": f"{figures['difference']:+,.0f} ms",
        "target": f"≤ bare + {FIRST_TOKEN_EXTRA_MS} ms",
        "met": figures["difference"] <= FIRST_TOKEN_EXTRA_MS,
    }


def headline_rows(cpp: dict) -> list[dict]:
    """The headline table's rows: llama.cpp, the issue's targets."""
    one, users, api = cpp["one_user"], cpp["users"], cpp["api"]
    n = users["users"]
    long, turn, bare_turn = cpp["long_prompt"], cpp["next_turn"], cpp["bare_next_turn"]
    return [
        tokens_row("1 user, new conversation: tokens/s", one["new_tok_s"]),
        first_token_row("1 user, new conversation: first token (ms)", one["new_ttft_ms"]),
        tokens_row("1 user, second turn: tokens/s", one["second_tok_s"]),
        first_token_row("1 user, second turn: first token (ms)", one["second_ttft_ms"]),
        tokens_row(f"{n} users on {n} accounts, new conversations: tokens/s", users["new_tok_s"]),
        tokens_row(f"{n} users, second turns: tokens/s", users["second_tok_s"]),
        {
            "measure": f"{long['prompt_tokens']:,.0f}-token prompt: first token (ms); bare with llama.cpp's default batch",
            "bare": f"{long['ttft_ms']['bare']:,.0f}",
            "stack": f"{long['ttft_ms']['stack']:,.0f}",
            "ratio": f"{long['ttft_ms']['ratio']:.2f}×",
            "target": f"≤ {LONG_PROMPT_TARGET}×",
            "met": long["ttft_ms"]["ratio"] <= LONG_PROMPT_TARGET,
        },
        {
            "measure": f"next turn of a {turn['turns']}-turn conversation ({statistics.median(turn['prompt_tokens']):,.0f}"
            " tokens): first token (ms), against a fresh conversation's",
            "bare": f"fresh: {turn['ttft_ms']['bare']:,.0f}; bare's own next turn: "
            f"{statistics.median(bare_turn['next_ttft_ms']):,.0f} ({bare_turn['ratio']:.2f}× its fresh)",
            "stack": f"{turn['ttft_ms']['stack']:,.0f}",
            "ratio": f"{turn['ttft_ms']['ratio']:.2f}× fresh",
            "target": f"≤ {NEXT_TURN_TARGET}× fresh",
            "met": turn["ttft_ms"]["ratio"] <= NEXT_TURN_TARGET,
        },
        tokens_row("1 API client (openai SDK): tokens/s", api["tok_s"]),
    ]


def detail_report(result: dict) -> str:
    args, cpp, hf = result["args"], result["stack"]["llamacpp"], result["stack"].get("transformers")
    one, users, api = cpp["one_user"], cpp["users"], cpp["api"]
    n = users["users"]

    def rounds_row(measure: str, figures: dict, digits: int = 1, difference: bool = False) -> str:
        compared = f"{figures['difference']:+,.0f} ms" if difference else f"{figures['ratio']:.2f}×"
        return (
            f"| {measure} | {nums(figures['bare_rounds'], digits)} | {nums(figures['stack_rounds'], digits)} "
            f"| {compared} |"
        )

    long, turn, bare_turn = cpp["long_prompt"], cpp["next_turn"], cpp["bare_next_turn"]
    weights = "transformers not run"
    if hf is not None:
        weights = f"the same weights de-quantized, {result['bare_generate']['dtype']}, on transformers"
    out = [
        f"## Benchmark details ({result['date']}, {result['machine']})",
        "",
        f"Default model SmolLM2-135M-Instruct (the packaged Q4_1 GGUF on llama.cpp; {weights}), greedy, up to"
        f" {args['tokens']} new tokens, a prompt of its own per reply. llama.cpp with {result['parallel']} slots, {result['threads']}"
        f" threads and batches of {result['batch']} tokens, bare and in the stack. The stack runs `make run`'s"
        " settings (model titles on), but for CHAT_RATE_LIMIT=0. Each measure: bare, stack, bare, ..., stack, bare"
        f" ({args['rounds']} stack round{'s' if args['rounds'] != 1 else ''}); a ratio is the median over stack rounds of stack / the mean of the bare"
        " rounds either side; first tokens: the median of the differences.",
        "",
        "### llama.cpp",
        "",
        "| measure | bare llama.cpp, each round | stack, each round | stack vs bare |",
        "|---|---|---|---|",
        rounds_row("1 user, new conversation: tokens/s", one["new_tok_s"]),
        rounds_row("1 user, new conversation: first token (ms)", one["new_ttft_ms"], 0, True),
        rounds_row("1 user, second turn: tokens/s", one["second_tok_s"]),
        rounds_row("1 user, second turn: first token (ms)", one["second_ttft_ms"], 0, True),
        rounds_row(f"{n} users on {n} accounts, new conversations: tokens/s", users["new_tok_s"]),
        rounds_row(f"{n} users, new conversations: median first token (ms)", users["new_ttft_ms"], 0, True),
        rounds_row(f"{n} users, second turns: tokens/s", users["second_tok_s"]),
        rounds_row(f"{n} users, second turns: median first token (ms)", users["second_ttft_ms"], 0, True),
        rounds_row("1 API client (openai SDK): tokens/s", api["tok_s"]),
        rounds_row("1 API client: first token (ms)", api["ttft"], 0, True),
        "",
        f"Prompts (median tokens, stack / bare): a new conversation {one['prompt_tokens']['new']['stack']:.0f} /"
        f" {one['prompt_tokens']['new']['bare']:.0f}; a second turn {one['prompt_tokens']['second']['stack']:.0f} /"
        f" {one['prompt_tokens']['second']['bare']:.0f} (bare llama.cpp's second turn: the first exchange, its own"
        f" reply, then the follow-up; {one['bare_second_cached_tokens']:.0f} of its tokens were in llama.cpp's"
        f" cache for 1 user, {users['bare_second_cached_tokens']:.0f} for {n}). Replies: median"
        f" {one['reply_tokens']['new']:.0f} tokens new, {one['reply_tokens']['second']:.0f} second. 1 user: the"
        f" worker's own rate {one['server_tok_s']:.1f} tokens/s, last delta → done {one['tail_ms']:.0f} ms."
        f" The last {n}-user round's first tokens (ms): new conversations {nums(users['first_tokens_ms']['new'])};"
        f" second turns {nums(users['first_tokens_ms']['second'])}. Every user had a first token before any"
        f" reply ended: {'yes' if users['overlapped'] else 'no'}. Worker RSS {cpp['worker_rss_mb']:.0f} MB.",
        "",
        "| measure | compared with, each round | stack, each round | stack / compared |",
        "|---|---|---|---|",
        f"| {long['prompt_tokens']:,.0f}-token prompt, new conversation: first token (ms) | bare llama.cpp,"
        f" default batch ({long['bare_batch']}), {long['parallel']} slots: {nums(long['ttft_ms']['bare_rounds'])}"
        f" | {nums(long['ttft_ms']['stack_rounds'])} | {long['ttft_ms']['ratio']:.2f}× |",
        f"| next turn of a {turn['turns']}-turn conversation ({nums(turn['prompt_tokens'])} tokens): first token"
        f" (ms) | a fresh conversation ({turn['fresh_prompt_tokens']:.0f} tokens): {nums(turn['ttft_ms']['bare_rounds'])}"
        f" | {nums(turn['ttft_ms']['stack_rounds'])} | {turn['ttft_ms']['ratio']:.2f}× |",
        f"| the same next turns on bare llama.cpp: first token (ms) | a fresh conversation:"
        f" {nums(bare_turn['fresh_ttft_ms'])} | bare's next turns: {nums(bare_turn['next_ttft_ms'])}"
        f" | {bare_turn['ratio']:.2f}× |",
        "",
        f"The {turn['turns']}-turn conversation's first reply here (cold, {turn['cold_prompt_tokens']:,} tokens):"
        f" first token in {turn['cold_ttft_ms']:,.0f} ms. The stack's worker timed the long prompt's first token"
        f" from its queueing: {nums(long['server_ttft_ms'])} ms.",
    ]
    if hf is not None:
        bare = result["bare_generate"]
        out += [
            "",
            "### transformers",
            "",
            "| measure | bare `generate`, each round | stack, each round | stack vs bare |",
            "|---|---|---|---|",
            rounds_row("1 user, new conversation: tokens/s", hf["one_tok_s"]),
            f"| 1 user, new conversation: first token (ms) | prefill {bare['prefill_ms']:.0f} |"
            f" median {hf['one_ttft_ms']:.0f} | {hf['one_ttft_ms'] - bare['prefill_ms']:+.0f} ms |",
            rounds_row(f"{n} users on {n} accounts, new conversations: tokens/s", hf["users_tok_s"]),
            rounds_row("1 API client (openai SDK): tokens/s", hf["api"]["tok_s"]),
            "",
            f"1 user: the worker's own rate {hf['server_tok_s']:.1f} tokens/s, last delta → done"
            f" {hf['tail_ms']:.0f} ms. {n} users: {hf['users_vs_one']:.2f}× one user's rate; the last round's first"
            f" tokens (ms) {nums(hf['first_tokens_ms'])}; every user had a first token before any reply ended:"
            f" {'yes' if hf['overlapped'] else 'no'}. 1 API client's first token: {hf['api']['ttft_ms']:.0f} ms."
            f" Worker RSS {hf['worker_rss_mb']:.0f} MB.",
        ]

    def beside_row(name: str, data: dict) -> str:
        long_reply, short = data["beside_long"]["long"], data["beside_long"]["short"]
        return (
            f"| {name} | {long_reply['prompt_tokens']} | {long_reply['ttft_ms']:,.0f} | {short['ttft_ms']:,.0f} |"
            f" {short['total_s'] * 1000:,.0f} |"
        )

    out += [
        "",
        f"### A reply in a {args['turns']}-turn conversation (trimmed to the model's input limit) beside another"
        ' user\'s 8-token "hi"',
        "",
        '| backend | long prompt tokens | long first token (ms) | "hi" first token (ms) | "hi" whole reply (ms) |',
        "|---|---|---|---|---|",
        beside_row("llama.cpp", cpp),
        *([beside_row("transformers", hf)] if hf is not None else []),
        "",
        "### Waits until the stack was idle (its titles written), after each stack round (s)",
        "",
        "| after | waits |",
        "|---|---|",
        f"| llama.cpp, 1 user's new conversation | {nums(one['titles_s'], 1)} |",
        f"| llama.cpp, 1 user's second turn | {nums(one['idle_s'], 1)} |",
        f"| llama.cpp, {n} users' new conversations | {nums(users['titles_s'], 1)} |",
        f"| llama.cpp, {n} users' second turns | {nums(users['idle_s'], 1)} |",
        f"| llama.cpp, 1 API client | {nums(api['idle_s'], 1)} |",
        f"| llama.cpp, a fresh conversation | {nums(turn['titles_s'], 1)} |",
        f"| llama.cpp, the {turn['turns']}-turn conversation's turns | {nums(turn['idle_s'], 1)} |",
        f"| llama.cpp, the long prompt (a new conversation) | {nums(long['idle_s'], 1)} |",
        f'| llama.cpp, the long conversation and "hi" | {cpp["beside_long"]["idle_s"]:.1f} |',
    ]
    if hf is not None:
        out += [
            f"| transformers, 1 user's new conversation | {nums(hf['idle_s']['1 user'], 1)} |",
            f"| transformers, {n} users' new conversations | {nums(hf['idle_s']['users'], 1)} |",
            f"| transformers, 1 API client | {nums(hf['api']['idle_s'], 1)} |",
        ]
    return "\n".join(out)


def headline_report(result: dict) -> str:
    cpp = result["stack"]["llamacpp"]
    stolen, n = result["stolen"], cpp["users"]["users"]
    titles_one, titles_all = cpp["one_user"]["titles_s"], cpp["users"]["titles_s"]
    rows = [
        f"| {r['measure']} | {r['bare']} | {r['stack']} | {r['ratio']} | {r['target']} | {'yes' if r['met'] else 'no'} |"
        for r in result["headline"]
    ]
    return "\n".join(
        [
            f"## make bench: headline figures ({result['date']})",
            "",
            f"Machine: {result['machine']}. llama.cpp, {result['threads']} threads and {result['parallel']} slots, bare"
            " and in the stack; medians over rounds (a ratio: over each stack round against the bare rounds either"
            " side).",
            "",
            "| measure | bare llama.cpp | stack | ratio | target | met? |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Host CPU stolen by other guests (/proc/stat) in the {stolen['rounds']} measured rounds: median"
            f" {stolen['median']:.1%}, at most {stolen['max']:.1%} of a round's core time (beyond a few percent, the"
            " ratios say more about the host than about the stack). Titles: after a round of new conversations the"
            f" stack was idle again {statistics.median(titles_one):.1f} s later for 1 user (at most"
            f" {max(titles_one):.1f}), {statistics.median(titles_all):.1f} s for {n} (at most {max(titles_all):.1f});"
            f" a heartbeat's 1.25 s precision. The whole run took {result['duration_s'] / 60:.1f} minutes.",
        ]
    )


def machine() -> str:
    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores, {cpu or platform.processor() or platform.platform()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=96, help="max new tokens per reply")
    parser.add_argument("--users", type=int, default=8, help="concurrent users (each an account of their own)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="stack rounds per measure")
    parser.add_argument(
        "--long-tokens", type=int, default=2000, help="most tokens of the long prompt, template included"
    )
    parser.add_argument("--long-rounds", type=int, default=LONG_ROUNDS, help="stack rounds of the long prompt")
    parser.add_argument(
        "--prefix-turns", type=int, default=60, help="turns of the conversation whose next turn is timed"
    )
    parser.add_argument("--turns", type=int, default=2000, help='turns of the very long conversation beside the "hi"')
    parser.add_argument("--skip-transformers", action="store_true", help="measure llama.cpp only")
    args = parser.parse_args()
    started = time.monotonic()
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
    import django

    django.setup()
    from django.conf import settings

    # Bare llama.cpp and the stack with the threads the stack is configured with (by default a
    # thread per core; on a machine with cores to spare, INFERENCE_LLAMACPP_THREADS leaves some
    # to the web tier, and bare llama.cpp gets the same number).
    threads = settings.INFERENCE_LLAMACPP_THREADS or os.cpu_count() or 1
    parallel = min(settings.INFERENCE_MAX_BATCH, settings.INFERENCE_LLAMACPP_PARALLEL)
    bare_cpp = InChild(BareLlamaCpp, args.tokens, threads, parallel)
    bare_hf = None if args.skip_transformers else InChild(BareGenerate, args.tokens)
    try:
        stack = stack_run(args, bare_cpp, bare_hf, threads, parallel)
    finally:
        bare_cpp.close()
        if bare_hf is not None:
            bare_hf.close()
    result = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "args": vars(args),
        "threads": threads,
        "parallel": parallel,
        "batch": bare_cpp.info["n_batch"],
        "bare_generate": {k: bare_hf.info[k] for k in ("dtype", "prefill_ms")} if bare_hf is not None else {},
        "stack": stack,
        # Per measured round, the share of the cores' time the host gave other guests.
        "stolen": {"median": statistics.median(STOLEN or [0.0]), "max": max(STOLEN or [0.0]), "rounds": len(STOLEN)},
        "duration_s": time.monotonic() - started,
    }
    result["headline"] = headline_rows(stack["llamacpp"])
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(result, indent=2))
    print(f"\n{detail_report(result)}\n\n{headline_report(result)}")


if __name__ == "__main__":
    main()
