"""Under /v1, every answer is JSON in OpenAI's error shape: unknown paths, wrong methods, bodies
over the size limit and unexpected exceptions included (Django would answer HTML)."""

from __future__ import annotations

import logging

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import RequestDataTooBig

from .errors import ApiError, error_response

logger = logging.getLogger(__name__)

PREFIX = "/v1/"
MESSAGES = {
    404: "Unknown API endpoint {path}; see /v1/openapi.json.",
    405: "Method {method} is not allowed on {path}.",
    400: "Bad request.",
    403: "Forbidden.",
    413: "The request body is too large.",
}


def _api(request) -> bool:
    return request.path.startswith(PREFIX) or request.path == PREFIX.rstrip("/")


def _jsonify(request, response):
    if (
        not _api(request)
        or response.status_code < 400
        or response.get("Content-Type", "").startswith("application/json")
    ):
        return response
    template = MESSAGES.get(response.status_code, "The request failed ({status}).")
    message = template.format(path=request.path, method=request.method, status=response.status_code)
    replaced = error_response(response.status_code, message)
    if response.has_header("Allow"):
        replaced["Allow"] = response["Allow"]
    return replaced


def _exception(request, exc):
    if not _api(request):
        return None
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, RequestDataTooBig):
        return error_response(413, "The request body is too large.", code="request_too_large")
    logger.exception("API request %s %s failed", request.method, request.path, exc_info=exc)
    return error_response(500, "The server failed on this request; it was logged.", code="server_error")


class ApiJsonErrors:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return _jsonify(request, self.get_response(request))

    async def __acall__(self, request):
        return _jsonify(request, await self.get_response(request))

    def process_exception(self, request, exc):
        return _exception(request, exc)
