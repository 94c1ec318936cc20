"""Reading an uploaded dataset file from disk, row by row, within limits: every problem is a
whole-file `DatasetError` or a `RowError` with where it is and why, never an exception a person
cannot act on. Rows come out as chat messages (finetuning/formats.py).

JSON Lines is read line by line as bytes, so memory is bounded by `max_line_bytes`; a .json or
.csv file is read whole (it is at most `max_bytes`). Nothing is ever decompressed."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import formats

KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}
ACCEPTED = ".jsonl, .ndjson, .json or .csv"
HEAD_BYTES = 8192  # what is looked at for emptiness, compression and binary content
MAGIC = {
    b"PK\x03\x04": "a zip archive",
    b"\x1f\x8b": "a gzip file",
    b"BZh": "a bzip2 file",
    b"\xfd7zXZ\x00": "an xz file",
    b"(\xb5/\xfd": "a zstd file",
    b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive",
}
BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
MAX_DIGITS = 4300  # Python's own limit for int("...")
MAX_OBJECT_DOCUMENT_CHARS = 5_000_000  # a .json object around its rows is parsed whole: only this large
CSV_DELIMITERS = ",;\t"


class DatasetError(ValueError):
    """The whole file cannot be used; the message says why and what to do. `busy`: not the
    file's fault, another upload of the account is being checked (retry shortly)."""

    def __init__(self, message: str, *, busy: bool = False) -> None:
        super().__init__(message)
        self.busy = busy


@dataclass
class RowError:
    """One unusable row: `line` is the 1-based line where it starts (JSONL, CSV) or its 1-based
    item number (a JSON array); `where` says which, for messages ("line 12", "item 3")."""

    line: int
    reason: str
    where: str = ""

    def __post_init__(self) -> None:
        self.where = self.where or f"line {self.line}"


@dataclass
class ParsedDataset:
    format: str  # a formats.FORMATS name
    rows: list[list[dict]]  # each kept row as chat messages [{"role", "content"}]
    lines: list[int]  # where each kept row starts (line, or item number of a JSON array)
    places: list[str] = field(default_factory=list)  # the same, for messages: "line 3", "item 3"
    errors: list[RowError] = field(default_factory=list)  # every bad row, in file order
    total_rows: int = 0  # rows read, good and bad (blank lines are not rows)


def parse_file(
    path: Path, filename: str, *, max_bytes: int, max_line_bytes: int = 1_000_000, max_rows: int = 100_000
) -> ParsedDataset:
    """Read, check and convert the dataset at `path` (`filename` is the name it was uploaded as:
    its extension says how to read it). Raises DatasetError when the file as a whole is unusable."""
    suffix = Path(filename).suffix.lower()
    kind = KINDS.get(suffix)
    if kind is None:
        raise DatasetError(f"Unsupported file type {suffix or '(none)'!r}: upload a {ACCEPTED} file.")
    size = path.stat().st_size
    if size > max_bytes:
        raise DatasetError(f"The file is {_size(size)}; the limit is {_size(max_bytes)}. Split it or remove rows.")
    head = _check_head(path)
    if kind == "json" or (kind == "jsonl" and head.lstrip().startswith(b"[")):
        try:
            raw, errors = _read_json(path, max_rows, strict=kind == "json")
        except _NotOneDocument:  # JSON Lines saved as .json, or broken JSON Lines
            raw, errors = _read_jsonl(path, max_line_bytes, max_rows)
    elif kind == "jsonl":
        raw, errors = _read_jsonl(path, max_line_bytes, max_rows)
    else:
        raw, errors = _read_csv(path, max_line_bytes, max_rows)
    return _to_rows(raw, errors)


def describe_errors(errors: list[RowError], limit: int = 10) -> str:
    """For messages: '12 bad rows. line 3: ...; line 7: ... (and 10 more)'."""
    shown = "; ".join(f"{e.where}: {e.reason}" for e in errors[:limit])
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return f"{len(errors)} bad row{'s' if len(errors) != 1 else ''}. {shown}{more}"


# --- the whole file --------------------------------------------------------------------------
def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} KB"


def _check_head(path: Path) -> bytes:
    """The first bytes (BOM removed), once they show a non-empty text file: compressed or binary
    files are refused by their first bytes, before anything else is read."""
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
        whole = not f.read(1)
    for magic, what in MAGIC.items():
        if head.startswith(magic):
            raise DatasetError(f"This is {what}, not text. Upload the uncompressed {ACCEPTED} file itself.")
    if head.startswith(UTF16_BOMS):
        raise DatasetError("This file is UTF-16 text. Save it as UTF-8 and upload it again.")
    if head.startswith(BOM):
        head = head[len(BOM) :]
    if whole and not head.strip():
        raise DatasetError("The file is empty.")
    if b"\x00" in head:
        raise DatasetError(
            f"This looks like a compressed or binary file, not text. Upload the uncompressed {ACCEPTED} file."
        )
    return head


