"""The general-knowledge probe: a few hundred short questions with known answers, asked before
and after fine-tuning (finetuning/evaluation.py) to see what a tuned model forgot.

An answer is correct when it contains one of the item's accepted answers, after both are
normalized (NFKC, lower case, single spaces). Numbers, number words and very short words must
stand alone, so "4" does not match "14" and "four" does not match "fourteen".
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from inference.prompts import apply_template

DATA_DIR = Path(__file__).resolve().parent / "data"
GENERAL_PROBE = DATA_DIR / "general_probe.jsonl"

SHORT_ANSWER = 3  # answers this long or shorter must be a whole word
NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred".split()
)


@dataclass
class ProbeItem:
    question: str
    answers: list[str]  # lower-case; any one of them, found in the reply, counts as correct


@dataclass
class ProbeResult:
    correct: int
    total: int
    share: float
    answers: list[dict]  # {"question", "answer", "correct"} per item, in order


def load_items(path: Path | None = None, limit: int | None = None) -> list[ProbeItem]:
    """The items of a probe file (the general probe by default); the first `limit` of them."""
    items = []
    with Path(path or GENERAL_PROBE).open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                items.append(ProbeItem(question=row["question"], answers=list(row["answers"])))
    return items[:limit] if limit else items


def normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _pattern(answer: str) -> str:
    escaped = re.escape(answer)
    if re.fullmatch(r"\d+(\.\d+)?", answer):  # "4" not in "14" nor "4.5"; "4." ends a sentence
        return rf"(?<!\w)(?<!\d\.){escaped}(?!\w|\.\d)"
    if answer in NUMBER_WORDS:  # "four" not in "fourteen" nor "twenty-four"
        return rf"(?<![\w-]){escaped}(?!\w)"
    if len(answer) <= SHORT_ANSWER:
        return rf"(?<!\w){escaped}(?!\w)"
    return escaped


def is_correct(answer: str, item: ProbeItem) -> bool:
    text = normalize(answer)
    return any(re.search(_pattern(normalize(accepted)), text) for accepted in item.answers if accepted.strip())


def answer_all(model, tokenizer, questions: list[str], *, batch_size: int = 16, max_new_tokens: int = 24,
               progress=None) -> list[str]:  # fmt: skip
    """Greedy replies to `questions`, each asked alone with the model's chat template, in batches
    padded on the left so every prompt ends where generation starts. `progress(done, total)` is
    called after each batch."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    model.eval()
    replies = []
    with torch.inference_mode():
        for start in range(0, len(questions), batch_size):
            prompts = [
                apply_template(tokenizer, [{"role": "user", "content": q}])
                for q in questions[start : start + batch_size]
            ]
            longest = max(len(ids) for ids in prompts)
            input_ids = torch.tensor([[pad_id] * (longest - len(ids)) + ids for ids in prompts], device=device)
            attention_mask = torch.tensor(
                [[0] * (longest - len(ids)) + [1] * len(ids) for ids in prompts], device=device
            )
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
            for row in output[:, longest:]:
                replies.append(tokenizer.decode(row, skip_special_tokens=True).strip())
            if progress is not None:
                progress(len(replies), len(questions))
    return replies


def run_probe(model, tokenizer, items: list[ProbeItem], **kw) -> ProbeResult:
    """Ask every item's question (`kw` goes to answer_all) and score the replies."""
    replies = answer_all(model, tokenizer, [item.question for item in items], **kw)
    answers = [
        {"question": item.question, "answer": reply, "correct": is_correct(reply, item)}
        for item, reply in zip(items, replies, strict=True)
    ]
    correct = sum(a["correct"] for a in answers)
    return ProbeResult(correct=correct, total=len(items), share=correct / len(items) if items else 0.0, answers=answers)


def forgetting(base: ProbeResult, tuned: ProbeResult) -> dict:
    """What the tuned model lost (and gained) against the base model, question by question."""
    base_right = {a["question"] for a in base.answers if a["correct"]}
    tuned_right = {a["question"] for a in tuned.answers if a["correct"]}
    lost = len(base_right - tuned_right)
    return {
        "base_share": base.share,
        "tuned_share": tuned.share,
        "lost": lost,
        "lost_share": lost / max(base.correct, 1),
        "gained": len(tuned_right - base_right),
    }
