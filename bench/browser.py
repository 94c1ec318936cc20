"""What a person sees in the browser: time to first token and tokens/s of the default model,
measured inside a real chromium page against the real stack.

    .venv/bin/python bench/browser.py [--runs 3]

The page records, with performance.now(), the click on Send, the first text of the reply and the
moment its status leaves "generating"; tokens come from the stored reply. Needs Debian's chromium.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

PROMPT = "Write a long story about a dragon who learns to read."

WATCH = """(id) => new Promise((resolve) => {
  const el = document.querySelector(`[data-testid="message"][data-message-id="${id}"]`);
  const body = el.querySelector('[data-testid="message-body"]');
  let first = body.textContent.length ? performance.now() : null;
  const check = () => {
    if (first === null && body.textContent.length) first = performance.now();
    const status = el.getAttribute("data-status");
    if (status !== "queued" && status !== "generating") {
      observer.disconnect();
      resolve({first, done: performance.now(), status, chars: body.textContent.length});
    }
  };
  const observer = new MutationObserver(check);
  observer.observe(el, {subtree: true, childList: true, characterData: true, attributes: true});
  check();
})"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")

    from playwright.sync_api import sync_playwright

    from tests.live_client import stored_messages
    from tests.stack import LiveStack

    results = []
    with tempfile.TemporaryDirectory(prefix="chat-bench-browser-") as tmp:
        stack = LiveStack(Path(tmp), workers=1, extra_env={"CHAT_RATE_LIMIT": "0", "LOG_LEVEL": "WARNING"})
        stack.start()
        try:
            stack.create_user("bench", "bench-password-123")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
                )
                page = browser.new_context(base_url=stack.url).new_page()
                page.goto("/")
                page.get_by_test_id("login-username").fill("bench")
                page.get_by_test_id("login-password").fill("bench-password-123")
                page.get_by_test_id("login-submit").click()
                page.get_by_test_id("composer-input").wait_for()
                for run in range(args.runs + 1):  # the first run warms up
                    page.goto("/")
                    page.locator('[data-testid="connection-status"][data-state="open"]').wait_for(state="attached")
                    page.get_by_test_id("settings-toggle").click()
                    page.get_by_test_id("temperature").fill("0")
                    page.get_by_test_id("max-tokens").fill(str(args.tokens))
                    page.get_by_test_id("settings-toggle").click()
                    page.get_by_test_id("composer-input").fill(PROMPT)
                    sent = page.evaluate("performance.now()")
                    page.get_by_test_id("send").click()
                    reply = page.locator('[data-testid="message"][data-role="assistant"]').last
                    reply.and_(page.locator("[data-message-id]")).wait_for()
                    message_id = reply.get_attribute("data-message-id")
                    while not message_id or not message_id.isdigit():
                        message_id = reply.get_attribute("data-message-id")
                    seen = page.evaluate(WATCH, int(message_id))
                    if run:
                        results.append((int(message_id), sent, seen))
                browser.close()
            stored = stored_messages(stack, [r[0] for r in results])
        finally:
            stack.stop()

    rows = []
    for message_id, sent, seen in results:
        tokens = stored[message_id]["completion_tokens"]
        rows.append(
            {
                "ttft_ms": seen["first"] - sent,
                "tok_s": tokens / ((seen["done"] - sent) / 1000),
                "decode_tok_s": (tokens - 1) / ((seen["done"] - seen["first"]) / 1000),
                "tokens": tokens,
            }
        )
    print(f"\n## In the browser: default model, {args.runs} runs, up to {args.tokens} tokens, greedy\n")
    print("| run | first token (ms) | tokens | tokens/s (from Send) | tokens/s (after first token) |")
    print("|---|---|---|---|---|")
    for i, row in enumerate(rows, 1):
        print(f"| {i} | {row['ttft_ms']:.0f} | {row['tokens']} | {row['tok_s']:.1f} | {row['decode_tok_s']:.1f} |")
    print(
        f"| median | {statistics.median(r['ttft_ms'] for r in rows):.0f} | | "
        f"{statistics.median(r['tok_s'] for r in rows):.1f} | {statistics.median(r['decode_tok_s'] for r in rows):.1f} |"
    )


if __name__ == "__main__":
    main()
