"""Feedback into fine-tuning data: the replies people liked, and the answers they wrote instead,
become chat `messages` rows (the conversation up to the reply, ending with the reply or with the
edited answer in its place). The rows are checked and stored by the same code as an uploaded
file (finetuning.datastore: parse, tokenize, stage, save), so a bad row is refused the same way.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from django.db.models import Q, QuerySet
from django.utils import timezone

from finetuning import datastore
from finetuning.datasets import DatasetError
from finetuning.models import Dataset
from inference.models import LanguageModel

from . import branches
from .models import Feedback, Message

FILENAME = "feedback.jsonl"


class NothingToBuild(ValueError):
    """No selected feedback can become a row; the message says why."""


@dataclass
class Built:
    dataset: Dataset
    used: int  # feedback that became rows
    skipped: int  # feedback with neither a thumbs up nor an edited answer
    dropped: list[dict] = field(default_factory=list)  # rows the dataset check refused: {"where", "reason"}
    dropped_count: int = 0


def usable(feedback: QuerySet[Feedback]) -> QuerySet[Feedback]:
    """Feedback that can teach something: a thumbs-up reply, or an edited answer."""
    return feedback.filter(Q(rating=Feedback.Rating.UP) | ~Q(edited_content="")).filter(
        message__role=Message.Role.ASSISTANT
    )


def answer_of(feedback: Feedback) -> str:
    """The answer the row teaches: the edited one when the person wrote one, else the reply."""
    return feedback.edited_content if feedback.edited_content.strip() else feedback.message.content


def row_for(feedback: Feedback) -> list[dict]:
    """The conversation as the model saw it when it wrote the reply (its system prompt, then the
    branch above it: chat.branches.history_before), ending with the answer."""
    return [*branches.history_before(feedback.message), {"role": "assistant", "content": answer_of(feedback)}]


def _tokenizer_model(feedback: Iterable[Feedback]) -> LanguageModel:
    """The model whose tokenizer checks the rows: the one that wrote most of the replies."""
    counts = Counter(f.message.model for f in feedback if f.message.model is not None)
    model = counts.most_common(1)[0][0] if counts else LanguageModel.default()
    if model is None:
        raise NothingToBuild("No model is left to read the rows with: enable a default model first.")
    return model


def build(owner, selected: QuerySet[Feedback], name: str = "") -> Built:
    """Check: the selection has usable feedback. Do: write its rows, check them like an upload,
    and save them as `owner`'s dataset. Raises NothingToBuild or DatasetError (nothing saved)."""
    chosen = list(usable(selected).select_related("message__model", "message__conversation__model").order_by("pk"))
    skipped = selected.count() - len(chosen)
    if not chosen:
        raise NothingToBuild(
            f"None of the {skipped} selected feedback has a thumbs up or an edited answer, so there is nothing to "
            "learn from."
        )
    base = _tokenizer_model(chosen)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / FILENAME
        with path.open("w", encoding="utf-8") as f:
            for feedback in chosen:
                f.write(json.dumps({"messages": row_for(feedback)}, ensure_ascii=False) + "\n")
        analysis = datastore.analyze(path, FILENAME, base, owner.pk)
    rows = f"{analysis.good_rows} row{'' if analysis.good_rows == 1 else 's'}"
    name = name or f"Feedback {timezone.localtime():%Y-%m-%d %H:%M} ({rows})"
    try:
        dataset = datastore.save(owner, analysis.token, name)
    except BaseException:
        datastore.discard(owner.pk, analysis.token)
        raise
    return Built(dataset, analysis.good_rows, skipped, analysis.errors, analysis.error_count)


__all__ = ["Built", "DatasetError", "NothingToBuild", "build", "row_for", "usable"]
