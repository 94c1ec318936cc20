"""Request bodies are bounded before anyone stores them: a body over the largest that its path
accepts is answered 413 before it is read (issue 24, finding 3).

Two layers, with one table of limits (`limit_for`):

- **daphne** (`guard_daphne`): daphne's request is a twisted `http.Request`, which writes the whole
  body to a temporary file before the ASGI application is even called (and parses a form body into
  arguments nobody reads: turned off); an ASGI wrapper alone would refuse a 400 MB upload only
  after it sat on disk. Our subclass of daphne's `WebRequest`
  checks the declared `Content-Length` as soon as the headers are in, and counts the bytes of a
  chunked body as they arrive; over the limit it writes the 413 and closes the connection,
  keeping nothing.
- **ASGI** (`BodyLimit`, around the HTTP application in chatsite/asgi.py): the same check for any
  other ASGI server, and before Django spools the body to its own temporary file.

The limits: the dataset and file uploads take FINETUNE_MAX_UPLOAD_BYTES (plus the form's fields),
the evaluation form its 5 MB file, the rest of the OpenAI-compatible API API_MAX_BODY_BYTES, and
every other path HTTP_MAX_BODY_BYTES (forms, JSON, the admin). A proxy in front should have its
own limit (docs/deploy.md)."""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.core.exceptions import RequestAborted

LINGER_S = 1.0  # how long the rest of a refused body is read and dropped before the connection ends
FORM_ALLOWANCE = 64 * 1024  # a form's other fields and the multipart headers, besides its file
MESSAGE = b"The request body is larger than this address accepts (%d bytes at most).\n"


def limit_for(path: str) -> int:
    """The largest body, in bytes, that a request to `path` may send."""
    from evals.forms import MAX_UPLOAD_BYTES as EVALS_UPLOAD

    if path in ("/v1/files", "/v1/files/", "/finetune/datasets/upload/"):
        return settings.FINETUNE_MAX_UPLOAD_BYTES + FORM_ALLOWANCE
    if path == "/evals/":
        return EVALS_UPLOAD + FORM_ALLOWANCE
    if path.startswith("/v1/"):
        return settings.API_MAX_BODY_BYTES
    return settings.HTTP_MAX_BODY_BYTES


def _response(path: str, limit: int) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The 413's body and headers: the OpenAI error object on the API, plain text elsewhere."""
    message = MESSAGE % limit
    if path.startswith("/v1/"):
        code = "file_too_large" if path.rstrip("/") == "/v1/files" else "request_too_large"
        error = {"message": message.decode().strip(), "type": "invalid_request_error", "param": None, "code": code}
        body, kind = json.dumps({"error": error}).encode(), b"application/json"
    else:
        body, kind = message, b"text/plain; charset=utf-8"
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    return body, headers


# --- ASGI ------------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: 413 for a declared length over the path's limit, without reading the body;
    a body that turns out longer (chunked, or a false length) stops Django's read at the limit."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = limit_for(scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await self._refuse(send, scope["path"], limit)
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestAborted(f"body over {limit} bytes")  # Django stops reading, answers nothing
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, tracked_send)
        if received > limit and not started:
            await self._refuse(send, scope["path"], limit)

    @staticmethod
    async def _refuse(send, path: str, limit: int) -> None:
        body, headers = _response(path, limit)
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# --- daphne ----------------------------------------------------------------------------------
def guard_daphne() -> None:
    """Make daphne's HTTP protocol use a request that refuses an oversized body as it arrives.
    daphne builds each request from its module's `WebRequest` (HTTPFactory.buildProtocol)."""
    try:
        from daphne import http_protocol
    except ImportError:  # another ASGI server: BodyLimit alone
        return
    if getattr(http_protocol.WebRequest, "body_limited", False):
        return

    class LimitedWebRequest(http_protocol.WebRequest):
        body_limited = True

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # twisted's Request parses every form POST into `args` once the body is in (a
            # multipart body read whole into memory and parsed by the email package: a 45 MB
            # upload took about 500 MB of daphne's memory before Django saw it). daphne never
            # reads `args`.
            self._parsePOSTFormSubmission = False

        def gotLength(self, length):
            target = urlsplit(getattr(self.channel, "_path", b"/") or b"/").path
            self._target = unquote(target.decode("latin-1"))
            self._limit = limit_for(self._target)
            self._received = 0
            self._refused = False
            if length is not None and length > self._limit:
                super().gotLength(0)  # nothing will be kept
                self._refuse()
                return
            super().gotLength(length)

        def handleContentChunk(self, data):
            if self._refused:
                return
            self._received += len(data)
            if self._received > self._limit:
                self._refuse()
                return
            super().handleContentChunk(data)

        def process(self):
            if getattr(self, "_refused", False):
                return None  # the body that was still coming ended: the 413 has been sent already
            return super().process()

        def _refuse(self) -> None:
            from twisted.internet import reactor

            self._refused = True
            body, headers = _response(self._target, self._limit)
            head = b"HTTP/1.1 413 Content Too Large\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
            transport = self.channel.transport
            transport.write(head + b"\r\n" + body)
            # A lingering close, as nginx does: the answer goes out and the write side closes, what
            # the client still sends for a moment is dropped unkept (a closed socket with unread
            # data would reset the connection and could lose the answer), then the connection ends.
            reactor.callLater(LINGER_S, transport.abortConnection)
            try:
                transport.loseWriteConnection()
            except (AttributeError, NotImplementedError):
                transport.loseConnection()

    http_protocol.WebRequest = LimitedWebRequest
