"""Benchmark: rendering a streaming reply's Markdown, as the live rendering does.

A reply of about 1,500 characters (paragraphs, a list, a code block) is rendered at every 40
characters it grows, the way `chat/live.py` renders the text so far, first with a converter and a
sanitizer built for every rendering (what `render_markdown` did before it kept one of each per
thread) and then through `render_markdown` itself. Prints the total time of each.

    .venv/bin/python bench/rendering.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

REPLY = (
    "Here is **how** to read a file line by line in Python, with `open` and a loop:\n\n"
    "1. Open the file with a `with` block, so it is closed for you.\n"
    "2. Iterate over the file object: each item is one line.\n"
    "3. Strip the newline if you do not want it.\n\n"
    "```python\nwith open('notes.txt', encoding='utf-8') as handle:\n"
    "    for number, line in enumerate(handle, start=1):\n"
    "        print(number, line.rstrip())\n```\n\n"
    "This reads one line at a time, so even a *very large* file does not fill memory. "
    "See https://docs.python.org/3/tutorial/inputoutput.html for more.\n\n"
) * 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import django

    django.setup()
    from chat import rendering
    from chat.live import completed

    views = [completed(REPLY[:end]) for end in range(40, len(REPLY) + 40, 40)]

    def fresh(text: str) -> str:
        return rendering._cleaner().clean(rendering._markdown().convert(text))

    results = {"a converter and a sanitizer built per rendering": [], "render_markdown (kept per thread)": []}
    for _ in range(args.rounds):
        for times, render in zip(results.values(), (fresh, rendering.render_markdown), strict=True):
            started = time.perf_counter()
            for view in views:
                render(view)
            times.append(time.perf_counter() - started)
    assert all(fresh(v) == rendering.render_markdown(v) for v in views), "the two ways rendered differently"
    print(f"{len(REPLY)} characters rendered at every 40: {len(views)} renderings, {args.rounds} rounds")
    for name, times in results.items():
        print(
            f"- {name}: median {statistics.median(times) * 1000:.0f} ms ({', '.join(f'{t * 1000:.0f}' for t in times)})"
        )


if __name__ == "__main__":
    main()
