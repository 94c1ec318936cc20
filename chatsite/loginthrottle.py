"""Login throttling: failed logins counted per username and per client address in Redis, so that the
limit holds across every daphne process.

Each counter is a sorted set of failure times (a sliding window). A username is strict: after
`LOGIN_FAILURE_LIMIT` failures within `LOGIN_FAILURE_WINDOW_S` seconds, further attempts for it are
refused without checking the password until enough of those failures are older than the window.
An address counts the distinct usernames that failed from it: after `LOGIN_ADDRESS_USERNAME_LIMIT`
of them within the window (someone trying many accounts), every attempt from it is refused. So one
person's typos lock out their own username, never the office behind the same address. Refused attempts are not counted, so a locked-out user is never locked out for longer.
A successful login clears its username's failures (not its address's). If Redis is unreachable,
logins are not throttled (a warning is logged) rather than refused.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import math
import time
import uuid

import redis
from django.conf import settings
from django.http import HttpRequest
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)


@functools.cache
def _client(url: str) -> redis.Redis:
    # Short timeouts, no retries: a login must not hang on an unreachable Redis; it goes
    # unthrottled instead.
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 0))


def client_ip(request: HttpRequest | None) -> str | None:
    """The address the request came from: REMOTE_ADDR, or behind a proxy (BEHIND_PROXY) the last
    X-Forwarded-For entry, which the proxy appended (earlier entries are the client's to forge)."""
    if request is None:
        return None
    candidates = []
    if settings.BEHIND_PROXY:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        candidates.append(forwarded.rsplit(",", 1)[-1].strip())
    candidates.append(request.META.get("REMOTE_ADDR", ""))
    for candidate in candidates:
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None


def _limits() -> list[int]:
    """The limit of each counter of `_keys`: the username's failures, the address's usernames."""
    return [settings.LOGIN_FAILURE_LIMIT, settings.LOGIN_ADDRESS_USERNAME_LIMIT]


def key_of_username(username: str) -> str:
    return hashlib.sha256(username.casefold().encode()).hexdigest()


def _keys(username: str, ip: str | None) -> list[str]:
    keys = [f"login:failures:user:{key_of_username(username)}"]
    if ip:
        address = ipaddress.ip_address(ip)
        if address.version == 6:
            # One IPv6 host usually holds a whole /64: count the network, not each address.
            address = ipaddress.ip_network(f"{address}/64", strict=False)
        keys.append(f"login:failures:ip:{address}")
    return keys


def retry_after(username: str, ip: str | None) -> int | None:
    """None if a login attempt may be checked now, else the seconds until one may."""
    limit = settings.LOGIN_FAILURE_LIMIT
    if limit <= 0:
        return None
    window = settings.LOGIN_FAILURE_WINDOW_S
    now = time.time()
    try:
        pipe = _client(settings.REDIS_URL).pipeline(transaction=False)
        for key in _keys(username, ip):
            pipe.zrangebyscore(key, now - window, "+inf", withscores=True)
        counters = pipe.execute()
    except redis.RedisError as e:
        logger.warning("Login throttling is off: Redis is unreachable (%s)", e)
        return None
    waits = [
        # Allowed again once all but limit - 1 of the failures in the window have left it.
        failures[len(failures) - key_limit][1] + window - now
        for failures, key_limit in zip(counters, _limits(), strict=False)
        if key_limit > 0 and len(failures) >= key_limit
    ]
    if not waits:
        return None
    return max(1, math.ceil(max(waits)))


def record_failure(username: str, ip: str | None) -> None:
    """Count one failed login for the username and the address."""
    if settings.LOGIN_FAILURE_LIMIT <= 0:
        return
    window = settings.LOGIN_FAILURE_WINDOW_S
    now = time.time()
    try:
        pipe = _client(settings.REDIS_URL).pipeline(transaction=True)
        keys = _keys(username, ip)
        for key in keys:
            # The username's counter keeps every failure; the address's one member per username
            # (its latest failure), so it counts the usernames tried from there.
            member = uuid.uuid4().hex if key == keys[0] else key_of_username(username)
            pipe.zadd(key, {member: now})
            pipe.zremrangebyscore(key, "-inf", now - window)
            pipe.expire(key, window + 1)
        pipe.execute()
    except redis.RedisError as e:
        logger.warning("Login throttling is off: Redis is unreachable (%s)", e)


def clear_username(username: str) -> None:
    """Forget the username's failures (after a successful login)."""
    try:
        _client(settings.REDIS_URL).delete(_keys(username, None)[0])
    except redis.RedisError as e:
        logger.warning("Login throttling is off: Redis is unreachable (%s)", e)


def describe_wait(seconds: int) -> str:
    """'45 seconds', '1 minute', '5 minutes' (rounded up: never sooner than the truth)."""
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"
