"""Downloads made by synchronous code (database reads), streamed under ASGI.

Django serves a `StreamingHttpResponse` under ASGI by iterating it asynchronously; given a
synchronous iterator it first reads the whole of it into a list (with a warning), so a large
export sat in daphne's memory before its first byte left. `async_chunks` pulls the synchronous
iterator a batch at a time in Django's one sync thread (a database cursor stays on its
connection) and yields each batch as it is made."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from asgiref.sync import sync_to_async

BATCH_BYTES = 64 * 1024


async def async_chunks(parts: Iterable[str | bytes], batch_bytes: int = BATCH_BYTES) -> AsyncIterator[bytes]:
    """`parts` joined into chunks of about `batch_bytes` (each part encoded as UTF-8)."""
    iterator = iter(parts)

    def take() -> bytes:
        out, size = [], 0
        for part in iterator:
            data = part.encode("utf-8") if isinstance(part, str) else part
            out.append(data)
            size += len(data)
            if size >= batch_bytes:
                break
        return b"".join(out)

    while chunk := await sync_to_async(take, thread_sensitive=True)():
        yield chunk


def file_blocks(path, block: int = BATCH_BYTES):
    """A file's bytes, a block at a time (closed when read to the end or dropped)."""
    with open(path, "rb") as f:
        while data := f.read(block):
            yield data