def _decode_all(path: Path) -> str:
    """The whole file as text (for .json and .csv), or a DatasetError naming the bad line."""
    data = path.read_bytes()
    if data.startswith(BOM):
        data = data[len(BOM) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DatasetError(
            f"The file is not valid UTF-8 (line {line}, byte 0x{data[exc.start]:02x}). "
            "Save it as UTF-8 and upload it again."
        ) from exc


# --- JSON values -----------------------------------------------------------------------------
class _BadValue(ValueError):
    """A JSON value that parses but is refused; its message is the row's reason."""


def _parse_int(text: str) -> int:
    if len(text) > MAX_DIGITS:
        raise _BadValue(f"a number with too many digits ({len(text)})")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadValue(f"the number {text[:20]}{'...' if len(text) > 20 else ''} is too large")
    return value


def _parse_constant(name: str):
    raise _BadValue(f"{name} is not a number JSON allows; write null or a number")


def _loads(text: str):
    """json.loads that refuses NaN, Infinity, infinite floats and integers of thousands of digits."""
    return json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)


def _json_problem(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc.msg} (column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply"
    return str(exc)


# --- the three containers: each returns ([(value, line, where), ...], [RowError, ...]) ---------
class _NotOneDocument(Exception):
    """The file is not one JSON document: read it as JSON Lines."""


def _too_many(max_rows: int) -> DatasetError:
    return DatasetError(f"The file has more than {max_rows} rows; split it into smaller files.")


def _jsonl_lines(f, max_line_bytes: int):
    """(line number, its bytes) for each line; for a line over the limit, (line number, its length
    in bytes): the rest of such a line is read in bounded pieces and dropped, never kept."""
    number = 0
    while line := f.readline(max_line_bytes + 2):  # room for a line at the limit and its "\r\n"
        number += 1
        length, tail = len(line), line[-2:]
        while not tail.endswith(b"\n") and (piece := f.readline(1 << 20)):  # a longer line: skip the rest
            length, tail = length + len(piece), (tail + piece)[-2:]
        length -= len(tail) - len(tail.rstrip(b"\r\n"))  # the line ending is not part of the row
        if number == 1 and line.startswith(BOM):
            line, length = line[len(BOM) :], length - len(BOM)
        yield number, (line if length <= max_line_bytes else length)


def _read_jsonl(path: Path, max_line_bytes: int, max_rows: int) -> tuple[list, list[RowError]]:
    raw, errors = [], []
    with path.open("rb") as f:
        for number, line in _jsonl_lines(f, max_line_bytes):
            if isinstance(line, bytes) and not line.strip():
                continue  # blank lines are not rows
            if len(raw) + len(errors) >= max_rows:
                raise _too_many(max_rows)
            if isinstance(line, int):
                errors.append(RowError(number, f"the line is {line} bytes, over the {max_line_bytes}-byte limit"))
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                where = f"byte 0x{line[exc.start]:02x} at position {exc.start + 1}"
                errors.append(RowError(number, f"not valid UTF-8 ({where}); save the file as UTF-8"))
                continue
            try:
                raw.append((_loads(text), number, f"line {number}"))
            except (ValueError, RecursionError) as exc:
                errors.append(RowError(number, _json_problem(exc)))
    return raw, errors


def _read_json(path: Path, max_rows: int, *, strict: bool) -> tuple[list, list[RowError]]:
    """A JSON array of rows (or {"data"|"rows"|"examples": [...]}, or one row). Raises
    _NotOneDocument for several documents (JSON Lines), or for any parse error unless strict."""
    try:
        text = _decode_all(path)
    except DatasetError:
        if strict:
            raise
        raise _NotOneDocument from None  # JSON Lines report bad UTF-8 by line
    if text.lstrip().startswith("["):
        return _read_json_array(text, max_rows, strict=strict)
    if len(text) > MAX_OBJECT_DOCUMENT_CHARS:
        if not strict:
            raise _NotOneDocument
        raise DatasetError(
            f"A .json file over {MAX_OBJECT_DOCUMENT_CHARS // 1_000_000} MB must be a list of rows, "
            '[{"messages": [...]}, ...] (or JSON Lines, one row per line): an object around the rows is read '
            "whole, and that is only done for smaller files."
        )
    try:
        data = _loads(text)
    except json.JSONDecodeError as exc:
        if not strict or (exc.msg == "Extra data" and text.lstrip().startswith("{")):
            raise _NotOneDocument from exc
        raise DatasetError(f"The file is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from exc
    except (ValueError, RecursionError) as exc:
        if not strict:
            raise _NotOneDocument from exc
        raise DatasetError(f"The file cannot be read: {_json_problem(exc)}.") from exc
    if isinstance(data, dict):
        listed = next((data[k] for k in ("data", "rows", "examples") if isinstance(data.get(k), list)), None)
        data = listed if listed is not None else ([data] if formats.format_of(data) else None)
    if not isinstance(data, list):
        raise DatasetError('A .json dataset must be a list of rows, e.g. [{"messages": [...]}, ...].')
    if len(data) > max_rows:
        raise _too_many(max_rows)
    return [(row, i, f"item {i}") for i, row in enumerate(data, start=1)], []


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
_SPACE = re.compile(r"[ \t\n\r]*")


def _read_json_array(text: str, max_rows: int, *, strict: bool) -> tuple[list, list[RowError]]:
    """A top-level JSON array read one row at a time (json's raw_decode from each row's start),
    so that the row limit stops the parse at its row: a file of millions of tiny objects is
    refused after max_rows of them, never held whole as Python objects."""
    rows, at = [], _SPACE.match(text, 1 + text.index("[")).end()
    if text.startswith("]", at):
        at += 1
    else:
        while True:
            if len(rows) >= max_rows:
                raise _too_many(max_rows)
            try:
                value, at = _DECODER.raw_decode(text, at)
            except (ValueError, RecursionError) as exc:
                if not strict:
                    raise _NotOneDocument from exc
                if isinstance(exc, json.JSONDecodeError):
                    raise DatasetError(f"The file is not valid JSON: {exc.msg} at line {exc.lineno}, "
                                       f"column {exc.colno}.") from exc  # fmt: skip
                raise DatasetError(f"The file cannot be read: {_json_problem(exc)}.") from exc
            rows.append((value, len(rows) + 1, f"item {len(rows) + 1}"))
            at = _SPACE.match(text, at).end()
            if text.startswith("]", at):
                at += 1
                break
            if not text.startswith(",", at):
                return _bad_array(text, at, strict)
            at = _SPACE.match(text, at + 1).end()
    if _SPACE.match(text, at).end() != len(text):
        return _bad_array(text, at, strict)
    return rows, []


def _bad_array(text: str, at: int, strict: bool):
    if not strict:
        raise _NotOneDocument
    line = text.count("\n", 0, at) + 1
    column = at - text.rfind("\n", 0, at)
    raise DatasetError(f"The file is not valid JSON: expected ',' or ']' at line {line}, column {column}.")


def _read_csv(path: Path, max_line_bytes: int, max_rows: int) -> tuple[list, list[RowError]]:
    """A header row naming the fields, then one row per record (quoted fields may span lines);
    a `messages` column holds the messages as JSON text."""
    text = _decode_all(path)
    first_line = text.split("\n", 1)[0]
    delimiter = max(CSV_DELIMITERS, key=first_line.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    raw, errors = [], []
    start = 1  # the line where the next record starts
    previous_limit = csv.field_size_limit(max_line_bytes)
    try:
        header = next(reader, None)
        if not header:
            raise DatasetError("The CSV file has no header row naming its columns.")
        header = [name.strip().lower() for name in header]
        start = reader.line_num + 1
        for values in reader:
            line, start = start, reader.line_num + 1
            if not any(value.strip() for value in values):
                continue  # blank lines are not rows
            if len(raw) + len(errors) >= max_rows:
                raise _too_many(max_rows)
            if len(values) > len(header):
                errors.append(RowError(line, f"{len(values)} values but the header names {len(header)} columns"))
                continue
            row = dict(zip(header, values, strict=False))
            if "messages" in row:
                try:
                    row["messages"] = _loads(row["messages"])
                except (ValueError, RecursionError) as exc:
                    errors.append(RowError(line, f"the messages column: {_json_problem(exc)}"))
                    continue
            raw.append((row, line, f"line {line}"))
    except csv.Error as exc:
        hint = " (is a quote never closed?)" if "end of data" in str(exc) else ""
        raise DatasetError(f"The CSV file cannot be read from line {start}: {exc}{hint}.") from exc
    finally:
        csv.field_size_limit(previous_limit)
    return raw, errors


# --- rows to chat messages -------------------------------------------------------------------
def _to_rows(raw: list, errors: list[RowError]) -> ParsedDataset:
    total = len(raw) + len(errors)
    if not raw:
        raise DatasetError(
            "No row can be read. " + describe_errors(errors, limit=5) if errors else "The file has no rows."
        )
    try:
        fmt = formats.detect([row for row, _, _ in raw])
    except formats.UnknownFormat as exc:
        raise DatasetError(str(exc)) from exc
    rows, lines, places = [], [], []
    for row, line, where in raw:
        try:
            rows.append(_convert(fmt, row))
        except formats.RowProblem as exc:
            errors.append(RowError(line, str(exc), where))
            continue
        lines.append(line)
        places.append(where)
    errors.sort(key=lambda e: e.line)
    if not rows:
        raise DatasetError(f"No row can be used as {fmt.name}. " + describe_errors(errors, limit=5))
    return ParsedDataset(format=fmt.name, rows=rows, lines=lines, places=places, errors=errors, total_rows=total)


def _convert(fmt: formats.Format, row) -> list[dict]:
    """The row as chat messages in the file's format, or RowProblem saying why not."""
    if not isinstance(row, dict):
        raise formats.RowProblem(f"a row must be an object {{...}}, got {formats.kind_of(row)}")
    if not fmt.matches(row):
        other = formats.format_of(row)
        if other is not None:
            raise formats.RowProblem(f"this row is {other.name} but the file is {fmt.name}: {fmt.label}")
        fields = ", ".join(repr(key) for key in list(row)[:8]) or "no fields"
        raise formats.RowProblem(f"the row has {fields}, not the fields of a {fmt.name} row: {fmt.label}")
    return fmt.to_messages(row)
