"""Reading an uploaded dataset file from disk, row by row, within limits: every problem is a
whole-file `DatasetError` or a `RowError` with where it is and why, never an exception a person
cannot act on. Rows come out as chat messages (finetuning/formats.py)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import formats

KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}
MAGIC = {b"PK\x03\x04": "a zip archive", b"\x1f\x8b": "a gzip file", b"BZh": "a bzip2 file", b"\xfd7zXZ": "an xz file"}
BOM = b"\xef\xbb\xbf"


class DatasetError(ValueError):
    """The whole file cannot be used; the message says why and what to do."""


@dataclass
class RowError:
    line: int
    reason: str
    where: str = ""

    def __post_init__(self) -> None:
        self.where = self.where or f"line {self.line}"


@dataclass
class ParsedDataset:
    format: str
    rows: list[list[dict]]  # each row as chat messages
    lines: list[int]  # where each kept row starts (line, or item number of a JSON array)
    places: list[str] = field(default_factory=list)  # the same, for messages: "line 3", "item 3"
    errors: list[RowError] = field(default_factory=list)
    total_rows: int = 0


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _loads(text: str):
    """json.loads that refuses NaN/Infinity and reports a number with thousands of digits."""
    return json.loads(text, parse_constant=_refuse_constant)


def _json_problem(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc.msg} (column {exc.colno})"
    text = str(exc)
    if "digits" in text:  # int max str digits
        return "a number with too many digits (over 4300)"
    if "JSON allows" in text:
        return text
    return f"invalid JSON: {text}"


def parse_file(
    path: Path, filename: str, *, max_bytes: int, max_line_bytes: int = 1_000_000, max_rows: int = 100_000
) -> ParsedDataset:
    suffix = Path(filename).suffix.lower()
    kind = KINDS.get(suffix)
    if kind is None:
        raise DatasetError(f"Unsupported file type {suffix or '(none)'!r}: upload a .jsonl, .json or .csv file.")
    size = path.stat().st_size
    if size > max_bytes:
        raise DatasetError(f"The file is {_size(size)}; the limit is {_size(max_bytes)}. Split it or remove rows.")
    with path.open("rb") as f:
        head = f.read(8192)
    if head.startswith(BOM):
        head = head[len(BOM) :]
    if not head.strip():
        raise DatasetError("The file is empty.")
    for magic, what in MAGIC.items():
        if head.startswith(magic):
            raise DatasetError(f"This is {what}, not text. Upload the uncompressed .jsonl, .json or .csv file itself.")
    if b"\x00" in head:
        raise DatasetError("This looks like a binary file, not text. Upload a .jsonl, .json or .csv file.")
    if kind == "json":
        try:
            raw, errors = _read_json(path, max_rows)
        except _JsonLines:  # JSON Lines saved as .json
            raw, errors = _read_jsonl(path, max_line_bytes, max_rows)
    elif kind == "jsonl":
        raw, errors = _read_jsonl(path, max_line_bytes, max_rows)
    else:
        raw, errors = _read_csv(path, max_line_bytes, max_rows)
    return _to_rows(raw, errors)


class _JsonLines(Exception):
    pass


def _read_jsonl(path: Path, max_line_bytes: int, max_rows: int) -> tuple[list, list[RowError]]:
    raw, errors = [], []
    with path.open("rb") as f:
        number = 0
        while True:
            line = f.readline(max_line_bytes + 1)
            if not line:
                break
            number += 1
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                length = len(line)
                while line and not line.endswith(b"\n"):  # skip the rest without keeping it
                    line = f.readline(1 << 20)
                    length += len(line)
                errors.append(RowError(number, f"the line is {length} bytes, over the {max_line_bytes}-byte limit"))
                continue
            if number == 1 and line.startswith(BOM):
                line = line[len(BOM) :]
            if not line.strip():
                continue
            if len(raw) + len(errors) >= max_rows:
                raise DatasetError(f"The file has more than {max_rows} rows; split it.")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = line[exc.start : exc.start + 1].hex()
                errors.append(RowError(number, f"not valid UTF-8 (byte 0x{bad} at position {exc.start + 1})"))
                continue
            try:
                raw.append((_loads(text), number, f"line {number}"))
            except (ValueError, RecursionError) as exc:
                errors.append(RowError(number, _json_problem(exc)))
    return raw, errors


def _decode_all(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith(BOM):
        data = data[len(BOM) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(f"The file is not valid UTF-8 (line {line}); save it as UTF-8 and upload it again.") from exc


def _read_json(path: Path, max_rows: int) -> tuple[list, list[RowError]]:
    text = _decode_all(path)
    try:
        data = _loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            raise _JsonLines from exc
        raise DatasetError(f"The file is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from exc
    except (ValueError, RecursionError) as exc:
        raise DatasetError(f"The file cannot be read: {_json_problem(exc)}.") from exc
    if isinstance(data, dict):
        listed = next((data[k] for k in ("data", "rows", "examples") if isinstance(data.get(k), list)), None)
        data = listed if listed is not None else ([data] if formats.detect([data]) else None)
    if not isinstance(data, list):
        raise DatasetError('A .json dataset must be a list of rows, e.g. [{"messages": [...]}, ...].')
    if len(data) > max_rows:
        raise DatasetError(f"The file has more than {max_rows} rows; split it.")
    return [(row, i, f"item {i}") for i, row in enumerate(data, start=1)], []


def _read_csv(path: Path, max_line_bytes: int, max_rows: int) -> tuple[list, list[RowError]]:
    text = _decode_all(path)
    csv.field_size_limit(max_line_bytes)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    raw, errors = [], []
    try:
        if not reader.fieldnames:
            raise DatasetError("The CSV file has no header row naming its columns.")
        header = [name.strip() for name in reader.fieldnames]
        reader.fieldnames = header
        start = reader.line_num + 1
        for record in reader:
            if len(raw) + len(errors) >= max_rows:
                raise DatasetError(f"The file has more than {max_rows} rows; split it.")
            line = start
            start = reader.line_num + 1
            if None in record:
                errors.append(RowError(line, "more values than the header has columns"))
                continue
            row = {k: v for k, v in record.items() if v not in (None, "")}
            if not row:
                continue
            if "messages" in row:
                try:
                    row["messages"] = _loads(row["messages"])
                except (ValueError, RecursionError) as exc:
                    errors.append(RowError(line, f"the messages column: {_json_problem(exc)}"))
                    continue
            raw.append((row, line, f"line {line}"))
    except csv.Error as exc:
        raise DatasetError(f"The CSV file cannot be read near line {reader.line_num}: {exc}.") from exc
    return raw, errors


def _to_rows(raw: list, errors: list[RowError]) -> ParsedDataset:
    total = len(raw) + len(errors)
    fmt = formats.detect([row for row, _, _ in raw])
    if fmt is None:
        if not raw and not errors:
            raise DatasetError("The file has no rows.")
        if not raw:
            raise DatasetError("No row can be read. " + describe_errors(errors, limit=5))
        raise DatasetError(f"No row has a known shape. Accepted: {formats.accepted_shapes()}.")
    rows, lines, places = [], [], []
    for row, line, where in raw:
        if not isinstance(row, dict):
            errors.append(RowError(line, f"a row must be an object, got {formats.kind_of(row)}", where))
            continue
        if not fmt.matches(row):
            other = next((f for f in formats.FORMATS.values() if f.matches(row)), None)
            reason = f"this row is {other.name} but the file is {fmt.name}" if other else f"not a {fmt.name} row"
            errors.append(RowError(line, f"{reason}: expected {fmt.label}", where))
            continue
        try:
            rows.append(fmt.to_messages(row))
            lines.append(line)
            places.append(where)
        except formats.RowProblem as exc:
            errors.append(RowError(line, str(exc), where))
    errors.sort(key=lambda e: e.line)
    if not rows:
        raise DatasetError("No row can be used. " + describe_errors(errors, limit=5))
    return ParsedDataset(format=fmt.name, rows=rows, lines=lines, places=places, errors=errors, total_rows=total)


def describe_errors(errors: list[RowError], limit: int = 10) -> str:
    shown = "; ".join(f"{e.where}: {e.reason}" for e in errors[:limit])
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return f"{len(errors)} bad row{'s' if len(errors) != 1 else ''}. {shown}{more}"
