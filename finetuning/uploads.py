"""Dataset uploads within a size limit, never held in memory: the upload streams to a temporary
file on disk (Django's TemporaryFileUploadHandler) and stops as soon as it passes
FINETUNE_MAX_UPLOAD_BYTES, before the rest is read."""

from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload, TemporaryFileUploadHandler
from django.views.decorators.csrf import csrf_exempt, csrf_protect


class SizeLimitedUploadHandler(FileUploadHandler):
    """Stops an upload as soon as it passes the limit and marks the request
    (`request.upload_too_large`) so the view can say so. It does not refuse by Content-Length
    up front: the form's fields before the file (the CSRF token) must still be read; the rest of
    the body is then read and dropped in chunks, never kept."""

    def __init__(self, request=None) -> None:
        super().__init__(request)
        self.limit = settings.FINETUNE_MAX_UPLOAD_BYTES
        self.received = 0

    def _too_large(self):
        self.request.upload_too_large = True
        return StopUpload(connection_reset=False)

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            raise self._too_large()
        return raw_data

    def file_complete(self, file_size):
        return None


def install(request) -> None:
    """Use the limited, on-disk handlers for this request (before POST/FILES are read)."""
    request.upload_too_large = False
    request.upload_handlers = [SizeLimitedUploadHandler(request), TemporaryFileUploadHandler(request)]


def limited_upload(view):
    """The view's uploads go through `install`. The CSRF check reads the POST body, so it runs
    after the handlers are set (Django's "Modifying upload handlers on the fly")."""
    protected = csrf_protect(view)

    @csrf_exempt
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        install(request)
        return protected(request, *args, **kwargs)

    return wrapped
