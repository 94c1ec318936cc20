"""Benchmark: the admin's conversation export (chat/export.py) on 10,000 conversations: time and
peak Python memory of the streamed JSONL and CSV exports served as daphne serves them (iterated
asynchronously), against the same lines as a synchronous body (which Django reads whole under
ASGI) and against reading the selection into memory at once.

    .venv/bin/python bench/export_logs.py [--conversations 10000] [--messages 6]

Runs on a throw-away SQLite database in a temporary folder. Peak memory is tracemalloc's peak
while one export is read to the end and thrown away, as a client download would. Prints a
Markdown report for docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def setup(tmp: Path) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "chatsite.settings"
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/11")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def seed(conversations: int, messages: int) -> None:
    """`conversations` conversations of `messages` messages each (a few hundred characters of
    Markdown per reply, a reproducibility record, feedback on every tenth reply)."""
    from django.contrib.auth import get_user_model

    from chat.models import Conversation, Feedback, Message
    from chat.rendering import render_markdown
    from inference.models import LanguageModel

    model = LanguageModel.objects.create(name="Bench", slug="bench", location="/models/bench", is_default=True)
    users = [get_user_model().objects.create_user(f"user{i}") for i in range(50)]
    reply = "Here is **a plan**:\n\n" + "\n".join(f"- step {i}: walk along the river and look" for i in range(6))
    reply_html = render_markdown(reply)
    params = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 256, "seed": 3}
    for start in range(0, conversations, 1000):
        batch = Conversation.objects.bulk_create(
            Conversation(user=users[i % len(users)], title=f"Conversation {i}", model=model)
            for i in range(start, min(start + 1000, conversations))
        )
        rows = []
        for conversation in batch:
            for j in range(messages):
                if j % 2 == 0:
                    rows.append(Message(conversation=conversation, role="user", content="Plan a walk", html="<p>x</p>"))
                else:
                    rows.append(
                        Message(
                            conversation=conversation, role="assistant", content=reply, html=reply_html, model=model,
                            params=params, system_prompt="Be brief.", prompt_tokens=40, completion_tokens=80,
                            ttft_ms=45.0, tokens_per_s=30.0, worker="bench-0", finish_reason="stop",
                        )
                    )  # fmt: skip
        created = Message.objects.bulk_create(rows)
        Feedback.objects.bulk_create(
            Feedback(message=m, user=m.conversation.user, rating=1, comment="good") for m in created[1::20]
        )


def _timed_and_traced(run) -> tuple[float, float, object]:
    """(seconds, peak MiB, result): timed on one run, memory traced on a second one (tracing
    slows Python down several times, so it never runs during the timed one)."""
    started = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak / 2**20, result


def _served(response) -> tuple[int, int]:
    """(bytes, chunks) of a response read to the end as daphne serves it: Django's ASGI handler
    iterates it asynchronously (`async for part in response`)."""

    async def read() -> tuple[int, int]:
        size = chunks = 0
        async for part in response:
            size += len(part)
            chunks += 1
        return size, chunks

    return asyncio.run(read())


def measure(fmt: str, *, sync_body: bool = False) -> tuple[float, float, int, int]:
    """(seconds, peak MiB, bytes, chunks) of one export of every conversation served as daphne
    serves it, read to the end and thrown away as a client download would. `sync_body`: the same
    lines as a synchronous iterator (the export before it streamed under ASGI: Django reads such
    a body whole before sending it)."""
    from django.http import StreamingHttpResponse

    from chat import export
    from chat.models import Conversation

    def download() -> tuple[int, int]:
        if sync_body:
            lines, kind = export.FORMATS[fmt]
            body = (line.encode() for line in lines(Conversation.objects.all()))
            return _served(StreamingHttpResponse(body, content_type=kind))
        return _served(export.response(Conversation.objects.all(), fmt))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Django's warning about consuming a synchronous iterator
        elapsed, peak, (size, chunks) = _timed_and_traced(download)
    return elapsed, peak, size, chunks


def measure_in_memory() -> tuple[float, float]:
    """(seconds, peak MiB) of building every record in one list (the export without streaming)."""
    from chat import export
    from chat.models import Conversation

    def everything() -> int:
        conversations = Conversation.objects.select_related("user", "model").prefetch_related(
            "messages__model", "messages__feedback"
        )
        return len([export.conversation_record(c) for c in conversations])

    elapsed, peak, _ = _timed_and_traced(everything)
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=6, help="Messages per conversation.")
    parser.add_argument("--chunk", type=int, default=0, help="Conversations per read (default: chat.export.CHUNK).")
    args = parser.parse_args()
    if args.conversations < 1 or args.messages < 1 or args.chunk < 0:
        parser.error("--conversations and --messages must be at least 1, --chunk 0 or more.")
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        setup(Path(tmp))
        from chat import export

        if args.chunk:
            export.CHUNK = args.chunk
        started = time.perf_counter()
        seed(args.conversations, args.messages)
        seeded = time.perf_counter() - started
        results = {fmt: measure(fmt) for fmt in ("jsonl", "csv")}
        synchronous = measure("jsonl", sync_body=True)
        in_memory = measure_in_memory()
    total = args.conversations * args.messages
    print("## Conversation log export (bench/export_logs.py)\n")
    print(
        f"{args.conversations:,} conversations, {total:,} messages ({args.messages} each, replies of about 300 "
        f"characters with their reproducibility record), SQLite, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; `CHUNK` = {export.CHUNK} conversations per read "
        f"(seeding took {seeded:.0f} s).\n"
    )
    print("Each export is read to the end as daphne serves it (Django's ASGI handler iterates the response")
    print("asynchronously).\n")
    print("| export | time | peak Python memory | size | chunks sent |")
    print("|---|---|---|---|---|")
    for fmt, (elapsed, peak, size, chunks) in results.items():
        print(f"| {fmt} (async body) | {elapsed:.1f} s | {peak:.1f} MiB | {size / 2**20:.1f} MiB | {chunks:,} |")
    elapsed, peak, size, chunks = synchronous
    print(f"| jsonl, a synchronous body (before) | {elapsed:.1f} s | {peak:.1f} MiB | {size / 2**20:.1f} MiB | "
          f"{chunks:,} |")  # fmt: skip
    print(f"| every record in one list (not streamed) | {in_memory[0]:.1f} s | {in_memory[1]:.1f} MiB | | |")


if __name__ == "__main__":
    main()
