"""`manage.py runstack`: everything on one machine, in the foreground.

A private Redis (when REDIS_URL is unset), migrations, the default model, an admin account,
then daphne, the inference worker(s) and the Celery worker as supervised children. Ctrl-C or
SIGTERM stops them all.

A crashed inference or Celery worker (a bug, SIGKILL, the out-of-memory killer) is restarted
after 1 s, 2 s, 4 s ... (at most 30 s); a restarted inference worker gets a new worker id
(`<host>-0-r1`, ...), so the replies the dead one was running are seen as orphaned and marked
interrupted. Five crashes of one worker within 120 s, or the death of daphne or Redis, stop
everything with a message that says why, and runstack exits non-zero.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from chatsite.processes import ProcessGroup, RedisStartError, RestartPolicy, Supervisor, start_private_redis

MANAGE_PY = Path(settings.BASE_DIR) / "manage.py"
STOP_TIMEOUT_S = 10.0
REDIS_START_TIMEOUT_S = 15.0
# Inference and Celery workers are restarted when they crash; daphne and Redis are not.
WORKER_RESTARTS = RestartPolicy(initial_delay_s=1, max_delay_s=30, reset_after_s=60, max_crashes=5, window_s=120)


class _Shutdown(Exception):
    """Raised by the signal handler while the stack is still being set up."""


class Command(BaseCommand):
    help = (
        "Run the whole stack on this machine: a private Redis (when REDIS_URL is unset), "
        "migrations, the default model, an admin account, daphne, the inference worker(s) "
        "and the Celery worker. A crashed inference or Celery worker is restarted. Ctrl-C stops everything."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Address daphne binds (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8000, help="Port daphne listens on (default 8000).")
        parser.add_argument("--no-celery", action="store_true", help="Do not start the Celery worker.")
        parser.add_argument("--workers", type=int, default=1, help="Number of inference worker processes (default 1).")

    def handle(self, *args, **options) -> None:
        if options["workers"] < 0:
            raise CommandError("--workers must be 0 or more.")
        self.signals_received = 0
        # "setup": a signal aborts the current step; "admin": a signal waits until the new admin
        # password is printed; "running": the watch loop notices the signal and returns;
        # "stopping": further signals are ignored (children get 10 s at most).
        self.phase = "setup"
        self.group = ProcessGroup()  # daphne, workers, celery
        self.infra = ProcessGroup(sink=self.group.sink)  # the private Redis: stopped last
        self.supervisor = Supervisor(self.group, say=self.say)  # restarts crashed workers
        self.infra_supervisor = Supervisor(self.infra, say=self.say)  # Redis: never restarted
        self.worker_ids: dict[str, str] = {}  # inference worker child -> its current worker id
        self.unregistered: set[str] = set()  # inference worker children not yet in Redis
        self.workers_announced = False
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = self._run(options)
        except _Shutdown:
            self.say("Interrupted during start-up.")
            code = 0
        finally:
            self.phase = "stopping"
            self._stop_everything()
            for s, handler in previous.items():
                signal.signal(s, handler)
        if code:
            sys.exit(code)

    # --- signals -------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.signals_received += 1
        if self.phase == "setup" and self.signals_received == 1:
            raise _Shutdown
        # While running, the watch loop sees the count within a fraction of a second.

    # --- the steps -----------------------------------------------------------------------
    def _run(self, options) -> int:
        host, port = options["host"], options["port"]
        _check_port_free(host, port)
        env = dict(os.environ)
        env.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
        Path(settings.VAR_DIR).mkdir(parents=True, exist_ok=True)

        if not os.environ.get("REDIS_URL"):
            env["REDIS_URL"] = self._start_private_redis()
        else:
            self.say(f"Using Redis at {_redact(os.environ['REDIS_URL'])}.")

        self._manage(env, "migrate", "--no-input")
        self._manage(env, "installdefaultmodel")
        self._ensure_admin(options)

        python = sys.executable
        self.group.env = env
        self.group.cwd = settings.BASE_DIR
        self._start("daphne", [python, "-m", "daphne", "-b", host, "-p", str(port), "chatsite.asgi:application"])
        hostname = socket.gethostname()
        for i in range(options["workers"]):
            # The launcher's pid makes ids unique per run: a reply left "generating" by a run that
            # was hard-killed must not look alive under the next run's worker of the same number.
            name, worker_id = f"worker-{i}", f"{hostname}-{os.getpid()}-{i}"
            self._start(name, self._worker_argv(name, worker_id))
            restarted = partial(self._restarted_worker_argv, name, worker_id)
            self.supervisor.restart_on_crash(name, WORKER_RESTARTS, restarted)
        if not options["no_celery"]:
            # -B: the embedded beat scheduler runs the periodic tasks (the logs purge, chat.tasks).
            celery = "-m celery -A chatsite worker -B --loglevel info --concurrency 1 --pool solo".split()
            self._start("celery", [python, *celery, "--hostname", f"celery@{hostname}"])
            self.supervisor.restart_on_crash("celery", WORKER_RESTARTS)
            # Eval runs (evals/tasks.py) on a queue and worker of their own: a run mostly waits for
            # the inference workers, so threads; it never waits behind a fine-tuning job.
            evals = "-m celery -A chatsite worker -Q evals --loglevel info --concurrency 4 --pool threads".split()
            self._start("celery-evals", [python, *evals, "--hostname", f"evals@{hostname}"])
            self.supervisor.restart_on_crash("celery-evals", WORKER_RESTARTS)
        self.phase = "running"
        return self._watch(host, port, env["REDIS_URL"])

    def _worker_argv(self, name: str, worker_id: str) -> list[str]:
        """Inference worker `worker_id`'s command line; the watch loop waits for it to register."""
        self.worker_ids[name] = worker_id
        self.unregistered.add(name)
        return [sys.executable, str(MANAGE_PY), "inferenceworker", "--worker-id", worker_id]

    def _restarted_worker_argv(self, name: str, first_id: str, restart: int) -> list[str]:
        # A new id (<host>-0-r1, -r2, ...): under the old one, the new process's heartbeat would
        # keep the replies the dead one had claimed looking alive, never marked interrupted.
        return self._worker_argv(name, f"{first_id}-r{restart}")

    def _watch(self, host: str, port: int, redis_url: str) -> int:
        import redis

        announced = False
        started = time.monotonic()
        client = redis.Redis.from_url(redis_url, socket_timeout=2)
        try:
            while not self.signals_received:
                failure = self.supervisor.poll() or self.infra_supervisor.poll()
                if failure:
                    self.say_error(failure)
                    self.say_error("Stopping everything.")
                    return 1
                if not announced and _port_open(_connect_host(host), port):
                    announced = True
                    self.say(
                        f"Serving on http://{_connect_host(host)}:{port}/ "
                        f"(started in {time.monotonic() - started:.1f} s). Press Ctrl-C to stop."
                    )
                if self.unregistered:
                    self._note_registered_workers(client)
                time.sleep(0.2)
        finally:
            client.close()
        self.say("Stopping (signal received)...")
        return 0

    def _note_registered_workers(self, client) -> None:
        ids = {self.worker_ids[name]: name for name in self.unregistered}
        for worker_id in registered_workers(client, ids):
            name = ids[worker_id]
            self.unregistered.discard(name)
            crash = self.supervisor.last_crash(name)
            if self.workers_announced and crash is not None:
                back = time.monotonic() - crash.at
                self.say(f"Inference worker {worker_id} ready ({name} restarted, {back:.1f} s after the crash).")
        if not self.workers_announced and not self.unregistered:
            self.workers_announced = True
            self.say(f"Inference worker(s) ready: {', '.join(self.worker_ids.values())}.")

    def _start(self, name: str, argv: list[str]) -> None:
        child = self.group.start(name, argv)
        shown = ["python", *argv[1:]] if argv[0] == sys.executable else argv
        self.say(f"started {name} (pid {child.pid}): {' '.join(shown)}")

    def _stop_everything(self) -> None:
        if self.group.children:
            codes = self.group.stop_all(timeout=STOP_TIMEOUT_S)
            self.say("stopped " + ", ".join(f"{n} ({_describe(c)})" for n, c in codes.items()))
        if self.infra.children:
            self.infra.stop_all(timeout=STOP_TIMEOUT_S)
            socket_path = Path(settings.PRIVATE_REDIS_SOCKET)
            socket_path.unlink(missing_ok=True)
            self.say("stopped the private Redis.")

    # --- private Redis -------------------------------------------------------------------
    def _start_private_redis(self) -> str:
        socket_path = Path(settings.PRIVATE_REDIS_SOCKET)
        try:
            url = start_private_redis(self.infra, socket_path, workdir=settings.VAR_DIR, timeout=REDIS_START_TIMEOUT_S)
        except RedisStartError as e:
            hint = f" Is another runstack using VAR_DIR {settings.VAR_DIR}?" if "answers" in str(e) else ""
            raise CommandError(f"{e}{hint}") from None
        self.say(f"started redis (pid {self.infra['redis'].pid}): private, on unix socket {socket_path}")
        return url

    # --- one-shot steps ------------------------------------------------------------------
    def _manage(self, env: dict[str, str], *args: str) -> None:
        self.say(f"manage.py {' '.join(args)}")
        result = subprocess.run([sys.executable, str(MANAGE_PY), *args], env=env, cwd=settings.BASE_DIR, check=False)
        if result.returncode != 0:
            raise CommandError(f"manage.py {' '.join(args)} failed with code {result.returncode}.")

    def _ensure_admin(self, options) -> None:
        User = get_user_model()
        url = f"http://{_connect_host(options['host'])}:{options['port']}/"
        try:
            admin = User.objects.filter(is_superuser=True).order_by("pk").first()
            if admin is not None:
                self.say(
                    f"An admin account exists ({admin.get_username()}). Forgot its password? "
                    f"Run: python manage.py changepassword {admin.get_username()}"
                )
                return
            username = "admin"
            n = 1
            while User.objects.filter(username=username).exists():
                n += 1
                username = f"admin{n}"
            password = secrets.token_urlsafe(12)
            # A Ctrl-C between creating the account and printing its password would lose it:
            # the signal handler only counts signals in this phase; we act on them once printed.
            self.phase = "admin"
            User.objects.create_superuser(username=username, email="", password=password)
            self._print_password(url, username, password)
        finally:
            connections.close_all()
        self.phase = "setup"
        if self.signals_received:
            raise _Shutdown

    def _print_password(self, url: str, username: str, password: str) -> None:
        line = f"Log in at {url} as {username} / {password}"
        bar = "=" * max(len(line), 60)
        self.stdout.write(
            "\n".join(
                [
                    "",
                    bar,
                    "Created the admin account. Its password is shown only this once:",
                    "",
                    self.style.SUCCESS(line),
                    "",
                    f"(Change it later with: python manage.py changepassword {username})",
                    bar,
                    "",
                ]
            )
        )
        self.stdout.flush()

    # --- output --------------------------------------------------------------------------
    def say(self, message: str) -> None:
        self.group_sink("runstack", message)

    def say_error(self, message: str) -> None:
        self.group_sink("runstack", self.style.ERROR(message))

    def group_sink(self, name: str, message: str) -> None:
        # Share the children's writer so launcher lines never interleave with theirs.
        self.group.sink(name, message)


