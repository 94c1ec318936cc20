"""The launcher's supervisor (`chatsite.processes.Supervisor`) on small dummy child processes:
crashed children with a restart policy come back, with growing delays, until they crash too
often; any other child's death stops everything."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from chatsite.processes import ProcessGroup, RestartPolicy, Supervisor, describe_exit

SLEEPER = "import sys, time; print('up', *sys.argv[1:], flush=True); time.sleep(60)"
CRASHER = "import sys; sys.exit(3)"
# Tiny numbers: the tests assert on the delays the supervisor chose, never on wall-clock precision.
FAST = RestartPolicy(initial_delay_s=0.01, max_delay_s=0.04, reset_after_s=60, max_crashes=5, window_s=60)


class Recorder:
    """A sink for the group's output and the supervisor's lines."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, name: str, line: str) -> None:
        self.lines.append((name, line))

    def say(self, line: str) -> None:
        self.lines.append(("supervisor", line))

    def of(self, name: str) -> list[str]:
        return [line for n, line in list(self.lines) if n == name]


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def group(recorder):
    group = ProcessGroup(sink=recorder)
    yield group
    group.stop_all(timeout=2)


def python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def poll_until(supervisor: Supervisor, condition, timeout: float = 20) -> str | None:
    """Poll as runstack's watch loop does until `condition()` holds or the supervisor gives up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failure = supervisor.poll()
        if failure or condition():
            return failure
        time.sleep(0.01)
    raise AssertionError("timed out waiting for the supervisor")


def wait_for_line(recorder: Recorder, name: str, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in recorder.of(name):
        assert time.monotonic() < deadline, f"no {text!r} from {name}: {recorder.lines}"
        time.sleep(0.01)


def test_a_worker_killed_with_sigkill_is_restarted_under_a_new_id_and_the_signal_is_logged(group, recorder):
    group.start("worker-0", python(SLEEPER, "w0"))
    supervisor = Supervisor(group, say=recorder.say)
    supervisor.restart_on_crash("worker-0", FAST, argv=lambda n: python(SLEEPER, f"w0-r{n}"))
    wait_for_line(recorder, "worker-0", "up w0")
    old_pid = group["worker-0"].pid

    os.kill(old_pid, signal.SIGKILL)  # as the out-of-memory killer would
    failure = poll_until(supervisor, lambda: group["worker-0"].pid != old_pid)

    assert failure is None
    new = group["worker-0"]
    assert new.is_running() and new.pid != old_pid
    wait_for_line(recorder, "worker-0", "up w0-r1")
    crash_line, restart_line = recorder.of("supervisor")
    assert crash_line.startswith(f"worker-0 (pid {old_pid}) exited unexpectedly (killed by SIGKILL, possibly by the ")
    assert "out-of-memory killer" in crash_line and "restarting it in 0.01 s" in crash_line
    assert restart_line.startswith(f"restarted worker-0 (pid {new.pid}, restart 1): ")
    assert restart_line.endswith("w0-r1")
    assert supervisor.restarts("worker-0") == 1
    assert [(c.pid, c.returncode, c.delay_s) for c in supervisor.crashes] == [(old_pid, -signal.SIGKILL, 0.01)]


def test_a_restarted_child_keeps_its_argv_env_and_log_file_by_default(group, recorder, tmp_path):
    log = tmp_path / "celery.log"
    code = "import os, time; print('up', os.environ['MARK'], flush=True); time.sleep(60)"
    group.start("celery", python(code), env={"MARK": "m1"}, log_path=log)
    supervisor = Supervisor(group, say=recorder.say)
    supervisor.restart_on_crash("celery", FAST)
    old = group["celery"]
    deadline = time.monotonic() + 20
    while "up m1" not in log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.01)

    os.kill(old.pid, signal.SIGTERM)  # not sent by the group: a crash
    assert poll_until(supervisor, lambda: group["celery"] is not old) is None

    assert group["celery"].argv == old.argv
    while log.read_text().count("up m1") < 2:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)
    assert "(killed by SIGTERM)" in recorder.of("supervisor")[0]


def test_a_worker_that_keeps_crashing_stops_everything_after_max_crashes_with_the_reason(group, recorder, tmp_path):
    log = tmp_path / "worker-0.log"
    group.start("worker-0", python(CRASHER), log_path=log)
    supervisor = Supervisor(group, say=recorder.say)
    policy = RestartPolicy(initial_delay_s=0.01, max_delay_s=0.04, reset_after_s=60, max_crashes=5, window_s=60)
    supervisor.restart_on_crash("worker-0", policy)

    failure = poll_until(supervisor, lambda: False)

    assert failure is not None
    assert failure.startswith(f"worker-0 (pid {group['worker-0'].pid}) exited unexpectedly (code 3) after running ")
    assert "It crashed 5 times in " in failure
    assert "(the limit is 5 within 60 s), so it is not restarted again." in failure
    assert failure.endswith(f"Its log: {log}")
    # 1, 2, 4 times the first delay, capped; the fifth crash is not restarted.
    assert [c.delay_s for c in supervisor.crashes] == [0.01, 0.02, 0.04, 0.04, None]
    assert supervisor.restarts("worker-0") == 4
    assert len(recorder.of("supervisor")) == 8  # a crash line and a restart line, four times
    assert not group["worker-0"].is_running()


def test_the_backoff_doubles_up_to_its_cap():
    policy = RestartPolicy(initial_delay_s=1, max_delay_s=30)
    assert [policy.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_the_backoff_starts_over_when_the_child_had_run_for_a_while(group, recorder):
    # Each run lasts about 0.3 s, longer than reset_after_s: every crash counts as the first.
    group.start("worker-0", python("import sys, time; time.sleep(0.3); sys.exit(1)"))
    supervisor = Supervisor(group, say=recorder.say)
    policy = RestartPolicy(initial_delay_s=0.01, max_delay_s=1, reset_after_s=0.2, max_crashes=10, window_s=60)
    supervisor.restart_on_crash("worker-0", policy)

    assert poll_until(supervisor, lambda: len(supervisor.crashes) == 3) is None

    assert [c.delay_s for c in supervisor.crashes] == [0.01, 0.01, 0.01]


def test_crashes_further_apart_than_the_window_never_stop_it(group, recorder):
    group.start("worker-0", python(CRASHER))
    supervisor = Supervisor(group, say=recorder.say)
    # Each restart waits longer than the window, so at most one crash is ever inside it.
    policy = RestartPolicy(initial_delay_s=0.15, max_delay_s=0.15, reset_after_s=60, max_crashes=2, window_s=0.1)
    supervisor.restart_on_crash("worker-0", policy)

    assert poll_until(supervisor, lambda: len(supervisor.crashes) == 4) is None

    crash_lines = [line for line in recorder.of("supervisor") if "exited unexpectedly" in line]
    assert len(crash_lines) == 4
    assert all("(crash 1 within 0.1 s; crash 2 stops everything)" in line for line in crash_lines), crash_lines


def test_a_child_without_a_restart_policy_stops_everything_when_it_dies(group, recorder):
    group.start("daphne", python(SLEEPER, "daphne"))
    group.start("worker-0", python(SLEEPER, "w0"))
    supervisor = Supervisor(group, say=recorder.say)
    supervisor.restart_on_crash("worker-0", FAST)
    wait_for_line(recorder, "daphne", "up daphne")
    daphne = group["daphne"]

    os.kill(daphne.pid, signal.SIGKILL)
    failure = poll_until(supervisor, lambda: False)

    assert failure == (
        f"daphne (pid {daphne.pid}) exited unexpectedly (killed by SIGKILL, possibly by the out-of-memory "
        "killer: see `dmesg`); it is not restarted. Its output is above, in the lines starting with `daphne`."
    )
    assert group["daphne"] is daphne and not daphne.is_running()
    assert group["worker-0"].is_running()
    assert supervisor.crashes == [] and recorder.of("supervisor") == []


def test_a_child_stopped_on_purpose_is_not_restarted(group, recorder):
    group.start("worker-0", python(SLEEPER, "w0"))
    supervisor = Supervisor(group, say=recorder.say)
    supervisor.restart_on_crash("worker-0", FAST)

    group.stop("worker-0", timeout=5)

    assert supervisor.poll() is None
    time.sleep(0.05)
    assert supervisor.poll() is None
    assert supervisor.crashes == [] and not group["worker-0"].is_running()


def test_exits_are_described_by_code_or_signal_name():
    assert describe_exit(0) == "code 0"
    assert describe_exit(2) == "code 2"
    assert describe_exit(-signal.SIGTERM) == "killed by SIGTERM"
    assert describe_exit(-signal.SIGKILL).startswith("killed by SIGKILL, possibly by the out-of-memory killer")


def test_runstack_waits_for_workers_by_the_heartbeat_key_it_is_given(settings):
    import redis

    from chatsite.management.commands.runstack import registered_workers

    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        client.set("test:worker:host-0-r1", "{}", ex=10)
        key = lambda worker_id: f"test:worker:{worker_id}"  # noqa: E731
        assert registered_workers(client, ["host-0", "host-0-r1"], key) == {"host-0-r1"}
    finally:
        client.delete("test:worker:host-0-r1")
        client.close()
