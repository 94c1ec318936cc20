"""Files of purpose `evals` (OpenAI's `client.files.create(..., purpose="evals")`), the items of a
run's `file_id` source.

A file is JSON Lines: each line `{"item": {...}}`, optionally with `"sample": {"output_text": ...}`
(a `jsonl` run grades that answer), or a bare object taken as the item. It is checked line by
line as a fine-tuning upload is: a file with bad lines is refused whole, naming the first ones;
within the same size limit (FINETUNE_MAX_UPLOAD_BYTES) and at most EVALS_MAX_ITEMS rows; nothing
is kept from a refused file. What is stored is the normalized rows (`{"item", "sample"?}` per
line), as a Dataset row of purpose `evals` (one id space with the fine-tuning files, `file-<id>`),
which training refuses. Each item is checked against an eval's schema when a run uses the file."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from django.conf import settings
from django.db import transaction

from finetuning.datastore import datasets_dir, file_sha256
from finetuning.models import Dataset

from .errors import EvalError

SHOWN_ERRORS = 5
EXAMPLE = '{"item": {"question": "Capital of France?", "answer": "Paris"}}'


def parse_line(line: str) -> dict:
    """One line as a row `{"item": {...}, "sample"?: {...}}`; raises ValueError saying why not."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} (column {exc.colno})") from exc
    if isinstance(row, dict) and isinstance(row.get("item"), dict) and set(row) <= {"item", "sample"}:
        sample = row.get("sample")
        if sample is not None and (not isinstance(sample, dict) or not isinstance(sample.get("output_text"), str)):
            raise ValueError('"sample" must be {"output_text": "..."}')
        item = row["item"]
    else:
        item, sample = row, None
    if not isinstance(item, dict) or not item:
        raise ValueError(f"it must be a JSON object of the item's fields, such as {EXAMPLE}")
    return {"item": item} if sample is None else {"item": item, "sample": sample}


def read_upload(path: Path) -> list[dict]:
    """The rows of an uploaded file, or EvalError naming its first bad lines (see the module)."""
    rows, errors, count = [], [], 0
    try:
        with path.open(encoding="utf-8-sig") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                count += 1
                if count > settings.EVALS_MAX_ITEMS:
                    raise EvalError(f"The file has more than {settings.EVALS_MAX_ITEMS} rows, the most a run takes: "
                                    "split it.", "file")  # fmt: skip
                try:
                    rows.append(parse_line(line))
                except ValueError as exc:
                    errors.append(f"line {number}: {exc}")
    except UnicodeDecodeError as exc:
        raise EvalError("The file is not UTF-8 text: save it as UTF-8 JSON Lines.", "file") from exc
    if errors:
        more = f" (and {len(errors) - SHOWN_ERRORS} more)" if len(errors) > SHOWN_ERRORS else ""
        raise EvalError(f"{len(errors)} of {count} rows cannot be used. {'; '.join(errors[:SHOWN_ERRORS])}{more}. "
                        "Fix or remove them and upload the file again.", "file")  # fmt: skip
    if not rows:
        raise EvalError(f"The file has no rows: give one JSON object per line, such as {EXAMPLE}.", "file")
    return rows


def store(user, path: Path, filename: str) -> Dataset:
    """Check an uploaded file and keep it as the user's evals file (all or nothing)."""
    rows = read_upload(path)
    file_name = f"{uuid.uuid4().hex}.jsonl"
    target = datasets_dir() / file_name
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, target)
    try:
        with transaction.atomic():
            return Dataset.objects.create(
                owner=user, name=Path(filename).stem[:200] or "evals", original_filename=filename[:255],
                format="jsonl", file_name=file_name, sha256=file_sha256(target), rows=len(rows),
                purpose=Dataset.Purpose.EVALS,
            )  # fmt: skip
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def content(dataset: Dataset) -> list[dict]:
    """The stored rows of an evals file."""
    with dataset.path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
