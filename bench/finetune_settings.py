"""What a job's settings learn and forget: runs jobs (runner.run, as Celery does) on the example
dataset with the given settings and reports the general-knowledge probe before/after and the
held-out lighthouse questions (finetuning/data/example_lighthouse_heldout.jsonl) after.

    .venv/bin/python bench/finetune_settings.py --probe-items 100 \\
        '{"epochs": 3}' '{"epochs": 8, "learning_rate": 5e-5}'
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.finetune import EXAMPLE, setup

HELD_OUT = EXAMPLE.with_name("example_lighthouse_heldout.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+", help="a job's settings as JSON, e.g. '{\"epochs\": 3}'")
    parser.add_argument("--probe-items", type=int, default=100, help="probe questions (0: all 300)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="finetune-settings-") as tmp:
        setup(Path(tmp))
        import torch
        from django.conf import settings
        from django.contrib.auth import get_user_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from finetuning import datastore, jobs, probe, runner
        from inference.models import LanguageModel

        settings.FINETUNE_PROBE_ITEMS = args.probe_items
        user, _ = get_user_model().objects.get_or_create(username="bench")
        base = LanguageModel.default()
        analysis = datastore.analyze(EXAMPLE, EXAMPLE.name, base, user.pk)
        dataset = datastore.save(user, analysis.token, "example")
        held_out = probe.load_items(HELD_OUT)
        print("| settings | seconds | probe base → tuned (lost) | held-out facts | training tokens/s |")
        print("|---|---|---|---|---|")
        for text in args.settings:
            asked = {**json.loads(text), "validation_split": 0}
            started = time.monotonic()
            job = jobs.create(user, name=text[:100], base_model=base, dataset=dataset, method="lora", asked=asked)
            runner.run(job.pk, "bench")
            job.refresh_from_db()
            if job.result_model is None:
                print(f"| {text} | failed: {job.error} | | | |")
                continue
            seconds = time.monotonic() - started
            result = job.evaluation["comparison"]["probe"]
            folder = Path(settings.MODEL_DIR) / job.result_model.location
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
            learned = probe.run_probe(model, AutoTokenizer.from_pretrained(folder), held_out, max_new_tokens=32)
            print(
                f"| {text} | {seconds:.0f} | {result['base_correct']} → {result['tuned_correct']} ({result['lost']}) "
                f"| {learned.correct}/{learned.total} | {job.tokens_per_s or 0:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