def registered_workers(client, worker_ids: Iterable[str], key: Callable[[str], str] | None = None) -> set[str]:
    """The ids among `worker_ids` whose heartbeat key (`key(id)`) is in Redis right now."""
    import redis

    if key is None:
        key = _worker_key_function()
    try:
        return {w for w in worker_ids if client.exists(key(w))}
    except redis.RedisError:
        return set()


def _worker_key_function() -> Callable[[str], str]:
    # The inference app is taking over the worker's Redis keys from chat (chat:worker:<id> becomes
    # inference:worker:<id>); use whichever this checkout has.
    try:
        from inference.streams import worker_key
    except ModuleNotFoundError as e:
        if e.name not in ("inference", "inference.streams"):
            raise
        from chat.streams import worker_key
    return worker_key


def _connect_host(host: str) -> str:
    """The address to show and probe for a bind address (0.0.0.0 -> 127.0.0.1)."""
    if host in ("0.0.0.0", "", "*"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _check_port_free(host: str, port: int) -> None:
    """Fail before starting anything when daphne could not listen (an old runstack still running?)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise CommandError(f"Cannot listen on {host!r}: {e}.") from None
    family, socktype, proto, _, address = infos[0]
    with socket.socket(family, socktype, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            raise CommandError(
                f"Cannot listen on {host}:{port} ({e.strerror}). Is another server using it? "
                "Choose another with --port."
            ) from None


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _describe(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit {code}"


def _redact(url: str) -> str:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url
