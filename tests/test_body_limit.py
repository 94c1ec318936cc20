"""Request bodies are bounded before anyone stores them (chatsite/bodylimit.py; issue 24,
finding 3): daphne answers 413 to an anonymous 400 MB POST from its headers alone, stops a
chunked body at the limit, and keeps answering; the ASGI layer refuses the same for any server."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import requests
from django.core.exceptions import RequestAborted

from chatsite.bodylimit import BodyLimit, limit_for
from tests.stack import LiveStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with LiveStack(
        tmp_path_factory.mktemp("bodylimit"), workers=0, extra_env={"HTTP_MAX_BODY_BYTES": "100000"}
    ) as live:
        yield live


def _connect(stack) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    return sock


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


@pytest.mark.stack
def test_a_400_mb_post_is_refused_from_its_headers_before_any_of_it_is_sent(stack):
    sock = _connect(stack)
    sock.sendall(b"POST /accounts/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: 400000000\r\n\r\n")  # fmt: skip
    started = time.monotonic()
    answer = _read_response(sock)  # not one byte of the body was sent
    assert answer.startswith(b"HTTP/1.1 413") and b"100000 bytes at most" in answer
    assert time.monotonic() - started < 5
    sock.close()
    assert requests.get(f"{stack.url}accounts/login/", timeout=10).status_code == 200  # the site answers


@pytest.mark.stack
def test_a_chunked_body_is_cut_at_the_limit_and_the_rest_is_never_taken(stack):
    sock = _connect(stack)
    sock.sendall(b"POST /accounts/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 16384
    sent = 0
    with pytest.raises(OSError):  # the server closes the connection once past the limit
        for _ in range(100_000):  # 1.6 GB if it were all taken
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        pytest.fail("the server took the whole body")
    assert sent < 1_600_000_000  # the server ended it (it drops what comes for a second after its 413)
    sock.close()
    assert requests.get(f"{stack.url}accounts/login/", timeout=10).status_code == 200


@pytest.mark.stack
def test_uploads_and_the_api_have_their_own_larger_limits(stack):
    big = b"a=" + b"x" * 200_000  # over the pages' 100 KB, under the upload limit
    response = requests.post(f"{stack.url}accounts/login/", data=big, timeout=30,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert response.status_code == 413
    response = requests.post(f"{stack.url}v1/files", data=big, timeout=30,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert response.status_code == 401  # read, then refused for what it is: no key


def test_the_limits_follow_the_path(settings):
    settings.FINETUNE_MAX_UPLOAD_BYTES = 10_000_000
    settings.API_MAX_BODY_BYTES = 1_000_000
    settings.HTTP_MAX_BODY_BYTES = 3_000_000
    assert limit_for("/v1/files") > 10_000_000 and limit_for("/finetune/datasets/upload/") > 10_000_000
    assert limit_for("/v1/chat/completions") == 1_000_000
    assert limit_for("/accounts/login/") == limit_for("/admin/") == 3_000_000
    assert 5 * 1024 * 1024 < limit_for("/evals/") < 6 * 1024 * 1024


def test_the_asgi_layer_refuses_a_declared_length_unread_and_stops_a_longer_body(settings):
    settings.HTTP_MAX_BODY_BYTES = 100_000

    async def django_like(scope, receive, send):
        """Reads the body as Django's ASGIHandler does: a RequestAborted ends it, answering nothing."""
        try:
            while (await receive()).get("more_body"):
                pass
        except RequestAborted:
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def call(headers, chunks):
        sent, taken = [], []
        queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

        async def receive():
            taken.append(queue[0])
            return queue.pop(0)

        async def send(message):
            sent.append(message)

        await BodyLimit(django_like)({"type": "http", "path": "/accounts/login/", "headers": headers}, receive, send)
        return sent[0]["status"], len(taken)

    assert asyncio.run(call([(b"content-length", b"400000000")], [b"x"])) == (413, 0)  # never read
    assert asyncio.run(call([(b"content-length", b"nonsense")], [b"x"])) == (413, 0)
    status, taken = asyncio.run(call([], [b"x" * 60_000] * 10))  # chunked: 600 KB
    assert (status, taken) == (413, 2)  # stopped at the chunk that passed 100 KB
    assert asyncio.run(call([(b"content-length", b"10")], [b"x" * 10])) == (200, 1)


@pytest.mark.stack
def test_the_api_s_413_is_an_openai_error_object(stack):
    response = requests.post(f"{stack.url}v1/chat/completions", data=b"x" * 2_000_000, timeout=30,
                             headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"


@pytest.mark.stack
def test_a_45_mb_upload_of_tiny_objects_gets_a_clear_report_and_daphne_stays_small(stack):
    """Issue 24, finding 4: `[{},{},...]` used to take about 1.2 GB of daphne's memory for 45 MB."""

    def peak_mb() -> float:  # the process's highest resident memory so far
        status = open(f"/proc/{stack.daphne_pid}/status").read().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024

    stack.create_user("uploader", "live-password-123")
    stack.run_manage("shell", "-c", "from django.contrib.auth.models import Permission, User\n"
                     "User.objects.get(username='uploader').user_permissions.add("
                     "Permission.objects.get(codename='finetune'))\n")  # fmt: skip
    key = stack.run_manage("createapikey", "uploader").strip().splitlines()[-1]
    body = b"[" + b",".join([b"{}"] * 15_000_000) + b"]"  # 45 MB
    before = peak_mb()
    response = requests.post(f"{stack.url}v1/files", files={"file": ("tiny.json", body)}, data={"purpose": "fine-tune"},
                             headers={"Authorization": f"Bearer {key}"}, timeout=300)  # fmt: skip
    grown = peak_mb() - before
    assert response.status_code == 400 and "rows; split it into smaller files" in response.json()["error"]["message"]
    assert grown < 400, grown
    assert requests.get(f"{stack.url}accounts/login/", timeout=10).status_code == 200
