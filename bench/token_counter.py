"""Benchmark: how far the chat page's token counter (characters / CHAT_CHARS_PER_TOKEN, plus the
template's tokens) is from the packaged model's real tokenizer, on prose, code and mixed text.

Samples are cut from files in this repository (the README and docs as prose and mixed Markdown
with code blocks, Python and JavaScript sources as code, JSON Lines data), 2,000-character
windows. For each kind: characters per real token (min, median), and the estimate's error with
the shipped ratio (negative: it counted fewer tokens than there are, the unsafe side).

    .venv/bin/python bench/token_counter.py
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

WINDOW = 2000
KINDS = {
    "prose": ["README.md", "docs/deploy.md", "docs/finetuning.md"],
    "mixed Markdown and code": ["docs/api.md", "docs/evals.md", "docs/protocol.md"],
    "code": ["chat/turns.py", "evals/runs.py", "static/chat/chat.js"],
    "JSON Lines": ["finetuning/data/example_lighthouse.jsonl", "finetuning/data/general_probe.jsonl"],
}


def windows(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [text[i : i + WINDOW] for i in range(0, len(text) - WINDOW, WINDOW)]


def main() -> None:
    import django

    django.setup()
    from django.conf import settings
    from transformers import AutoTokenizer

    from inference.loading import install_packaged_model

    folder = install_packaged_model(Path(settings.MODEL_DIR))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ratio = settings.CHAT_CHARS_PER_TOKEN
    print("## The chat page's token counter against the real tokenizer (bench/token_counter.py)\n")
    print(f"Packaged model's tokenizer; {WINDOW}-character windows; the page's ratio {ratio} characters per token.\n")
    print("| text | windows | characters per token: min / median | the estimate's error: worst / median |")
    print("|---|---|---|---|")
    every = []
    for kind, files in KINDS.items():
        ratios, errors = [], []
        for name in files:
            for sample in windows(REPO / name):
                tokens = len(tokenizer(sample, add_special_tokens=False)["input_ids"])
                ratios.append(len(sample) / tokens)
                errors.append((len(sample) / ratio - tokens) / tokens)
        every += ratios
        print(f"| {kind} | {len(ratios)} | {min(ratios):.2f} / {statistics.median(ratios):.2f} | "
              f"{min(errors):+.0%} / {statistics.median(errors):+.0%} |")  # fmt: skip
    print(f"\nThe lowest ratio of all windows: {min(every):.2f} characters per token; the 2nd percentile: "
          f"{statistics.quantiles(every, n=50)[0]:.2f}.")  # fmt: skip


if __name__ == "__main__":
    main()
