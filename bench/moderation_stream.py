"""Benchmark: the moderation output filter over one long streamed reply.

The inference worker asks `OutputFilter.view` at every flush with the whole reply so far. This
feeds a 20,000-character reply 5 characters at a time under two output rules (a keyword mask
and a regex mask) to one filter, as the worker does, and, for comparison, to a fresh filter at
each step (which normalizes and scans the whole text every time, as the filter did before it
kept what was decided), and prints both times.

    .venv/bin/python bench/moderation_stream.py [--chars 20000] [--step 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

SENTENCE = "The LIGHTHOUSE  keeper of Saltglass (ﬁne café, 123-45-6789) waved. "


def rules():
    from moderation.matching import RuleSet

    def rule(pk, kind, pattern, replacement):
        return SimpleNamespace(
            pk=pk,
            name=f"rule {pk}",
            kind=kind,
            pattern=pattern,
            action="mask",
            applies_to="output",
            category="",
            replacement=replacement,
        )

    return RuleSet(
        [rule(1, "keyword", "lighthouse keeper", "***"), rule(2, "regex", r"\b\d{3}-\d{2}-\d{4}\b", "[number]")],
        window=64,
    )


def run(text: str, step: int, fresh_each_view: bool) -> tuple[float, str]:
    from moderation.streaming import OutputFilter

    ruleset = rules()
    kept = OutputFilter(ruleset)
    started = time.perf_counter()
    for end in range(step, len(text) + step, step):
        view = OutputFilter(ruleset) if fresh_each_view else kept
        view.view(text[:end], min(end, len(text)), False)
    shown, _blocked = kept.view(text, len(text), True)
    return time.perf_counter() - started, shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, default=20_000)
    parser.add_argument("--step", type=int, default=5)
    args = parser.parse_args()
    import django

    django.setup()
    text = (SENTENCE * (args.chars // len(SENTENCE) + 1))[: args.chars]
    incremental, shown = run(text, args.step, fresh_each_view=False)
    whole, _ = run(text, args.step, fresh_each_view=True)
    print(f"{args.chars} characters, a view every {args.step}: {args.chars // args.step} views")
    print(f"one filter, as the worker uses it: {incremental:.2f} s")
    print(f"a fresh filter at each view (the whole text every time): {whole:.2f} s")
    print(f"masked occurrences in the final text: {shown.count('***')} keyword, {shown.count('[number]')} regex")


if __name__ == "__main__":
    main()
