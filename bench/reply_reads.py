"""Benchmark: following replies through the event loop's one reader of reply streams
(inference/stream_reader.py) against one blocking XREAD per follower (streams.read_after, as
before it), in one process, on a private Redis. Writers append a delta to each of R streams
every 50 ms (40 entries, the last a `done`); each stream has F followers that loop as a chat
socket's forwarder does (read, 10 ms pause, read again). Reports the process's CPU time and the
XREAD and XADD calls Redis served (the shared reader's wakes are XADDs); alternating rounds.

    .venv/bin/python bench/reply_reads.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# One blocking read per follower needs a connection each: the pool as it was, unbounded.
os.environ["REDIS_MAX_CONNECTIONS"] = "5000"

ENTRIES = 40
INTERVAL_S = 0.05
CASES = [(10, 1), (50, 1), (200, 1), (20, 10)]  # (replies, followers of each)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one_round(shared: bool, replies: int, followers: int) -> tuple[float, float]:
    from inference import stream_reader, streams

    read = stream_reader.read_after if shared else streams.read_after
    ids = [f"bench-{uuid.uuid4().hex[:8]}-{i}" for i in range(replies)]

    async def write(request_id: str) -> None:
        for seq in range(1, ENTRIES + 1):
            pipe = streams.async_client().pipeline(transaction=False)
            streams.append(pipe, request_id, seq, "done" if seq == ENTRIES else "delta", {"text": "x"})
            await pipe.execute()
            await asyncio.sleep(INTERVAL_S)

    async def follow(request_id: str) -> None:
        last = 0
        while True:
            entries = await read(request_id, last, 2000)
            for seq, kind, _data in entries:
                last = seq
                if kind == "done":
                    return
            if entries:
                await asyncio.sleep(0.01)

    before, started = cpu_s(), time.monotonic()
    await asyncio.gather(*map(write, ids), *(follow(rid) for rid in ids for _ in range(followers)))
    return cpu_s() - before, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from chatsite.processes import ProcessGroup, start_private_redis

    with tempfile.TemporaryDirectory(prefix="reads-") as tmp:
        group = ProcessGroup()
        os.environ["REDIS_URL"] = start_private_redis(group, Path(tmp) / "redis.sock", workdir=tmp)
        try:
            import django

            django.setup()
            from inference import streams

            print("| replies x followers | reads | CPU s (each round) | wall s | XREAD calls | XADD calls |")
            print("|---|---|---|---|---|---|")
            for replies, followers in CASES:
                rows = {}
                for _ in range(args.rounds):
                    for shared in (False, True):
                        streams.client().config_resetstat()
                        used, wall = asyncio.run(one_round(shared, replies, followers))
                        stats = streams.client().info("commandstats")
                        calls = [stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("xread", "xadd")]
                        rows.setdefault(shared, []).append((used, wall, *calls))
                for shared, runs in rows.items():
                    print(
                        f"| {replies} x {followers} | {'one shared' if shared else 'one per follower'} | "
                        f"{', '.join(f'{r[0]:.2f}' for r in runs)} | {max(r[1] for r in runs):.1f} | "
                        f"{max(r[2] for r in runs)} | {max(r[3] for r in runs)} |"
                    )
        finally:
            group.stop_all(timeout=10)


if __name__ == "__main__":
    main()
