"""Uploaded datasets: check a file row by row, keep the good rows in a staging file until the
person decides, then store them as a dataset (the file and its row, both or neither)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import transaction
from redis.exceptions import RedisError

from inference import streams
from inference.loading import ModelLoadError, tokenizer_of
from inference.models import LanguageModel

from . import datasets, encoding
from .models import Dataset, Job

PREVIEW_ROWS = 5
SHOWN_ERRORS = 20
STAGED_NAME = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Analysis:
    """What the upload page shows: the format, the bad rows, statistics and a time estimate."""

    filename: str
    format: str
    total_rows: int
    good_rows: int
    errors: list[dict]  # the first SHOWN_ERRORS bad rows: {"where", "reason"}
    error_count: int
    stats: dict
    estimate_s: float
    preview: list[list[dict]]
    token: str = ""  # the staging file's name
    base_model: str = ""
    tokens_per_s: float = 0.0
    measured: bool = False
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def staging_dir() -> Path:
    path = Path(settings.FINETUNE_DIR) / "staging"
    path.mkdir(parents=True, exist_ok=True)
    return path


def datasets_dir() -> Path:
    path = Path(settings.FINETUNE_DIR) / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def tokenizer_for(model: LanguageModel):
    try:
        return tokenizer_of(model)
    except ModelLoadError as exc:
        raise datasets.DatasetError(f"Could not read the tokenizer of {model.name}: {exc}") from exc


def context_of(model: LanguageModel, tokenizer) -> int:
    """Longest row in tokens: the model's input limit, or its tokenizer's if smaller."""
    limit = model.max_input_tokens
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 10**7:
        limit = min(limit, tokenizer_limit)
    return limit


def measured_tokens_per_s(model: LanguageModel) -> tuple[float, bool]:
    """Training tokens/s of the last finished job on this base model here, else the setting."""
    last = (
        Job.objects.filter(base_model=model, state=Job.State.SUCCEEDED, tokens_per_s__isnull=False)
        .order_by("-finished_at")
        .first()
    )
    if last is not None:
        return last.tokens_per_s, True
    return settings.FINETUNE_ESTIMATE_TOKENS_PER_S, False


ANALYSIS_LOCK_S = 600  # an analysis that died holding its account's turn frees it after this


def analyze(path: Path, filename: str, base_model: LanguageModel, owner_id: int) -> Analysis:
    """Check the uploaded file; the good rows are staged under a token. Raises DatasetError.
    One analysis per account at a time (the studio page and every API key alike): a second one
    meanwhile is refused (DatasetError.busy), so one account cannot fill the web process with
    parses."""
    lock = f"finetune:analysis:{owner_id}"
    try:
        taken = streams.client().set(lock, "1", nx=True, ex=ANALYSIS_LOCK_S)
    except RedisError:
        taken = True  # Redis briefly away: check the file anyway (the size limits still hold)
        lock = None
    if not taken:
        raise datasets.DatasetError(
            "Another of your uploads is being checked; wait for it to finish, then upload this one.", busy=True
        )
    try:
        return _analyze(path, filename, base_model, owner_id)
    finally:
        if lock is not None:
            with contextlib.suppress(RedisError):
                streams.client().delete(lock)


def _analyze(path: Path, filename: str, base_model: LanguageModel, owner_id: int) -> Analysis:
    parsed = datasets.parse_file(
        path, filename, max_bytes=settings.FINETUNE_MAX_UPLOAD_BYTES, max_rows=settings.FINETUNE_MAX_ROWS
    )
    tokenizer = tokenizer_for(base_model)
    stats, long_rows = encoding.token_stats(
        parsed.rows, tokenizer, parsed.lines, context_of(base_model, tokenizer), where=parsed.places
    )
    too_long = {e.line for e in long_rows}
    kept = [(row, line) for row, line in zip(parsed.rows, parsed.lines, strict=True) if line not in too_long]
    errors = sorted([*parsed.errors, *long_rows], key=lambda e: e.line)
    if not kept:
        raise datasets.DatasetError(
            "No row can be used. " + datasets.describe_errors(errors, limit=5) if errors else "The file has no rows."
        )
    tokens_per_s, measured = measured_tokens_per_s(base_model)
    epochs = 8  # the default; the job page estimates again with the job's own settings
    token = secrets.token_hex(16)
    _write_rows(staging_dir() / f"{owner_id}-{token}.jsonl", [row for row, _ in kept])
    analysis = Analysis(
        filename=filename,
        format=parsed.format,
        total_rows=parsed.total_rows,
        good_rows=len(kept),
        errors=[{"where": e.where, "reason": e.reason} for e in errors[:SHOWN_ERRORS]],
        error_count=len(errors),
        stats=dataclasses.asdict(stats),
        estimate_s=encoding.estimate_seconds(stats.total, epochs, tokens_per_s),
        preview=[row for row, _ in kept[:PREVIEW_ROWS]],
        token=token,
        base_model=base_model.slug,
        tokens_per_s=tokens_per_s,
        measured=measured,
    )
    (staging_dir() / f"{owner_id}-{token}.json").write_text(json.dumps(analysis.as_dict()))
    return analysis


def _write_rows(path: Path, rows: list[list[dict]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for messages in rows:
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def staged(owner_id: int, token: str) -> Analysis | None:
    """A staged upload of this owner, or None (unknown, someone else's, or already saved)."""
    if not STAGED_NAME.match(token or ""):
        return None
    meta = staging_dir() / f"{owner_id}-{token}.json"
    if not meta.is_file() or not meta.with_suffix(".jsonl").is_file():
        return None
    return Analysis(**json.loads(meta.read_text()))


def discard(owner_id: int, token: str) -> None:
    if STAGED_NAME.match(token or ""):
        for suffix in (".json", ".jsonl"):
            (staging_dir() / f"{owner_id}-{token}{suffix}").unlink(missing_ok=True)


def save(owner, token: str, name: str) -> Dataset:
    """Store a staged upload as the owner's dataset: its file moves into place and its row is
    created together; if either fails, neither is left behind."""
    analysis = staged(owner.pk, token)
    if analysis is None:
        raise datasets.DatasetError("This upload is no longer waiting to be saved; upload the file again.")
    name = (name or "").strip()[:200] or Path(analysis.filename).stem[:200] or "dataset"
    source = staging_dir() / f"{owner.pk}-{token}.jsonl"
    digest = file_sha256(source)
    file_name = f"{uuid.uuid4().hex}.jsonl"
    target = datasets_dir() / file_name
    shutil.move(source, target)
    try:
        with transaction.atomic():
            dataset = Dataset.objects.create(
                owner=owner,
                name=name,
                original_filename=analysis.filename[:255],
                format=analysis.format,
                file_name=file_name,
                sha256=digest,
                rows=analysis.good_rows,
                dropped_rows=analysis.total_rows - analysis.good_rows,
                stats={**analysis.stats, "estimate_s": analysis.estimate_s, "tokens_per_s": analysis.tokens_per_s},
                tokenizer_model=LanguageModel.objects.filter(slug=analysis.base_model).first(),
            )
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    discard(owner.pk, token)
    return dataset


def preview(dataset: Dataset, rows: int = PREVIEW_ROWS) -> list[list[dict]]:
    out = []
    with dataset.path.open(encoding="utf-8") as f:
        for line in f:
            if len(out) >= rows:
                break
            out.append(json.loads(line)["messages"])
    return out


def delete(dataset: Dataset) -> None:
    """A dataset no job uses: its row and its file."""
    if dataset.jobs.exists():
        raise datasets.DatasetError("Jobs were trained on this dataset; it is kept for their lineage.")
    path = dataset.path
    with transaction.atomic():
        dataset.delete()
    path.unlink(missing_ok=True)
