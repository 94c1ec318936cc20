"""A live stack for end-to-end tests: the REAL product processes, on a free port.

`LiveStack` runs `migrate` and `installdefaultmodel`, then starts daphne and N inference workers
(`manage.py inferenceworker --worker-id stack-w0`, `stack-w1`, ...) exactly as `manage.py
runstack` does, through the same supervisor (`chatsite.processes.ProcessGroup`). It waits until
the login page answers 200 and every worker's heartbeat key `inference:worker:<id>` is in Redis.

Its world, fresh for every stack:
- database: a new SQLite file in the stack's tmp dir; or, when DATABASE_URL points at PostgreSQL,
  a new database on that server (`chatsite_stack_<random>`), dropped by `stop()`;
- Redis: a private redis-server of its own on a unix socket in the tmp dir (the same one
  `runstack` starts when REDIS_URL is unset), so stacks of concurrent test runs never share
  keys (message ids of two fresh databases collide). Set STACK_REDIS_URL (e.g.
  redis://127.0.0.1:6379/14) to use an existing server instead: that database is flushed by
  `start()`;
- VAR_DIR: the tmp dir; MODEL_DIR: <repo>/var/test-models, kept across runs so the default model
  is converted only once;
- logs: <tmp>/logs/<process>.log; a failed start raises with the last 50 lines of each log.

Use it from tests/conftest.py:

    from tests.stack import live_stack, live_stack_factory  # noqa: F401  (pytest fixtures)

    @pytest.mark.stack
    def test_something(live_stack):
        live_stack.create_user("alice", "pw-alice-123")
        ... talk to live_stack.url / live_stack.ws_url ...

    @pytest.mark.stack
    def test_two_workers(live_stack_factory):
        stack = live_stack_factory(workers=2)
        stack.kill_worker(0)

Or directly: `stack = LiveStack(tmp_dir, workers=2); stack.start(); ...; stack.stop()`.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self
from urllib.parse import urlparse, urlunparse

import pytest
import redis

from chatsite.processes import ProcessGroup, start_private_redis, tail
from inference.streams import worker_key

REPO = Path(__file__).resolve().parent.parent
MANAGE_PY = REPO / "manage.py"
TEST_MODEL_DIR = REPO / "var" / "test-models"


class StackError(RuntimeError):
    """The stack could not start (the message carries each process's log tail)."""


def _short_socket_path(preferred: Path) -> Path:
    """A unix socket path must stay short (about 100 bytes); fall back to a short tmp dir."""
    if len(str(preferred).encode()) <= 100:
        return preferred
    return Path(tempfile.mkdtemp(prefix="stk-")) / "redis.sock"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveStack:
    """daphne + N inference workers on a fresh database, started and stopped by a test."""

    def __init__(
        self,
        tmp_dir: str | os.PathLike[str] | None = None,
        *,
        workers: int = 1,
        start_timeout: float = 240.0,
        redis_url: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.tmp_dir = Path(tmp_dir or tempfile.mkdtemp(prefix="stack-"))
        self.workers = workers
        self.start_timeout = start_timeout
        self.port = free_port()
        self.var_dir = self.tmp_dir / "var"
        self.log_dir = self.tmp_dir / "logs"
        # An existing Redis (redis_url or STACK_REDIS_URL), else a private one that start() runs.
        self.external_redis_url = redis_url or os.environ.get("STACK_REDIS_URL") or None
        self.redis_socket = _short_socket_path(self.tmp_dir / "redis.sock")
        self.redis_url = self.external_redis_url or f"unix://{self.redis_socket}"
        self._pg_database: str | None = None
        self._pg_admin_url: str | None = None
        self.env: dict[str, str] = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            "DATABASE_URL": self._database_url(),
            "REDIS_URL": self.redis_url,
            "VAR_DIR": str(self.var_dir),
            "MODEL_DIR": str(TEST_MODEL_DIR),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "DEBUG": "0",
            # Load tests open many replies for one user at once.
            "CHAT_MAX_ACTIVE_PER_USER": "1000",
            "CHAT_MODEL_TITLES": "0",  # only the replies a test or benchmark sends (extra_env can turn it on)
            **(extra_env or {}),
        }
        # The suite's own broker/layer settings must not leak into the stack.
        self.env.pop("CELERY_BROKER_URL", None)
        self.group = ProcessGroup(env=self.env, cwd=REPO)
        self.infra = ProcessGroup(env=self.env, cwd=REPO)  # the private Redis: stopped last
        self.started = False

    # --- addresses -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The site's root, e.g. http://127.0.0.1:54321/ (with the trailing slash)."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    @property
    def worker_ids(self) -> list[str]:
        return [self.worker_id(i) for i in range(self.workers)]

    @staticmethod
    def worker_id(i: int) -> str:
        return f"stack-w{i}"

    @property
    def worker_pids(self) -> dict[int, int]:
        """The pid of each running inference worker, by index."""
        pids = self.group.pids()
        return {i: pids[f"worker-{i}"] for i in range(self.workers) if f"worker-{i}" in pids}

    @property
    def daphne_pid(self) -> int | None:
        return self.group.pids().get("daphne")

    def redis(self) -> redis.Redis:
        """A client on the stack's Redis database (close it when done)."""
        return redis.Redis.from_url(self.redis_url)

    # --- life cycle ----------------------------------------------------------------------
    def start(self) -> Self:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        TEST_MODEL_DIR.mkdir(parents=True, exist_ok=True)
        try:
            self._create_pg_database()
            if self.external_redis_url:
                with self.redis() as client:
                    client.flushdb()
            else:
                start_private_redis(
                    self.infra, self.redis_socket, workdir=self.var_dir, log_path=self.log_dir / "redis.log"
                )
            self._run_step("migrate", "--no-input")
            self._run_step("installdefaultmodel")
            self.group.start(
                "daphne",
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "chatsite.asgi:application"],
                log_path=self.log_dir / "daphne.log",
            )
            for i in range(self.workers):
                self._start_worker_process(i)
            deadline = time.monotonic() + self.start_timeout
            self._wait_for_http(deadline)
            for i in range(self.workers):
                self._wait_for_worker(i, deadline)
        except BaseException:
            self.stop()
            raise
        self.started = True
        return self

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after 10 s) and drop a PostgreSQL database."""
        self.group.stop_all(timeout=10)
        self.infra.stop_all(timeout=10)
        self.started = False
        self._drop_pg_database()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- workers -------------------------------------------------------------------------
    def kill_worker(self, i: int) -> None:
        """SIGKILL inference worker i, as a crash would (its heartbeat key expires on its own)."""
        self.group.kill(f"worker-{i}")

    def stop_worker(self, i: int, timeout: float = 10) -> int | None:
        """Stop inference worker i politely (SIGTERM); return its exit code."""
        return self.group.stop(f"worker-{i}", timeout=timeout)[f"worker-{i}"]

    def start_worker(self, i: int, wait: bool = True, timeout: float = 120) -> None:
        """(Re)start inference worker i; with `wait`, until its heartbeat key is in Redis.

        A dead worker's heartbeat key may still be there until it expires, so it is deleted
        first: the key that `wait` then sees is the new process's.
        """
        if f"worker-{i}" in self.group and self.group[f"worker-{i}"].is_running():
            raise RuntimeError(f"worker {i} is already running")
        with self.redis() as client:
            client.delete(worker_key(self.worker_id(i)))
        self._start_worker_process(i)
        if wait:
            self._wait_for_worker(i, time.monotonic() + timeout)

    def _start_worker_process(self, i: int) -> None:
        self.group.start(
            f"worker-{i}",
            [sys.executable, str(MANAGE_PY), "inferenceworker", "--worker-id", self.worker_id(i)],
            log_path=self.log_dir / f"worker-{i}.log",
        )

    # --- the Celery worker (fine-tuning jobs) ---------------------------------------------
    CELERY_HOSTNAME = "celery@stack-test"

    def start_celery(self) -> None:
        """Start the Celery worker as `make run` does (solo pool, one job at a time), always
        under the same name: a restarted worker resumes the jobs its earlier run left."""
        argv = [sys.executable, "-m", "celery", "-A", "chatsite", "worker", "--loglevel", "info"]
        argv += ["--concurrency", "1", "--pool", "solo", "--hostname", self.CELERY_HOSTNAME]
        # Both queues in one process here (make run gives eval runs a worker of their own).
        argv += ["-Q", "celery,evals"]
        self.group.start("celery", argv, log_path=self.log_dir / "celery.log")

    def kill_celery(self) -> None:
        """SIGKILL the Celery worker, as a crash would."""
        self.group.kill("celery")

    # --- management commands -------------------------------------------------------------
    def run_manage(self, *args: str, input: str | None = None, timeout: float = 300) -> str:
        """Run `manage.py <args>` against the stack's database and Redis; return its stdout."""
        result = subprocess.run(
            [sys.executable, str(MANAGE_PY), *args],
            cwd=REPO,
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(
                f"manage.py {' '.join(args)} failed with code {result.returncode}:\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result.stdout

    def create_user(self, username: str, password: str, *, superuser: bool = False) -> None:
        """Create a user in the stack's database (through `manage.py shell`)."""
        code = (
            "import os\n"
            "from django.contrib.auth import get_user_model\n"
            "User = get_user_model()\n"
            "create = User.objects.create_superuser if os.environ['STACK_SUPERUSER'] == '1' "
            "else User.objects.create_user\n"
            "create(username=os.environ['STACK_USERNAME'], password=os.environ['STACK_PASSWORD'])\n"
        )
        env = {
            **self.env,
            "STACK_USERNAME": username,
            "STACK_PASSWORD": password,
            "STACK_SUPERUSER": "1" if superuser else "0",
        }
        result = subprocess.run(
            [sys.executable, str(MANAGE_PY), "shell", "-c", code],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise StackError(f"could not create user {username!r}:\n{result.stderr[-4000:]}")

    # --- start-up helpers ----------------------------------------------------------------
    def _run_step(self, *args: str) -> None:
        log_path = self.log_dir / f"{args[0]}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            result = subprocess.run(
                [sys.executable, str(MANAGE_PY), *args],
                cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, timeout=self.start_timeout, check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise StackError(self._report(f"manage.py {' '.join(args)} failed with code {result.returncode}"))

    def _check_alive(self) -> None:
        dead = self.group.exited() + self.infra.exited()
        if dead:
            names = ", ".join(f"{c.name} (code {c.returncode})" for c in dead)
            raise StackError(self._report(f"exited during start-up: {names}"))

    def _wait_for_http(self, deadline: float) -> None:
        login = f"{self.url}accounts/login/"
        last = "no answer yet"
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(login, timeout=2) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except (urllib.error.URLError, OSError) as e:
                last = str(e)
            time.sleep(0.2)
        raise StackError(self._report(f"{login} did not answer 200 in time ({last})"))

    def _wait_for_worker(self, i: int, deadline: float) -> None:
        key = worker_key(self.worker_id(i))
        with self.redis() as client:
            while time.monotonic() < deadline:
                self._check_alive()
                if client.exists(key):
                    return
                time.sleep(0.2)
        raise StackError(self._report(f"inference worker {self.worker_id(i)} did not register ({key}) in time"))

    def _report(self, headline: str) -> str:
        parts = [f"Live stack on port {self.port}: {headline}. Logs in {self.log_dir}."]
        for path in sorted(self.log_dir.glob("*.log")):
            parts.append(f"----- last 50 lines of {path.name} -----\n{tail(path, 50)}")
        return "\n".join(parts)

    # --- database ------------------------------------------------------------------------
    def _database_url(self) -> str:
        base = os.environ.get("DATABASE_URL", "")
        if urlparse(base).scheme in ("postgres", "postgresql", "pgsql"):
            self._pg_database = f"chatsite_stack_{secrets.token_hex(4)}"
            self._pg_admin_url = base
            return urlunparse(urlparse(base)._replace(path=f"/{self._pg_database}"))
        return f"sqlite:///{self.tmp_dir / 'db.sqlite3'}"

    def _pg_connect(self):
        import psycopg

        parsed = urlparse(self._pg_admin_url)
        return psycopg.connect(urlunparse(parsed._replace(path="/postgres")), autocommit=True)

    def _create_pg_database(self) -> None:
        if self._pg_database is None:
            return
        with self._pg_connect() as conn:
            conn.execute(f'CREATE DATABASE "{self._pg_database}"')

    def _drop_pg_database(self) -> None:
        if self._pg_database is None:
            return
        with self._pg_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self._pg_database}" WITH (FORCE)')


# --- pytest fixtures: import them into tests/conftest.py ----------------------------------
@pytest.fixture(scope="module")
def live_stack(tmp_path_factory):
    """A running stack with one inference worker, shared by the tests of a module."""
    stack = LiveStack(tmp_path_factory.mktemp("stack"), workers=1)
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture
def live_stack_factory(tmp_path_factory):
    """Start stacks with a chosen number of workers: `live_stack_factory(workers=2)`."""
    stacks: list[LiveStack] = []

    def make(workers: int = 1, **kwargs) -> LiveStack:
        stack = LiveStack(tmp_path_factory.mktemp("stack"), workers=workers, **kwargs)
        stacks.append(stack)
        return stack.start()

    yield make
    for stack in stacks:
        stack.stop()


__all__ = ["LiveStack", "StackError", "free_port", "live_stack", "live_stack_factory"]
