"""Benchmark: a fine-tuning job's training tokens/s against a plain reference script (transformers
Trainer + peft, the same settings, data and dtype, no job around it), in the same run, on the
default model and the example dataset; then the whole default job (evaluation included).

    .venv/bin/python bench/finetune.py [--epochs 2] [--full-job]

Runs the job in this process (the same code the Celery task runs) on a throw-away SQLite
database and FINETUNE_DIR under a temporary folder. Prints a Markdown report for
docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
EXAMPLE = REPO / "finetuning" / "data" / "example_lighthouse.jsonl"


def setup(tmp: Path) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "chatsite.settings"
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ["FINETUNE_DIR"] = str(tmp / "finetuning")
    os.environ.setdefault("MODEL_DIR", str(REPO / "var" / "models"))
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("installdefaultmodel", verbosity=0)


def _bf16() -> bool:
    import torch

    from inference.loading import choose_dtype

    return choose_dtype("auto", "cpu") == torch.bfloat16


def reference(rows: list, epochs: int, tmp: Path) -> dict:
    """Plain Trainer + peft: LoRA r=16 on all linear layers, lr 2e-4, batch 8, the job's dtype rule."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from finetuning.training import collate, encode_rows, load_base
    from inference.models import LanguageModel

    model, tokenizer, device, bf16 = load_base(LanguageModel.default())
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    args = TrainingArguments(
        output_dir=str(tmp / "reference"),
        num_train_epochs=epochs,
        per_device_train_batch_size=8,
        learning_rate=2e-4,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="no",
        bf16=bf16,
        use_cpu=device == "cpu",
        report_to=[],
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encode_rows(rows, tokenizer),
        data_collator=collate(tokenizer.pad_token_id),
    )
    result = trainer.train()
    runtime = result.metrics["train_runtime"]
    return {"tokens_per_s": trainer.state.num_input_tokens_seen / runtime, "runtime_s": runtime}


def job(epochs: int, probe_items: int) -> dict:
    """The real job (runner.run, as the Celery task calls it) with no validation split, so it
    trains on the same rows as the reference."""
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from finetuning import datastore, jobs, runner
    from finetuning.models import Job
    from inference.models import LanguageModel

    settings.FINETUNE_PROBE_ITEMS = probe_items
    user, _ = get_user_model().objects.get_or_create(username="bench")
    base = LanguageModel.default()
    analysis = datastore.analyze(EXAMPLE, EXAMPLE.name, base, user.pk)
    dataset = datastore.save(user, analysis.token, "example")
    created = jobs.create(
        user,
        name=f"bench {epochs} epochs",
        base_model=base,
        dataset=dataset,
        method="lora",
        asked={"epochs": epochs, "validation_split": 0},
    )
    started = time.monotonic()
    state = runner.run(created.pk, worker="bench")
    wall = time.monotonic() - started
    done = Job.objects.get(pk=created.pk)
    assert state == Job.State.SUCCEEDED, (state, done.error)
    return {"tokens_per_s": done.tokens_per_s, "wall_s": wall, "evaluation": done.evaluation.get("comparison", {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the speed comparison")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of job and reference")
    parser.add_argument("--full-job", action="store_true", help="also run the default 8-epoch job with the full probe")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="finetune-bench-") as tmp_name:
        tmp = Path(tmp_name)
        setup(tmp)
        from finetuning import datasets

        parsed = datasets.parse_file(EXAMPLE, EXAMPLE.name, max_bytes=10**8)
        rows = parsed.rows
        # Alternating rounds: this VM's speed drifts by 10 % or more within minutes.
        ours_runs, ref_runs = [], []
        for round_ in range(args.rounds):
            ours_runs.append(job(args.epochs, probe_items=4)["tokens_per_s"])
            ref_runs.append(reference(rows, args.epochs, tmp / f"round-{round_}")["tokens_per_s"])
        ratio = statistics.median(ours_runs) / statistics.median(ref_runs)
        print(f"## Fine-tuning speed: {platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
        print()
        print(f"Default model, example dataset ({len(rows)} rows), LoRA r=16 all linear, batch 8, {args.epochs} epochs, "
              f"{'bf16 autocast' if _bf16() else 'float32'}; {args.rounds} alternating rounds.")  # fmt: skip
        print()
        print("| | training tokens/s per round | median |")
        print("|---|---|---|")
        print(
            f"| plain Trainer + peft | {', '.join(f'{r:.0f}' for r in ref_runs)} | {statistics.median(ref_runs):.0f} |"
        )
        print(
            f"| the job (runner.run) | {', '.join(f'{r:.0f}' for r in ours_runs)} | {statistics.median(ours_runs):.0f} |"
        )
        print(f"| ratio | | {ratio:.2f} |")
        if args.full_job:
            full = job(8, probe_items=0)
            comparison = full["evaluation"]
            probe = comparison.get("probe", {})
            print()
            print(f"Whole default job (8 epochs, full probe, evaluation, export): {full['wall_s']:.0f} s, "
                  f"{full['tokens_per_s']:.0f} training tokens/s; probe {probe.get('base_correct')}→"
                  f"{probe.get('tuned_correct')} of {probe.get('total')} (lost {probe.get('lost')}).")  # fmt: skip
            for sample in comparison.get("samples", []):
                print(f"- {sample['prompt']!r}: base {sample['base']!r} → tuned {sample['tuned']!r}")


if __name__ == "__main__":
    main()
