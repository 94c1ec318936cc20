"""`manage.py runstack`, the single-machine launcher, run for real in a subprocess.

REDIS_URL is unset, so the launcher starts its private Redis on a unix socket under VAR_DIR;
the database is a fresh SQLite file there; MODEL_DIR reuses var/test-models (converted once).
A SIGKILLed inference worker is restarted (its running reply ends `interrupted`, the next one is
served by the new process); a worker that keeps crashing, or a dead daphne, stops everything.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.live_client import Client, login_cookie, stored_message, use_model
from tests.stack import MANAGE_PY, REPO, TEST_MODEL_DIR, free_port

pytestmark = pytest.mark.stack

START_TIMEOUT_S = 240  # the first run on a machine converts the default model (~25 s)
PASSWORD_LINE = re.compile(r"Log in at (http://\S+) as (\S+) / (\S+)")
STARTED_LINE = re.compile(r"started (\S+) \(pid (\d+)[,)]")  # also "restarted worker-0 (pid 7, restart 1)"


class Launcher:
    """`manage.py runstack` in a subprocess, its output collected line by line."""

    def __init__(self, var_dir: Path, *args: str) -> None:
        self.var_dir = var_dir
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL", "CELERY_BROKER_URL"}}
        env.update(VAR_DIR=str(var_dir), MODEL_DIR=str(TEST_MODEL_DIR), ALLOWED_HOSTS="127.0.0.1,localhost")
        self.env = env
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, str(MANAGE_PY), "runstack", "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    def run_manage(self, *args: str, timeout: float = 120) -> str:
        """`manage.py <args>` on the launcher's database and Redis; its stdout (tests/live_client.py)."""
        result = subprocess.run(
            [sys.executable, str(MANAGE_PY), *args],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def create_user(self, username: str, password: str) -> None:
        self.run_manage(
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model\n"
            f"get_user_model().objects.create_user({username!r}, password={password!r})\n",
        )

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for_line(self, pattern: re.Pattern[str] | str, timeout: float) -> re.Match[str]:
        """The first output line matching `pattern`; fails if the launcher exits first."""
        pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    match = pattern.search(line)
                    if match:
                        return match
                if self.process.poll() is not None:
                    pytest.fail(
                        f"runstack exited ({self.process.returncode}) before {pattern.pattern!r}:\n{self.tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"no {pattern.pattern!r} from runstack in {timeout} s:\n{self.tail()}")
                self._changed.wait(min(remaining, 0.5))

    def wait_until_serving(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until the login page answers 200 and the inference worker has registered."""
        # Either may come first: a worker can register before daphne listens.
        self.wait_for_line("Inference worker\\(s\\) ready", timeout)
        self.wait_for_line("Serving on http://", timeout)
        response = requests.get(f"{self.url}accounts/login/", timeout=10)
        assert response.status_code == 200

    def child_pids(self) -> dict[str, int]:
        """The latest pid of each child (a restarted one's replaces the one that died)."""
        return {m.group(1): int(m.group(2)) for m in map(STARTED_LINE.search, self.output.splitlines()) if m}

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.lines[-n:])

    def cleanup(self) -> None:
        """After a failed test: leave no process behind."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in self.child_pids().values():
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _wait_gone(pids: dict[str, int], deadline: float) -> dict[str, int]:
    while time.monotonic() < deadline:
        alive = {name: pid for name, pid in pids.items() if _alive(pid)}
        if not alive:
            return {}
        time.sleep(0.1)
    return {name: pid for name, pid in pids.items() if _alive(pid)}


@pytest.fixture
def var_dir():
    # Short path: a unix socket path must stay under ~100 bytes.
    path = Path(tempfile.mkdtemp(prefix="rs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def log_in(base_url: str, username: str, password: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{base_url}accounts/login/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, "the login page has no CSRF token"
    response = session.post(
        f"{base_url}accounts/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)},
        headers={"Referer": f"{base_url}accounts/login/"},
        timeout=30,
    )
    assert response.status_code == 200
    assert "sessionid" in session.cookies, f"login as {username} failed:\n{response.text[:2000]}"
    return session


def test_runstack_prints_a_working_admin_password_and_ctrl_c_stops_every_process(var_dir):
    launcher = Launcher(var_dir)
    try:
        match = launcher.wait_for_line(PASSWORD_LINE, START_TIMEOUT_S)
        url, username, password = match.groups()
        assert url == launcher.url
        assert username == "admin"
        launcher.wait_until_serving()
        assert (var_dir / "redis.sock").is_socket(), "the private Redis socket is missing"

        session = log_in(launcher.url, username, password)
        assert session.get(f"{launcher.url}admin/", timeout=10).status_code == 200  # a superuser

        children = launcher.child_pids()
        assert set(children) == {"redis", "daphne", "worker-0", "celery", "celery-evals"}, launcher.output
        assert launcher.output.count(password) == 1, "the password must be printed once"

        launcher.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        assert launcher.process.wait(timeout=20) == 0, launcher.tail()
        assert _wait_gone(children, deadline) == {}, launcher.tail()
        assert not (var_dir / "redis.sock").exists()
    finally:
        launcher.cleanup()


def test_runstack_stops_everything_and_fails_when_daphne_dies(var_dir):
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL"}}
    env.update(VAR_DIR=str(var_dir), DJANGO_SUPERUSER_PASSWORD="boss-pass-123")
    for args in (["migrate", "--no-input"], ["createsuperuser", "--no-input", "--username", "boss", "--email", ""]):
        subprocess.run([sys.executable, str(MANAGE_PY), *args], cwd=REPO, env=env, check=True, capture_output=True)

    launcher = Launcher(var_dir, "--no-celery")
    try:
        launcher.wait_until_serving()
        assert "An admin account exists (boss)" in launcher.output
        assert "changepassword boss" in launcher.output
        assert not PASSWORD_LINE.search(launcher.output), "no password is printed for an existing admin"
        children = launcher.child_pids()
        assert set(children) == {"redis", "daphne", "worker-0"}, launcher.output

        os.kill(children["daphne"], signal.SIGKILL)
        deadline = time.monotonic() + 20
        assert launcher.process.wait(timeout=20) != 0, launcher.tail()
        assert re.search(
            r"daphne \(pid \d+\) exited unexpectedly \(killed by SIGKILL.*\); it is not restarted", launcher.output
        ), launcher.tail()
        assert "| restarted " not in launcher.output
        assert _wait_gone(children, deadline) == {}, launcher.tail()
        assert not (var_dir / "redis.sock").exists()
    finally:
        launcher.cleanup()


def test_a_killed_inference_worker_is_restarted_its_reply_interrupted_and_the_next_served(var_dir, tiny_model_dir):
    launcher = Launcher(var_dir, "--no-celery")
    try:
        launcher.wait_until_serving()
        use_model(launcher, "tiny", str(tiny_model_dir))  # a random 2-layer model: long, fast replies
        cookie = login_cookie(launcher, "alice")
        first_id = f"{socket.gethostname()}-{launcher.process.pid}-0"
        victim = launcher.child_pids()["worker-0"]
        assert _parent(victim) == launcher.process.pid

        async def scenario():
            async with Client(launcher, cookie) as client:
                reply = await client.chat("a long story", max_tokens=4000)
                await client.follow(reply, until_deltas=3)
                os.kill(victim, signal.SIGKILL)  # as the out-of-memory killer would
                killed_at = time.monotonic()
                await client.follow(reply, timeout=30)
                waited = time.monotonic() - killed_at
                after = await client.chat("are you there?", conversation=reply.started["conversation"], max_tokens=8)
                await client.follow(after, timeout=90)
                return reply, waited, after, time.monotonic() - killed_at

        reply, waited, after, served_after = asyncio.run(scenario())
        assert reply.done["finish_reason"] == "interrupted", reply.done
        assert waited < 10, f"the interruption took {waited:.1f} s to reach the client"
        assert after.done["finish_reason"] in ("stop", "length"), (after.done, launcher.tail())
        assert stored_message(launcher, reply.started["message"])["worker"] == first_id
        assert stored_message(launcher, after.started["message"])["worker"] == f"{first_id}-r1"

        crash = re.escape(
            f"worker-0 (pid {victim}) exited unexpectedly (killed by SIGKILL, possibly by the out-of-memory"
        )
        launcher.wait_for_line(crash + r".*restarting it in 1 s", 5)
        restarted = int(launcher.wait_for_line(r"restarted worker-0 \(pid (\d+), restart 1\)", 5).group(1))
        assert restarted != victim and _alive(restarted) and _parent(restarted) == launcher.process.pid
        ready = launcher.wait_for_line(
            rf"Inference worker {re.escape(first_id)}-r1 ready .*, ([\d.]+) s after the crash", 5
        )
        print(
            f"interrupted after {waited:.1f} s; worker back {ready.group(1)} s after the crash; "
            f"next reply done {served_after:.1f} s after the crash"
        )

        children = launcher.child_pids()
        assert launcher.process.poll() is None, launcher.tail()
        launcher.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        assert launcher.process.wait(timeout=20) == 0, launcher.tail()
        assert _wait_gone(children, deadline) == {}, launcher.tail()
    finally:
        launcher.cleanup()


def test_a_worker_that_keeps_crashing_stops_everything_with_the_reason(var_dir):
    launcher = Launcher(var_dir, "--no-celery")
    try:
        launcher.wait_until_serving()
        for restart in range(1, 5):
            os.kill(launcher.child_pids()["worker-0"], signal.SIGKILL)
            launcher.wait_for_line(rf"restarted worker-0 \(pid \d+, restart {restart}\)", 30)
        children = launcher.child_pids()
        os.kill(children["worker-0"], signal.SIGKILL)  # the fifth crash within 120 s

        deadline = time.monotonic() + 20
        assert launcher.process.wait(timeout=20) != 0, launcher.tail()
        assert re.search(
            r"worker-0 \(pid \d+\) exited unexpectedly \(killed by SIGKILL.*It crashed 5 times in [\d.]+ s "
            r"\(the limit is 5 within 120 s\), so it is not restarted again\. Its output is above",
            launcher.output,
        ), launcher.tail()
        # Waits of 1, 2, 4 and 8 s before the four restarts.
        assert re.findall(r"restarting it in (\d+) s", launcher.output) == ["1", "2", "4", "8"]
        assert _wait_gone(children, deadline) == {}, launcher.tail()
        assert not (var_dir / "redis.sock").exists()
    finally:
        launcher.cleanup()


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout():
    from chatsite.processes import ProcessGroup

    lines: list[tuple[str, str]] = []
    group = ProcessGroup(sink=lambda name, line: lines.append((name, line)))
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    group.start("stubborn", [sys.executable, "-c", stubborn])
    group.start("polite", [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"])
    deadline = time.monotonic() + 20
    while sum(line == "ready" for _, line in lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)

    started = time.monotonic()
    codes = group.stop_all(timeout=1)
    assert time.monotonic() - started < 5
    assert codes == {"stubborn": -signal.SIGKILL, "polite": -signal.SIGTERM}
    assert ("stubborn", "ready") in lines and ("polite", "ready") in lines
    assert group.exited() == [] and group.pids() == {}
