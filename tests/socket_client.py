"""A websocket test client for the chat socket: the real ASGI application (origin check,
session auth), driven through channels' WebsocketCommunicator."""

from __future__ import annotations

import json

from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from chatsite.asgi import application


@sync_to_async
def _session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def connect(user=None, origin: bytes = b"http://127.0.0.1") -> tuple[WebsocketCommunicator, bool]:
    headers = [(b"origin", origin), (b"host", b"127.0.0.1")]
    if user is not None:
        headers.append((b"cookie", f"sessionid={await _session_cookie(user)}".encode()))
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await communicator.connect(timeout=10)
    return communicator, connected


async def receive(communicator: WebsocketCommunicator, timeout: float = 30) -> dict:
    return json.loads(await communicator.receive_from(timeout=timeout))


async def until_done(communicator: WebsocketCommunicator, message_id: int, timeout: float = 60) -> tuple[list, dict]:
    """Collect this reply's deltas until its chat.done; returns (deltas, done)."""
    deltas = []
    while True:
        frame = await receive(communicator, timeout)
        if frame.get("message") != message_id:
            continue
        if frame["type"] == "chat.delta":
            deltas.append(frame)
        elif frame["type"] == "chat.done":
            return deltas, frame


async def send(communicator: WebsocketCommunicator, frame: dict) -> None:
    await communicator.send_to(text_data=json.dumps(frame))
