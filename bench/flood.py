"""Benchmark: one account floods the API from many keys; does another account's chat still answer?

The real stack as `make run` ships it (tests/stack.py with `make run`'s settings: the packaged
model on llama.cpp, model titles on, CHAT_MAX_ACTIVE_PER_USER and CHAT_RATE_LIMIT as shipped).
One account with 5 API keys sends --requests long streaming completions at once (up to 200 new
tokens each, n=1); a second account's chat message ("Say hi.", 8 new tokens) goes out one second
into the flood. Measured: that message's first token against the same message on the idle
stack (--rounds each), and how many of the flood's requests were served or refused (429, with
their Retry-After and error code).

    .venv/bin/python bench/flood.py             # about 3 minutes on 2 cores

Writes bench/results/flood.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

from bench.run import one_reply, wait_idle  # noqa: E402
from inference.loading import PACKAGED_SLUG  # noqa: E402

KEYS = 5


def flood_request(stack, key: str) -> tuple[int, str, str]:
    body = {"model": PACKAGED_SLUG, "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
            "max_tokens": 200, "temperature": 0, "stream": True}  # fmt: skip
    response = requests.post(f"{stack.url}v1/chat/completions", json=body, timeout=600, stream=True,
                             headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    if response.status_code == 200:
        for _ in response.iter_lines():
            pass
        return 200, "", ""
    return response.status_code, response.json()["error"]["code"], response.headers.get("Retry-After", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import django

    django.setup()
    from django.conf import settings

    from tests.live_client import login_cookie
    from tests.stack import LiveStack

    env = {"CHAT_MAX_ACTIVE_PER_USER": str(settings.CHAT_MAX_ACTIVE_PER_USER),
           "CHAT_RATE_LIMIT": str(settings.CHAT_RATE_LIMIT),
           "CHAT_MODEL_TITLES": "1" if settings.CHAT_MODEL_TITLES else "0"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="flood-bench-") as tmp:
        stack = LiveStack(Path(tmp), workers=1, extra_env=env)
        stack.start()
        try:
            stack.create_user("flooder", "live-password-123")
            keys = [stack.run_manage("createapikey", "flooder").strip().splitlines()[-1] for _ in range(KEYS)]
            cookies = [login_cookie(stack, f"bystander{i}") for i in range(args.rounds * 2 + 1)]
            asyncio.run(one_reply(stack, cookies[-1], "Say hi.", 8))  # warm-up
            wait_idle(stack)
            idle = []
            for i in range(args.rounds):
                idle.append(asyncio.run(one_reply(stack, cookies[i], "Say hi.", 8))["ttft_ms"])
                wait_idle(stack)
            flooded, outcomes = [], Counter()
            for i in range(args.rounds):
                with ThreadPoolExecutor(max_workers=args.requests) as pool:
                    futures = [pool.submit(flood_request, stack, keys[j % KEYS]) for j in range(args.requests)]
                    time.sleep(1.0)
                    flooded.append(asyncio.run(one_reply(stack, cookies[args.rounds + i], "Say hi.", 8))["ttft_ms"])
                    outcomes.update(f.result()[:2] for f in futures)
                wait_idle(stack, timeout=600)
        finally:
            stack.stop()
    result = {
        "settings": env,
        "requests_per_round": args.requests,
        "idle_first_token_ms": idle,
        "flooded_first_token_ms": flooded,
        "flood_outcomes": {f"{status} {code}".strip(): n for (status, code), n in outcomes.items()},
    }
    out = REPO / "bench" / "results" / "flood.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("## One account floods the API (bench/flood.py)\n")
    print(f"{args.requests} streaming completions at once from one account's {KEYS} keys, {args.rounds} rounds; "
          f"settings {env}.\n")  # fmt: skip
    print('| another account\'s "Say hi." | first token, median (ms) | each round (ms) |')
    print("|---|---|---|")
    print(f"| idle stack | {statistics.median(idle):.0f} | {', '.join(f'{v:.0f}' for v in idle)} |")
    print(f"| during the flood | {statistics.median(flooded):.0f} | {', '.join(f'{v:.0f}' for v in flooded)} |")
    print(
        "\nThe flood's requests, all rounds: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(result["flood_outcomes"].items()))
    )


if __name__ == "__main__":
    main()
