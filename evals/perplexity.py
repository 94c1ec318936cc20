"""The `perplexity` grader's measure (an extension, evals/graders.py): how likely a run's model
finds the reference answer, given the item's prompt.

For each (prompt messages, reference) it is exp(mean negative log-likelihood) of the reference's
tokens (and the end-of-turn token that closes them) as the assistant's answer to the prompt, in
the model's chat template, with the model's own weights: transformers, in the Celery task that
runs the eval, because the inference service generates text and has no request that scores
one (llama.cpp's server gives the log-probabilities of generated tokens, not of given ones). A
tuned model is its base with its LoRA adapter. Earlier assistant turns of the prompt are context,
not scored. One model is kept at a time, per Celery process, until its run ends (`release`)."""

from __future__ import annotations

import math
import threading

from finetuning.encoding import IGNORE, encode_chat
from finetuning.evaluation import encoded_losses

_lock = threading.Lock()
_held: dict = {}  # {"key": load_version of the row, "model": ..., "tokenizer": ...}
MAX_TOKENS = 4096


def _load(row):
    from finetuning.training import load_base
    from inference.loading import adapter_folder

    base = row.base if row.adapter and row.base_id else row
    model, tokenizer, _device, _bf16 = load_base(base)
    if row.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_folder(row), is_trainable=False)
    model.eval()
    return model, tokenizer


def _model(row):
    key = (row.pk, row.load_version)
    if _held.get("key") != key:
        _held.clear()
        model, tokenizer = _load(row)
        _held.update(key=key, model=model, tokenizer=tokenizer)
    return _held["model"], _held["tokenizer"]


def release() -> None:
    """Drop the model held (its run ended)."""
    with _lock:
        _held.clear()


def last_answer_only(labels: list[int]) -> list[int]:
    """The labels of the last assistant turn alone (the reference); earlier turns are context."""
    end = len(labels)
    while end and labels[end - 1] == IGNORE:
        end -= 1
    start = end
    while start and labels[start - 1] != IGNORE:
        start -= 1
    return [IGNORE] * start + labels[start:end] + [IGNORE] * (len(labels) - end)


def perplexities(row, pairs: list[tuple[list[dict], str]]) -> list[float | str]:
    """The perplexity of each reference after its prompt under the model of `row` (a
    LanguageModel), or a message saying why it could not be measured."""
    with _lock:
        model, tokenizer = _model(row)
        encoded, results = [], []
        for messages, reference in pairs:
            if not reference.strip():
                results.append("the reference is empty: there is nothing to score")
                continue
            input_ids, labels = encode_chat([*messages, {"role": "assistant", "content": reference}], tokenizer)
            if len(input_ids) > MAX_TOKENS:
                results.append(f"the prompt and reference are {len(input_ids)} tokens, over {MAX_TOKENS}")
                continue
            encoded.append({"input_ids": input_ids, "labels": last_answer_only(labels)})
            results.append(len(encoded) - 1)
        losses = encoded_losses(model, tokenizer.pad_token_id, encoded) if encoded else []
    return [
        r if isinstance(r, str) else math.exp(min(losses[r][0] / losses[r][1], 700)) if losses[r][1] else "no tokens"
        for r in results
    ]
