"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, with the right
status. Every answer under /v1 is JSON, never an HTML error page (see middleware.py)."""

from __future__ import annotations

from django.http import JsonResponse

TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None, headers=None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def response(self) -> JsonResponse:
        return error_response(self.status, self.message, param=self.param, code=self.code, headers=self.headers)

    def body(self) -> dict:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {
        "error": {"message": message, "type": TYPES.get(status, "invalid_request_error"), "param": param, "code": code}
    }


def error_response(status: int, message: str, *, param=None, code=None, headers=None) -> JsonResponse:
    response = JsonResponse(error_body(status, message, param=param, code=code), status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def not_found(what: str, ident, param: str | None = None) -> ApiError:
    """Unknown and another user's objects get the same answer."""
    return ApiError(404, f"No {what} with id {ident!r}.", param=param, code=f"{what.replace(' ', '_')}_not_found")
