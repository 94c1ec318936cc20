"""Whether an open websocket's user is still logged in, and the watch that closes a socket whose
session ended (logout elsewhere, a password change, deactivation) even if it only listens.

A socket's scope holds the session and user as they were when it opened; Django checks them on
every HTTP request, so a socket re-reads them: on each frame it receives (chat), and every
SOCKET_SESSION_RECHECK_S seconds while it is open (`watch`), closing with 4401 within that time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from importlib import import_module

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.utils.crypto import constant_time_compare

logger = logging.getLogger(__name__)


def session_valid(scope) -> bool:
    """The socket's user is still logged in (session not flushed), still active, and has not
    changed their password since (Django logs every session out then: its auth hash no longer
    matches, as `django.contrib.auth.get_user` checks on each request)."""
    user = scope.get("user")
    session = scope.get("session")
    if user is None or not user.is_authenticated or session is None or not session.session_key:
        return False
    # A fresh read: the scope's session was loaded once, when the socket opened.
    stored = import_module(settings.SESSION_ENGINE).SessionStore(session.session_key)
    session_hash = stored.get(HASH_SESSION_KEY)
    if not session_hash or stored.get(SESSION_KEY) != user._meta.pk.value_to_string(user):
        return False
    current = get_user_model().objects.filter(pk=user.pk, is_active=True).first()
    if current is None:
        return False
    hashes = [current.get_session_auth_hash(), *current.get_session_auth_fallback_hash()]
    return any(constant_time_compare(session_hash, h) for h in hashes)


async def watch(scope, on_ended: Callable[[], Awaitable[None]]) -> None:
    """Re-check the session every SOCKET_SESSION_RECHECK_S seconds; once it has ended, await
    `on_ended()` (which closes the socket with 4401) and stop. Run it as the socket's task."""
    while True:
        await asyncio.sleep(settings.SOCKET_SESSION_RECHECK_S)
        try:
            valid = await database_sync_to_async(session_valid)(scope)
        except Exception:  # a database hiccup is not a logout: ask again next time
            logger.exception("could not re-check a socket's session")
            continue
        if not valid:
            await on_ended()
            return
