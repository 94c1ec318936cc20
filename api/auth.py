"""Bearer keys and per-key rate limits for every /v1 view: `@api_view("GET", "POST", scope="files")`."""

from __future__ import annotations

import functools

from asgiref.sync import async_to_sync, iscoroutinefunction, sync_to_async
from django.conf import settings
from django.views.decorators.csrf import csrf_exempt

from chat import ratelimit

from . import keys
from .errors import ApiError


def authenticate(request):
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiError(
            401,
            "You didn't provide an API key: send it as 'Authorization: Bearer YOUR_KEY' "
            "(create one on your account's API keys page).",
            code="missing_api_key",
        )
    key = keys.find(value.strip())
    if key is None:
        raise ApiError(401, "Incorrect API key provided (unknown or revoked).", code="invalid_api_key")
    if key.expired:
        raise ApiError(401, f"This API key expired on {key.expires_at:%Y-%m-%d %H:%M} UTC; create a new one.",
                       code="expired_api_key")  # fmt: skip
    return key


def check_reach(key, scope: str, method: str) -> None:
    refused = keys.check_reach(key, scope, method)
    if refused:
        raise ApiError(403, refused, code="insufficient_scope")


async def check_rate(key) -> None:
    limit = key.rate_limit or settings.API_RATE_LIMIT  # a key's own limit is 1 or more (models.ApiKey)
    retry = await ratelimit.retry_after(f"apikey-{key.pk}", limit=limit, window=60)
    if retry is not None:
        raise ApiError(
            429,
            f"Rate limit reached for this key: {limit} requests per minute. Retry in {retry} s.",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(retry)},
        )


def _check_method(request, methods) -> None:
    if request.method not in methods:
        raise ApiError(405, f"Method {request.method} is not allowed here; use {', '.join(methods)}.")


def api_view(*methods: str, scope: str):
    """Method check, key (not expired; its scopes reach `scope`, api/models.SCOPES; read-only keys
    GET only), rate limit; a request that passed them counts as the key's use. `request.api_key`
    and `request.user` are set for the view. Works on sync and async views; an ApiError anywhere
    becomes its JSON answer."""

    def decorate(view):
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def wrapper(request, *args, **kwargs):
                try:
                    _check_method(request, methods)
                    key = await sync_to_async(authenticate)(request)
                    check_reach(key, scope, request.method)
                    await check_rate(key)
                    await sync_to_async(keys.count_use)(key)
                    request.api_key, request.user = key, key.user
                    return await view(request, *args, **kwargs)
                except ApiError as exc:
                    return exc.response()

        else:

            @functools.wraps(view)
            def wrapper(request, *args, **kwargs):
                try:
                    _check_method(request, methods)
                    key = authenticate(request)
                    check_reach(key, scope, request.method)
                    async_to_sync(check_rate)(key)
                    keys.count_use(key)
                    request.api_key, request.user = key, key.user
                    return view(request, *args, **kwargs)
                except ApiError as exc:
                    return exc.response()

        return csrf_exempt(wrapper)

    return decorate
