"""Real websocket clients for a LiveStack (tests/stack.py): a logged-in session cookie and a
client that sends a message and collects its frames. Used by the reliability tests and bench/."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import websockets

SESSION_CODE = (
    "from django.contrib.auth import get_user_model\n"
    "from django.contrib.sessions.backends.db import SessionStore\n"
    "user = get_user_model().objects.get(username={username!r})\n"
    "session = SessionStore()\n"
    "session['_auth_user_id'] = str(user.pk)\n"
    "session['_auth_user_backend'] = 'django.contrib.auth.backends.ModelBackend'\n"
    "session['_auth_user_hash'] = user.get_session_auth_hash()\n"
    "session.create()\n"
    "print('SESSION', session.session_key)\n"
)


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no process {pid}")


def login_cookie(stack, username: str, password: str = "live-password-123") -> str:
    """Create a user in the stack and return a `sessionid=...` cookie logged in as them."""
    stack.create_user(username, password)
    out = stack.run_manage("shell", "-c", SESSION_CODE.format(username=username))
    key = [line.split()[1] for line in out.splitlines() if line.startswith("SESSION ")][-1]
    return f"sessionid={key}"


def use_model(stack, slug: str, location: str) -> None:
    """Register a local-folder model in the stack and make it the default."""
    stack.run_manage(
        "shell",
        "-c",
        "from chat.models import LanguageModel\n"
        f"LanguageModel.objects.create(name={slug!r}, slug={slug!r}, source='local', location={location!r}, "
        "dtype='float32', temperature=0, max_tokens=64, max_new_tokens_cap=4096, max_input_tokens=1024, is_default=True)\n",
    )


def wait_until_workers_loaded(stack, timeout: float = 120) -> None:
    """Wait until every worker of the stack has loaded a model (its heartbeat lists it)."""
    from inference.streams import worker_key

    deadline = time.monotonic() + timeout
    with stack.redis() as conn:
        while time.monotonic() < deadline:
            infos = [conn.get(worker_key(w)) for w in stack.worker_ids]
            if all(info and json.loads(info)["models"] for info in infos):
                return
            time.sleep(0.2)
    raise AssertionError("the inference workers did not load their model in time")


def stored_messages(stack, message_ids) -> dict[int, dict]:
    """The stored rows of these messages, read through `manage.py shell` in one call."""
    out = stack.run_manage(
        "shell",
        "-c",
        "import json\nfrom chat.models import Message\n"
        f"ids = {[int(i) for i in message_ids]!r}\n"
        "rows = {m.pk: {'content': m.content, 'status': m.status, 'worker': m.worker, "
        "'finish_reason': m.finish_reason, 'completion_tokens': m.completion_tokens} "
        "for m in Message.objects.filter(pk__in=ids)}\n"
        "print('MESSAGES', json.dumps(rows))\n",
    )
    rows = json.loads([line for line in out.splitlines() if line.startswith("MESSAGES ")][-1][len("MESSAGES ") :])
    return {int(k): v for k, v in rows.items()}


def stored_message(stack, message_id: int) -> dict:
    return stored_messages(stack, [message_id])[int(message_id)]


@dataclass
class Reply:
    started: dict | None = None
    deltas: list = field(default_factory=list)
    done: dict | None = None
    errors: list = field(default_factory=list)
    sent_at: float = 0.0
    started_at: float | None = None  # chat.started's arrival
    first_at: float | None = None
    last_at: float | None = None  # the last delta's arrival
    done_at: float | None = None

    @property
    def text(self) -> str:
        return "".join(d["text"] for d in self.deltas)

    @property
    def last_seq(self) -> int:
        return self.deltas[-1]["seq"] if self.deltas else 0


class Client:
    """One browser tab: one socket, JSON frames."""

    def __init__(self, stack, cookie: str) -> None:
        self.stack = stack
        self.cookie = cookie
        self.ws = None

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self) -> None:
        origin = self.stack.url.rstrip("/")
        self.ws = await websockets.connect(
            self.stack.ws_url, additional_headers={"Cookie": self.cookie, "Origin": origin}, max_size=None
        )

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None

    async def send(self, frame: dict) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self, timeout: float = 60) -> dict:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def chat(self, content: str, conversation=None, **params) -> Reply:
        """Send a message and return once chat.started arrives (deltas are read by `follow`)."""
        reply = Reply(sent_at=time.monotonic())
        await self.send({"type": "chat.send", "conversation": conversation, "content": content, "params": params})
        while reply.started is None:
            frame = await self.recv()
            if frame["type"] == "chat.error":
                reply.errors.append(frame)
                return reply
            if frame["type"] == "chat.started":
                reply.started = frame
                reply.started_at = time.monotonic()
        return reply

    async def follow(
        self, reply: Reply, timeout: float = 120, until_deltas: int | None = None, allow_gaps: bool = False
    ) -> Reply:
        """Read frames of this reply until done (or until `until_deltas` deltas have arrived).
        Every delta must follow the previous one (seq + 1) unless `allow_gaps`."""
        message_id = reply.started["message"]
        deadline = time.monotonic() + timeout
        while reply.done is None:
            if until_deltas is not None and len(reply.deltas) >= until_deltas:
                return reply
            frame = await self.recv(timeout=max(0.1, deadline - time.monotonic()))
            if frame.get("type") == "chat.error":
                reply.errors.append(frame)
                continue
            if frame.get("message") != message_id:
                continue
            if frame["type"] == "chat.delta":
                if frame["seq"] <= reply.last_seq:
                    continue  # replayed after a resume
                assert allow_gaps or frame["seq"] == reply.last_seq + 1, (
                    f"delta lost or reordered: {frame['seq']} after {reply.last_seq}"
                )
                if reply.first_at is None:
                    reply.first_at = time.monotonic()
                reply.deltas.append(frame)
                reply.last_at = time.monotonic()
            elif frame["type"] == "chat.done":
                reply.done = frame
                reply.done_at = time.monotonic()
        return reply
