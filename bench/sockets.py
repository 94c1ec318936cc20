"""Benchmark: many open chat tabs against one daphne process. Starts the real stack
(tests/stack.py: daphne, one inference worker, a private Redis), logs in 100 users and opens 10
websockets for each (1,000 sockets), then reports daphne's Redis connections (CLIENT LIST, by
the names inference/streams.py gives a process's connections: chatsite-async-<pid> and
chatsite-sync-<pid>), its resident memory and its CPU while every socket is open and idle.
Then a few users send a message from one tab: every other tab of theirs must get the chat.sync
"started" event (and follows the reply to its end, through the process's one reader of reply
streams), no tab of another user may. Last, the sockets close, and the connections are counted
again.

    .venv/bin/python bench/sockets.py [--users 100] [--tabs 10] [--senders 5] [--idle-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

HANDSHAKES_AT_ONCE = 100  # daphne's listen backlog is 50: more at once only retries SYNs


class RedisConnections:
    """daphne's Redis connections, counted from CLIENT LIST by their names; `watch()` keeps the
    most seen (every 50 ms, from a thread) while a block runs."""

    def __init__(self, stack, pid: int) -> None:
        from inference.streams import client_name

        self.stack = stack
        self.names = {client_name("async", pid): "async", client_name("sync", pid): "sync"}
        self.most = 0
        self._stop = threading.Event()

    def count(self, conn=None) -> dict[str, int]:
        own = conn is None
        conn = conn or self.stack.redis()
        try:
            counts = {"async": 0, "sync": 0, "blocked": 0}
            for c in conn.client_list():
                kind = self.names.get(c.get("name"))
                if kind:
                    counts[kind] += 1
                    counts["blocked"] += "b" in c.get("flags", "")
            counts["total"] = counts["async"] + counts["sync"]
            return counts
        finally:
            if own:
                conn.close()

    def _sample(self) -> None:
        with self.stack.redis() as conn:
            while not self._stop.is_set():
                self.most = max(self.most, self.count(conn)["total"])
                time.sleep(0.05)

    def watch(self):
        import contextlib

        @contextlib.contextmanager
        def watching():
            self.most, thread = 0, threading.Thread(target=self._sample, daemon=True)
            self._stop.clear()
            thread.start()
            try:
                yield self
            finally:
                self._stop.set()
                thread.join(timeout=5)

        return watching()


def cpu_percent(pid: int, seconds: float) -> float:
    """The process's CPU time over `seconds` of wall time, in % of one core."""
    import psutil

    process = psutil.Process(pid)
    before, started = process.cpu_times(), time.monotonic()
    time.sleep(seconds)
    after, wall = process.cpu_times(), time.monotonic() - started
    used = (after.user - before.user) + (after.system - before.system)
    return 100 * used / wall


class Tab:
    """One browser tab: a socket and every frame it has received."""

    def __init__(self, user: int, ws) -> None:
        self.user, self.ws, self.frames = user, ws, []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for text in self.ws:
                self.frames.append(json.loads(text))
        except Exception:  # closed
            pass

    async def send(self, frame: dict) -> None:
        await self.ws.send(json.dumps(frame))

    def of_type(self, kind: str) -> list[dict]:
        return [f for f in self.frames if f["type"] == kind]


async def open_tabs(stack, cookies: list[str], tabs: int) -> list[list[Tab]]:
    import websockets

    gate = asyncio.Semaphore(HANDSHAKES_AT_ONCE)
    origin = stack.url.rstrip("/")

    async def one(user: int) -> Tab:
        async with gate:
            ws = await websockets.connect(
                stack.ws_url, additional_headers={"Cookie": cookies[user], "Origin": origin}, open_timeout=60
            )
        return Tab(user, ws)

    opened = await asyncio.gather(*(one(user) for user in range(len(cookies)) for _ in range(tabs)))
    return [opened[i * tabs : (i + 1) * tabs] for i in range(len(cookies))]


