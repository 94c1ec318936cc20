"""What a job learned and what it forgot: validation loss and perplexity, sample answers to
held-out prompts, and the general-knowledge probe (finetuning/probe.py), measured on the base
model before training and on the tuned model after, by the same code."""

from __future__ import annotations

import hashlib
import json
import math
import time

from django.conf import settings

from . import probe
from .models import BaseProbe
from .training import collate, encode_rows

SAMPLES = 5


def row_losses(model, tokenizer, rows: list[list[dict]], batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed loss, trained tokens) of each row: the negative log-likelihood of its assistant
    tokens under the model, in its chat template (training.encode_chat)."""
    return encoded_losses(model, tokenizer.pad_token_id, encode_rows(rows, tokenizer), batch_size)


def encoded_losses(model, pad_id: int, encoded: list[dict], batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed loss, labelled tokens) of each encoded row ({"input_ids", "labels"}, -100 unlabelled)."""
    import torch

    collate_batch = collate(pad_id)
    device = next(model.parameters()).device
    measured = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            batch = {k: v.to(device) for k, v in collate_batch(encoded[start : start + batch_size]).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            shifted = batch["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), shifted, ignore_index=-100, reduction="none"
            )
            measured += [
                (float(row_loss), int(count))
                for row_loss, count in zip(losses.sum(dim=1), (shifted != -100).sum(dim=1), strict=True)
            ]
    return measured


def mean_loss(model, tokenizer, rows: list[list[dict]], batch_size: int = 8) -> float | None:
    """Mean loss per trained (assistant) token over `rows`; None without rows."""
    if not rows:
        return None
    measured = row_losses(model, tokenizer, rows, batch_size)
    tokens = sum(count for _, count in measured)
    return sum(loss for loss, _ in measured) / tokens if tokens else None


def sample_prompts(rows: list[list[dict]]) -> list[str]:
    """The last user message of the first held-out rows (their context is not replayed)."""
    prompts = []
    for messages in rows[:SAMPLES]:
        users = [m["content"] for m in messages if m["role"] == "user"]
        if users:
            prompts.append(users[-1])
    return prompts


def probe_items():
    return probe.load_items(limit=settings.FINETUNE_PROBE_ITEMS or None)


def run_probe(model, tokenizer, progress=None) -> dict:
    """The general-knowledge probe's result as stored: {"correct", "total", "share", "answers"}."""
    result = probe.run_probe(model, tokenizer, probe_items(), progress=progress)
    return {"correct": result.correct, "total": result.total, "share": result.share, "answers": result.answers}


def probe_key(row) -> str:
    """What a base model's probe result depends on: the model's version and the probe's items."""
    items = [(item.question, item.answers) for item in probe_items()]
    return hashlib.sha256(json.dumps([row.pk, list(map(str, row.load_version)), items]).encode()).hexdigest()


def base_probe(row, model, tokenizer, progress=None) -> tuple[dict, bool]:
    """(the probe result of base model `row`, whether it was measured before): measured once per
    model version and reused by every job on that base."""
    key = probe_key(row)
    cached = BaseProbe.objects.filter(model=row, key=key).first()
    if cached is not None:
        return cached.result, True
    started = time.monotonic()
    result = run_probe(model, tokenizer, progress)
    BaseProbe.objects.get_or_create(
        model=row, key=key, defaults={"result": result, "seconds": time.monotonic() - started}
    )
    return result, False


def measure(model, tokenizer, eval_rows: list[list[dict]], prompts: list[str], *, probe_result: dict | None = None,
            progress=None) -> dict:  # fmt: skip
    """One model's numbers; the same dict for the base and the tuned model. `probe_result`: the
    probe measured already (a base model's, `base_probe`); else it is run, `progress(done,
    total)` called as its questions are answered."""
    loss = mean_loss(model, tokenizer, eval_rows)
    answers = probe.answer_all(model, tokenizer, prompts, max_new_tokens=64) if prompts else []
    return {
        "eval_loss": loss,
        "perplexity": math.exp(loss) if loss is not None and loss < 50 else None,
        "samples": answers,
        "probe": probe_result if probe_result is not None else run_probe(model, tokenizer, progress),
    }


def compare(base: dict, tuned: dict, prompts: list[str]) -> dict:
    """Base vs tuned: the loss change, the probe's forgetting, and answers side by side."""
    base_probe, tuned_probe = base["probe"], tuned["probe"]
    base_right = {a["question"] for a in base_probe["answers"] if a["correct"]}
    tuned_right = {a["question"] for a in tuned_probe["answers"] if a["correct"]}
    lost = sorted(base_right - tuned_right)
    lost_share = len(lost) / max(len(base_right), 1)
    return {
        "eval_loss": {"base": base["eval_loss"], "tuned": tuned["eval_loss"]},
        "perplexity": {"base": base["perplexity"], "tuned": tuned["perplexity"]},
        "probe": {
            "total": tuned_probe["total"],
            "base_correct": base_probe["correct"],
            "tuned_correct": tuned_probe["correct"],
            "lost": len(lost),
            "gained": len(tuned_right - base_right),
            "lost_share": lost_share,
            "lost_examples": lost[:10],
        },
        "forgot_too_much": lost_share > settings.FINETUNE_FORGET_LIMIT,
        "samples": [
            {"prompt": p, "base": b, "tuned": t}
            for p, b, t in zip(prompts, base["samples"], tuned["samples"], strict=False)
        ],
    }
