"""Benchmark: where the CPU goes while the stack streams llama.cpp replies, beside bare llama.cpp.

Starts the real stack (daphne, one inference worker, a private Redis, via `tests/stack.py`) on
the packaged GGUF with the llama.cpp backend, then runs rounds of 1 reply and of 8 replies at
once (greedy, 96 new tokens, a prompt of its own each) and reads the CPU time every process
spent during each round from /proc: daphne, the worker (its main thread, the Python loop, apart
from its other threads: llama.cpp's and each request's), Redis and this client. The same rounds
run on bare llama.cpp in a process of its own (bench/run.py's BareLlamaCpp) for its CPU time.
On a machine with as many llama.cpp threads as cores, every CPU second the stack spends beside
llama.cpp is taken from it.

    .venv/bin/python bench/cpu_split.py [--rounds 3] [--env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """CPU seconds per part between start() and stop()."""

    def __init__(self, parts: dict[str, int], worker: int | None = None) -> None:
        self.parts, self.worker = parts, worker

    def _read(self) -> dict[str, float]:
        out = {name: sum(thread_cpu(pid).values()) for name, pid in self.parts.items()}
        if self.worker is not None:
            threads = thread_cpu(self.worker)
            out["worker main thread"] = threads.get(self.worker, 0.0)
            out["worker other threads"] = sum(v for tid, v in threads.items() if tid != self.worker)
        out["this client"] = self_cpu()
        return out

    def start(self) -> None:
        self.before, self.started = self._read(), time.monotonic()

    def stop(self) -> dict[str, float]:
        after = self._read()
        # Threads that ended during the round (a request's) are missed; the worker's other
        # threads are therefore a lower bound.
        result = {k: max(after.get(k, 0.0) - v, 0.0) for k, v in self.before.items()}
        result["wall"] = time.monotonic() - self.started
        return result


def show(label: str, rounds: list[dict]) -> None:
    keys = [k for k in rounds[0] if k not in ("wall", "tokens")]
    tokens = statistics.median(r["tokens"] for r in rounds)
    wall = statistics.median(r["wall"] for r in rounds)
    print(f"{label}: {tokens:.0f} tokens in {wall:.2f} s (median of {len(rounds)} rounds), CPU seconds:")
    for key in keys:
        values = [r[key] for r in rounds]
        print(f"  - {key}: median {statistics.median(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the stack (repeatable)")
    args = parser.parse_args()

    from bench import run

    threads = int(os.environ.get("INFERENCE_LLAMACPP_THREADS") or os.cpu_count() or 1)
    results: dict[str, list[dict]] = {}
    env = dict(item.split("=", 1) for item in args.env)
    with run.bare_and_llamacpp_stack("cpu", args.users, args.tokens, env) as (bare, stack, _, cookies):
        bare_pid = bare.process.pid
        parts = {"daphne": stack.daphne_pid}
        redis_pid = stack.infra.pids().get("redis")
        if redis_pid:
            parts["redis"] = redis_pid
        worker = list(stack.worker_pids.values())[0]
        for i in range(args.rounds):
            for users in (1, args.users):
                prompts = [f"{run.PROMPTS[(i * 9 + j) % len(run.PROMPTS)]} (cpu {i} {users} {j})" for j in range(users)]
                time.sleep(run.SETTLE_S)
                meter = Meter({"bare llama.cpp process": bare_pid})
                meter.start()
                if users == 1:
                    bare.single(prompts[0] + " bare")
                    tokens = args.tokens
                else:
                    bare.together([p + " bare" for p in prompts])
                    tokens = args.tokens * users
                measured = meter.stop()
                measured["tokens"] = tokens  # bare replies run to the cap (greedy, no stop)
                results.setdefault(f"bare llama.cpp, {users} at once", []).append(measured)

                time.sleep(run.SETTLE_S)
                meter = Meter(parts, worker=worker)
                meter.start()
                replies = asyncio.run(run.many(stack, cookies, prompts, args.tokens))
                measured = meter.stop()
                measured["tokens"] = sum(r["tokens"] for r in replies)
                results.setdefault(f"stack, {users} user(s) at once", []).append(measured)
    print(f"CPU time by process, llama.cpp with {threads} threads, {os.cpu_count()} cores, {args.tokens} new tokens:")
    for label, rounds in results.items():
        show(label, rounds)


if __name__ == "__main__":
    main()
