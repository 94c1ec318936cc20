"""Training one job: transformers' Trainer with a peft LoRA adapter on all linear layers (or all
weights), loss only on the assistants' tokens (finetuning/encoding.py), the base model's chat
template. Progress, cancel and the worker's heartbeat go through `Reporter`, a Trainer callback;
checkpoints go to the job's folder so a restarted worker resumes from the last one."""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from inference.loading import ModelSpec, choose_device, choose_dtype, resolve_location

from . import hyperparameters
from .encoding import encode_chat
from .models import Job, JobMetric

logger = logging.getLogger(__name__)


class JobCancelled(Exception):
    pass


def read_rows(path: Path) -> list[list[dict]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


def split_rows(rows: list, validation_split: float, seed: int) -> tuple[list, list]:
    """A fixed shuffle (by the job's seed), then the held-out rows; the same on every resume."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    train_n, _ = hyperparameters.split_sizes(len(rows), validation_split)
    return [rows[i] for i in order[:train_n]], [rows[i] for i in order[train_n:]]


def encode_rows(rows: list[list[dict]], tokenizer) -> list[dict]:
    encoded = []
    for messages in rows:
        input_ids, labels = encode_chat(messages, tokenizer)
        encoded.append({"input_ids": input_ids, "labels": labels})
    return encoded


def collate(pad_id: int):
    import torch

    def collate_batch(features: list[dict]) -> dict:
        longest = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            pad = longest - len(f["input_ids"])
            ids.append(f["input_ids"] + [pad_id] * pad)
            labels.append(f["labels"] + [-100] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}

    return collate_batch


def load_base(base_row):
    """(model, tokenizer, device, bf16) of a job's base model, in float32 for training."""
    import torch
    from transformers import AutoModelForCausalLM

    from inference.loading import load_tokenizer

    spec = ModelSpec.of(base_row)
    location = resolve_location(spec, settings.MODEL_DIR)
    tokenizer = load_tokenizer(spec, settings.MODEL_DIR)
    if (Path(location) / "config.json").exists() or spec.source == "hub":
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=torch.float32, use_safetensors=True, trust_remote_code=False
        )
    else:  # a local folder with only a GGUF file: de-quantized by transformers
        model = AutoModelForCausalLM.from_pretrained(location, gguf_file=spec.gguf_file, dtype=torch.float32)
    device = choose_device(spec.device)
    model.to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # bf16 autocast where the machine computes bf16 faster (measured), fp32 otherwise.
    bf16 = choose_dtype("auto", device) == torch.bfloat16
    return model, tokenizer, device, bf16


@dataclass
class Outcome:
    cancelled: bool
    model: object = None  # the trained model (peft-wrapped for LoRA)
    train_runtime_s: float = 0.0
    tokens_per_s: float | None = None


def _reporter_class():
    from transformers import TrainerCallback

    class Reporter(TrainerCallback):
        """Progress rows for the job page, the worker's heartbeat, and cooperative cancel."""

        def __init__(self, job: Job) -> None:
            self.job = job
            self.cancelled = False
            self.started = time.monotonic()
            self.start_step = None
            self.last = (time.monotonic(), 0)  # (time, input tokens seen) at the previous log

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_step = state.global_step
            Job.objects.filter(pk=self.job.pk).update(total_steps=state.max_steps, heartbeat_at=timezone.now())

        def on_step_end(self, args, state, control, **kwargs):
            now = timezone.now()
            Job.objects.filter(pk=self.job.pk).update(step=state.global_step, epoch=state.epoch or 0, heartbeat_at=now)
            if Job.objects.filter(pk=self.job.pk, cancel_requested=True).exists():
                self.cancelled = True
                control.should_training_stop = True
                control.should_save = False

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if not any(key in logs for key in ("loss", "eval_loss")):
                return
            now = time.monotonic()
            seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
            tokens_per_s = None
            if "loss" in logs and now > self.last[0] and seen > self.last[1]:
                tokens_per_s = (seen - self.last[1]) / (now - self.last[0])
                self.last = (now, seen)
            done = state.global_step - (self.start_step or 0)
            eta = (now - self.started) / done * (state.max_steps - state.global_step) if done > 0 else None
            JobMetric.objects.create(
                job=self.job,
                step=state.global_step,
                epoch=state.epoch or 0,
                loss=logs.get("loss"),
                eval_loss=logs.get("eval_loss"),
                learning_rate=logs.get("learning_rate"),
                tokens_per_s=tokens_per_s,
            )
            update = {"eta_s": eta, "heartbeat_at": timezone.now()}
            if tokens_per_s is not None:
                update["tokens_per_s"] = tokens_per_s
            Job.objects.filter(pk=self.job.pk).update(**update)

        def on_save(self, args, state, control, **kwargs):
            self.job.log(f"Checkpoint saved at step {state.global_step}.")

    return Reporter


def last_complete_checkpoint(job: Job, folder: Path) -> str | None:
    """The newest checkpoint that was written to the end (the Trainer writes trainer_state.json
    last); a worker killed while saving leaves a partial one, which is removed."""
    if not folder.is_dir():
        return None
    found = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    for path in sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            job.log(f"{path.name} was cut off while saving (the worker stopped); it is removed.", level="warning")
            shutil.rmtree(path, ignore_errors=True)
    return None


def train(job: Job, model, tokenizer, train_rows: list, eval_rows: list, device: str, bf16: bool) -> Outcome:
    """Run (or resume) the job's training; returns the trained model unless cancelled."""
    from transformers import Trainer, TrainingArguments

    hp = job.hyperparameters
    if job.method == Job.Method.LORA:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=hp["lora_rank"],
            lora_alpha=2 * hp["lora_rank"],
            lora_dropout=0.05,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    model.train()
    checkpoints = job.work_dir / "checkpoints"
    args = TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=hp["epochs"],
        per_device_train_batch_size=hp["batch_size"],
        per_device_eval_batch_size=hp["batch_size"],
        learning_rate=hp["learning_rate"],
        lr_scheduler_type="linear",
        warmup_steps=0,
        logging_steps=1,
        eval_strategy="epoch" if eval_rows else "no",
        save_strategy="steps",
        save_steps=settings.FINETUNE_CHECKPOINT_STEPS,
        save_total_limit=2,
        seed=hp["seed"],
        data_seed=hp["seed"],
        bf16=bf16,
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        report_to=[],
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
    )
    reporter = _reporter_class()(job)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encode_rows(train_rows, tokenizer),
        eval_dataset=encode_rows(eval_rows, tokenizer) if eval_rows else None,
        data_collator=collate(tokenizer.pad_token_id),
        callbacks=[reporter],
    )
    last = last_complete_checkpoint(job, checkpoints)
    if last:
        # Steps after the checkpoint are trained again: their rows are replaced, not doubled.
        JobMetric.objects.filter(job=job, step__gt=int(Path(last).name.rsplit("-", 1)[-1])).delete()
        job.log(f"Resuming from {Path(last).name}.")
    import torch

    with torch.enable_grad():  # whatever grad mode this thread was left in
        result = trainer.train(resume_from_checkpoint=last)
    metrics = result.metrics or {}
    runtime = float(metrics.get("train_runtime", 0.0))
    seen = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    model.eval()
    return Outcome(
        cancelled=reporter.cancelled,
        model=model,
        train_runtime_s=runtime,
        tokens_per_s=(seen / runtime) if runtime else None,
    )
