"""Benchmark: an eval run as a user gets it, beside bare llama.cpp, and what it does to chat.

The real stack (tests/stack.py with `make run`'s settings, the packaged model on llama.cpp) and
its Celery worker; the official openai SDK creates an eval over the first N questions of the
shipped general probe (graded with `string_check` ilike on the expected answer) and runs it with
the default model, greedy, up to --tokens new tokens per answer. Measured:

- the run's wall time from create to `completed` (the SDK polls every 0.2 s: the stack runs with
  API_RATE_LIMIT=0 besides `make run`'s settings), items/s and the
  generated tokens/s, against bare llama.cpp (xllamacpp in this process, the same GGUF, threads and
  batch size) answering the same prompts one after the other, before and after the stack;
- a person's chat reply (first token, tokens/s) while the stack is idle and while an eval run
  is going, --chats each: the run is background work, so it must not slow them.

    .venv/bin/python bench/evals.py            # about 5 minutes on 2 cores
    .venv/bin/python bench/evals.py --items 10 --chats 2   # a quick check of the script itself

Writes bench/results/evals.json.
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

from bench.run import BareLlamaCpp, ask, one_reply, shipped_env, wait_idle  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
CRITERIA = [{"type": "string_check", "name": "mentions the answer", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "ilike"}]  # fmt: skip
SYSTEM = "Answer the question briefly."


def probe_rows(n: int) -> list[dict]:
    from finetuning.probe import load_items

    return [{"question": item.question, "answer": item.answers[0]} for item in load_items(limit=n)]


def bare_pass(bare: BareLlamaCpp, rows: list[dict]) -> dict:
    started = time.perf_counter()
    tokens = 0
    for row in rows:
        out = bare._reply([{"role": "system", "content": SYSTEM}, {"role": "user", "content": row["question"]}])
        tokens += out["tokens"]
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "items_s": len(rows) / seconds, "tok_s": tokens / seconds, "tokens": tokens}


def eval_run(client, eval_id: str, rows: list[dict], tokens: int, during=None) -> dict:
    data_source = {
        "type": "completions",
        "model": "smollm2-135m-instruct",
        "input_messages": {"type": "template", "template": [
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": "{{item.question}}"}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": tokens},
        "source": {"type": "file_content", "content": [{"item": row} for row in rows]},
    }  # fmt: skip
    started = time.perf_counter()
    run = client.evals.runs.create(eval_id, data_source=data_source)
    extra = during() if during else None
    while run.status in ("queued", "in_progress"):
        time.sleep(0.2)
        run = client.evals.runs.retrieve(run.id, eval_id=eval_id)
    seconds = time.perf_counter() - started
    if run.status != "completed":
        raise RuntimeError(f"the eval run ended {run.status}: {run.error}")
    usage = run.per_model_usage[0]
    return {
        "seconds": seconds,
        "items_s": len(rows) / seconds,
        "tok_s": usage.completion_tokens / seconds,
        "tokens": usage.completion_tokens,
        "passed": run.result_counts.passed,
        "total": run.result_counts.total,
        "errored": run.result_counts.errored,
        "chats": extra,
    }


def chats(stack, cookie: str, n: int, tag: str, tokens: int) -> list[dict]:
    return [asyncio.run(one_reply(stack, cookie, ask(tag, i), tokens)) for i in range(n)]


def summary(replies: list[dict]) -> dict:
    return {
        "ttft_ms": statistics.median(r["ttft_ms"] for r in replies),
        "tok_s": statistics.median(r["tok_s"] for r in replies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--chats", type=int, default=5)
    parser.add_argument("--chat-tokens", type=int, default=48)
    args = parser.parse_args()

    import django

    django.setup()
    import openai
    from django.conf import settings

    from tests.live_client import login_cookie
    from tests.stack import LiveStack

    threads = settings.INFERENCE_LLAMACPP_THREADS or os.cpu_count() or 1
    rows = probe_rows(args.items)
    bare = BareLlamaCpp(args.tokens, threads, settings.INFERENCE_LLAMACPP_PARALLEL)
    results: dict = {"items": len(rows), "tokens": args.tokens, "bare": [bare_pass(bare, rows)]}
    print(f"bare llama.cpp, before: {results['bare'][0]['seconds']:.1f} s", flush=True)

    with tempfile.TemporaryDirectory(prefix="evals-bench-") as tmp:
        # The SDK's polling (5 a second) would pass the API's per-key rate limit (120 a minute).
        with LiveStack(Path(tmp), workers=1, extra_env={**shipped_env(), "API_RATE_LIMIT": "0"}) as stack:
            stack.start_celery()
            cookie = login_cookie(stack, "bench")
            key = stack.run_manage("createapikey", "bench").strip().splitlines()[-1]
            client = openai.OpenAI(base_url=stack.url + "v1", api_key=key, max_retries=0, timeout=600)
            evaluation = client.evals.create(
                name="general probe", data_source_config={"type": "custom", "item_schema": SCHEMA},
                testing_criteria=CRITERIA,
            )  # fmt: skip
            asyncio.run(one_reply(stack, cookie, "Say hello. (warm-up)", 8))
            eval_run(client, evaluation.id, rows[:4], args.tokens)  # warm-up of the Celery task and the worker
            wait_idle(stack)
            results["stack"] = eval_run(client, evaluation.id, rows, args.tokens)
            print(f"stack eval run: {results['stack']['seconds']:.1f} s", flush=True)
            wait_idle(stack)
            results["chat_idle"] = summary(chats(stack, cookie, args.chats, "idle", args.chat_tokens))
            wait_idle(stack)
            during = eval_run(
                client, evaluation.id, rows, args.tokens,
                during=lambda: summary(chats(stack, cookie, args.chats, "during", args.chat_tokens)),
            )  # fmt: skip
            results["chat_during_eval"] = during.pop("chats")
            results["stack_with_chats"] = during
    results["bare"].append(bare_pass(bare, rows))
    bare_s = statistics.mean(b["seconds"] for b in results["bare"])
    bare_tok_s = statistics.mean(b["tok_s"] for b in results["bare"])

    stack = results["stack"]
    print()
    print(f"An eval run of {len(rows)} probe questions, up to {args.tokens} new tokens each (greedy):")
    print("| measure | bare llama.cpp (one after the other) | stack (eval run through the SDK) | ratio |")
    print("|---|---|---|---|")
    print(f"| wall time (s) | {bare_s:.1f} | {stack['seconds']:.1f} | {stack['seconds'] / bare_s:.2f}x |")
    print(
        f"| items/s | {len(rows) / bare_s:.2f} | {stack['items_s']:.2f} | {stack['items_s'] * bare_s / len(rows):.2f}x |"
    )
    print(f"| generated tokens/s | {bare_tok_s:.1f} | {stack['tok_s']:.1f} | {stack['tok_s'] / bare_tok_s:.2f}x |")
    print(f"passed {stack['passed']} of {stack['total']} ({stack['errored']} errored)")
    print()
    idle, busy = results["chat_idle"], results["chat_during_eval"]
    print(f"A person's chat reply ({args.chats} each, medians, up to {args.chat_tokens} tokens):")
    print("| | first token (ms) | tokens/s |")
    print("|---|---|---|")
    print(f"| stack idle | {idle['ttft_ms']:.0f} | {idle['tok_s']:.1f} |")
    print(f"| while an eval run goes | {busy['ttft_ms']:.0f} | {busy['tok_s']:.1f} |")
    print(f"(that eval run took {results['stack_with_chats']['seconds']:.1f} s)")
    out = REPO / "bench" / "results" / "evals.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