async def until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def scenario(stack, cookies: list[str], args, redis_connections: RedisConnections, pid: int) -> None:
    from tests.live_client import rss_mb

    print(f"daphne before any socket: {redis_connections.count()['total']} Redis connections, {rss_mb(pid):.0f} MB RSS")
    started = time.monotonic()
    with redis_connections.watch():
        by_user = await open_tabs(stack, cookies, args.tabs)
    opened = time.monotonic() - started
    tabs = [tab for user_tabs in by_user for tab in user_tabs]
    print(f"opened {len(tabs)} sockets ({args.users} users x {args.tabs} tabs) in {opened:.1f} s")
    print(f"  Redis connections of daphne while they opened, most at once: {redis_connections.most}")
    await asyncio.sleep(2)  # handshakes' aftermath settles
    counts = redis_connections.count()
    print(
        f"  with all open and idle: {counts['total']} Redis connections ({counts['async']} async, "
        f"{counts['sync']} sync; {counts['blocked']} blocked in a read), {rss_mb(pid):.0f} MB RSS"
    )
    idle = await asyncio.to_thread(cpu_percent, pid, args.idle_s)
    print(f"  daphne's CPU over {args.idle_s:.0f} s with every socket idle: {idle:.1f} % of a core")

    # A few users send a message from their first tab; their other tabs follow it when they hear.
    senders = list(range(0, args.users, max(1, args.users // args.senders)))[: args.senders]
    with redis_connections.watch():
        for user in senders:
            await by_user[user][0].send(
                {"type": "chat.send", "content": f"Say hello to user {user}.", "params": {"max_tokens": 8}}
            )
        ok = await until(lambda: all(t.of_type("chat.started") for u in senders for t in by_user[u][:1]), 60)
        messages = {u: by_user[u][0].of_type("chat.started")[0]["message"] for u in senders} if ok else {}
        heard = await until(lambda: all(t.of_type("chat.sync") for u in senders for t in by_user[u][1:]), 30)
        for user in senders:
            for tab in by_user[user][1:]:
                for event in tab.of_type("chat.sync"):
                    await tab.send({"type": "chat.resume", "message": event["message"], "after": 0})
        done = await until(lambda: all(t.of_type("chat.done") for u in senders for t in by_user[u]), 120)
        await asyncio.sleep(1)  # anything misdelivered would have arrived by now
    problems = []
    if not (ok and heard and done):
        problems.append(f"timed out (started {ok}, every tab heard {heard}, every tab saw the end {done})")
    for user, user_tabs in enumerate(by_user):
        for index, tab in enumerate(user_tabs):
            events = tab.of_type("chat.sync")
            expected = [messages.get(user)] if user in senders and index > 0 else []
            if [e.get("message") for e in events] != expected:
                problems.append(f"user {user} tab {index}: chat.sync for {[e.get('message') for e in events]}")
            foreign = {f.get("message") for f in tab.frames} - {messages.get(user), None}
            if foreign:
                problems.append(f"user {user} tab {index}: frames of another user's reply {sorted(foreign)}")
    print(
        f"{len(senders)} users sent a message from one tab: the other {args.tabs - 1} tabs of each "
        f"heard it and followed it to its end, no tab of the other {args.users - len(senders)} users "
        f"heard anything: {'yes' if not problems else 'NO'}"
    )
    for problem in problems[:20]:
        print(f"  {problem}")
    print(f"  Redis connections of daphne meanwhile, most at once: {redis_connections.most}")

    await asyncio.gather(*(tab.ws.close() for tab in tabs))
    await asyncio.gather(*(tab.reader for tab in tabs))
    await asyncio.sleep(3)  # the user events' reader ends within its 1 s block
    counts = redis_connections.count()
    print(
        f"after closing every socket: {counts['total']} Redis connections ({counts['blocked']} blocked in a "
        f"read; idle ones stay pooled), {rss_mb(pid):.0f} MB RSS"
    )
    if problems:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--tabs", type=int, default=10, help="sockets per user")
    parser.add_argument("--senders", type=int, default=5, help="users who send a message from one tab")
    parser.add_argument("--idle-s", type=float, default=10, help="seconds over which idle CPU is measured")
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings

    from bench.run import user_cookies
    from tests.stack import LiveStack

    print(f"REDIS_MAX_CONNECTIONS {settings.REDIS_MAX_CONNECTIONS}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="chat-sockets-") as tmp:
        stack = LiveStack(Path(tmp), workers=1, extra_env={"CHAT_RATE_LIMIT": "0", "LOG_LEVEL": "WARNING"})
        stack.start()
        try:
            cookies = user_cookies(stack, args.users)
            pid = stack.daphne_pid
            asyncio.run(scenario(stack, cookies, args, RedisConnections(stack, pid), pid))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
