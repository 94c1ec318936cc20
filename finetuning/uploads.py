"""Dataset uploads within a size limit, never held in memory: the upload streams to a temporary
file on disk (Django's TemporaryFileUploadHandler) and stops as soon as it passes
FINETUNE_MAX_UPLOAD_BYTES, before the rest is kept.

Use `limited_upload` on the view: the handlers must be set before anything reads request.POST,
and the CSRF check reads it (Django's "Modifying upload handlers on the fly"). The view then
answers with a clear message when `request.upload_too_large` is set.

Under ASGI, Django spools the whole request body to a temporary file before the view runs; these
handlers bound what is parsed and kept, not what the server receives."""

from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload, TemporaryFileUploadHandler
from django.http import QueryDict
from django.utils.datastructures import MultiValueDict
from django.views.decorators.csrf import csrf_exempt, csrf_protect

DEFAULT_LIMIT = 50 * 1024 * 1024
FORM_ALLOWANCE = 64 * 1024  # the form's other fields and the multipart headers, besides the file


def upload_limit() -> int:
    return getattr(settings, "FINETUNE_MAX_UPLOAD_BYTES", DEFAULT_LIMIT)


def too_large_by_header(request) -> bool:
    """The declared body is larger than any acceptable upload (a file at the limit plus the form)."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return False
    return length > upload_limit() + FORM_ALLOWANCE


class SizeLimitedUploadHandler(FileUploadHandler):
    """Stops an upload once its files pass the limit and marks the request
    (`request.upload_too_large`) so the view can say so. The form's fields before the file (the
    CSRF token) are still parsed; the rest of the body is read and dropped in chunks, never kept."""

    def __init__(self, request=None) -> None:
        super().__init__(request)
        self.limit = upload_limit()
        self.received = 0

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        """A body declared larger than any acceptable upload is not parsed at all: empty POST and
        FILES. (Raising StopUpload here would not be caught by Django's parser.)"""
        if content_length > self.limit + FORM_ALLOWANCE:
            self.request.upload_too_large = True
            return QueryDict(), MultiValueDict()
        return None

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            self.request.upload_too_large = True
            raise StopUpload(connection_reset=False)
        return raw_data  # the next handler (TemporaryFileUploadHandler) writes it to disk

    def file_complete(self, file_size):
        return None  # the next handler returns the file


def install(request) -> None:
    """Use the limited, on-disk handlers for this request; call it before request.POST/FILES."""
    request.upload_too_large = False
    request.upload_handlers = [SizeLimitedUploadHandler(request), TemporaryFileUploadHandler(request)]


def limited_upload(view):
    """Decorate a view that receives uploads: the handlers are installed first, then the CSRF
    check runs (it reads the POST body, through these handlers).

    A request whose Content-Length is already over the limit skips the CSRF check and reaches the
    view with `upload_too_large` set and an empty POST and FILES (its body is never parsed): the
    view can only answer with the error, there is nothing in it to act on."""
    protected = csrf_protect(view)

    @csrf_exempt
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        install(request)
        if request.method == "POST" and too_large_by_header(request):
            request.upload_too_large = True
            return view(request, *args, **kwargs)
        return protected(request, *args, **kwargs)

    return wrapped
