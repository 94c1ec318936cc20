"""Production settings: `check --deploy` is clean under docs/deploy.md's environment, every page
carries the Content-Security-Policy and no template needs an inline script, failed logins are
throttled in Redis, and VAR_DIR (0700) and the generated secret key (0600, one key however many
processes start at once) are private."""

from __future__ import annotations

import os
import re
import secrets
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.test import Client
from django.urls import reverse

from chatsite import loginthrottle

REPO = Path(__file__).resolve().parent.parent

# --- manage.py check --deploy --------------------------------------------------------------


def documented_production_env() -> dict[str, str]:
    """The NAME=value lines of the first ```sh block under docs/deploy.md's "Production settings"."""
    text = (REPO / "docs" / "deploy.md").read_text()
    section = text.split("## Production settings", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    env = dict(re.findall(r"^([A-Z_]+)=(.*)$", block, flags=re.MULTILINE))
    assert {"SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "HTTPS", "SECURE_HSTS_SECONDS", "BEHIND_PROXY"} <= env.keys()
    return env


def settings_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A subprocess environment with none of this run's settings, VAR_DIR in tmp_path."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    env.update(DJANGO_SETTINGS_MODULE="chatsite.settings", VAR_DIR=str(tmp_path / "var"), **extra)
    return env


def test_check_deploy_reports_no_issues_under_the_documented_production_env(tmp_path):
    env = settings_env(tmp_path, **documented_production_env())
    env["SECRET_KEY"] = secrets.token_urlsafe(50)  # the docs say to paste a generated one
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues (0 silenced)." in output, output
    assert "WARNING" not in output, output


@pytest.mark.django_db
def test_the_defaults_keep_plain_http_on_localhost_working(client):
    assert not settings.SESSION_COOKIE_SECURE and not settings.CSRF_COOKIE_SECURE
    assert not settings.SECURE_SSL_REDIRECT and settings.SECURE_HSTS_SECONDS == 0
    assert settings.SECURE_PROXY_SSL_HEADER is None
    response = client.get(reverse("login"))
    assert response.status_code == 200  # no redirect to https
    assert "Strict-Transport-Security" not in response


# --- Content-Security-Policy -----------------------------------------------------------------

INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.IGNORECASE)
EVENT_HANDLER = re.compile(r"<[^>]*\son[a-z]+\s*=", re.IGNORECASE)


def assert_strict_policy(response) -> None:
    policy = response["Content-Security-Policy"]
    assert policy == settings.CONTENT_SECURITY_POLICY
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    html = response.content.decode()
    assert not INLINE_SCRIPT.search(html), INLINE_SCRIPT.search(html).group(0)
    assert not EVENT_HANDLER.search(html), EVENT_HANDLER.search(html).group(0)
    assert "javascript:" not in html


@pytest.mark.django_db
def test_the_chat_page_carries_the_content_security_policy(client, alice):
    client.force_login(alice)
    response = client.get(reverse("chat:home"))
    assert response.status_code == 200
    assert_strict_policy(response)


@pytest.mark.django_db
def test_the_login_page_carries_the_content_security_policy(client):
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert_strict_policy(response)


@pytest.mark.django_db
def test_admin_pages_carry_the_content_security_policy(client, django_user_model):
    assert_strict_policy(client.get(reverse("admin:login")))
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-pass-123")
    client.force_login(root)
    for url in (reverse("admin:index"), reverse("admin:auth_user_changelist"), reverse("admin:auth_user_add")):
        response = client.get(url)
        assert response.status_code == 200, url
        assert_strict_policy(response)


@pytest.mark.django_db
def test_json_responses_carry_no_policy(client, alice):
    client.force_login(alice)
    response = client.get(reverse("chat:conversation_list"))
    assert response["Content-Type"].startswith("application/json")
    assert "Content-Security-Policy" not in response


def test_no_template_has_an_inline_script_or_event_handler():
    templates = [p for p in REPO.glob("*/templates/**/*.html")] + list((REPO / "templates").glob("**/*.html"))
    assert templates
    for template in templates:
        text = template.read_text()
        assert not INLINE_SCRIPT.search(text), f"{template}: {INLINE_SCRIPT.search(text).group(0)}"
        assert not EVENT_HANDLER.search(text), f"{template}: {EVENT_HANDLER.search(text).group(0)}"
        assert "javascript:" not in text, template


# --- Login throttling ------------------------------------------------------------------------


@pytest.fixture
def throttle(settings):
    """Throttling on (5 failures), on a clean slate in Redis, and clean again afterwards."""
    settings.LOGIN_FAILURE_LIMIT = 5
    settings.LOGIN_FAILURE_WINDOW_S = 300
    client = redis.Redis.from_url(settings.REDIS_URL)

    def clear() -> None:
        for key in client.scan_iter("login:failures:*"):
            client.delete(key)

    clear()
    yield settings
    clear()


def log_in(client: Client, username: str, password: str, ip: str, url: str | None = None):
    return client.post(url or reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=ip)


def error_text(response) -> str:
    return " ".join(str(e) for e in response.context["form"].non_field_errors())


@pytest.mark.django_db
def test_the_sixth_bad_login_is_refused_and_so_is_a_good_one_until_the_window_passes(client, alice, throttle):
    throttle.LOGIN_FAILURE_WINDOW_S = 3
    for _ in range(5):
        response = log_in(client, "alice", "wrong-password", "10.0.0.1")
        assert response.status_code == 200
        assert "Please enter a correct username and password" in error_text(response)

    refused = log_in(client, "alice", "wrong-password", "10.0.0.1")
    assert refused.status_code == 429
    wait = int(refused["Retry-After"])
    assert 1 <= wait <= 3
    assert re.fullmatch(r"Too many failed logins\. Try again in [123] seconds?\.", error_text(refused))

    good = log_in(client, "alice", "alice-pass-123", "10.0.0.1")
    assert good.status_code == 429  # the password is not even checked
    assert "_auth_user_id" not in client.session

    time.sleep(3.2)
    allowed = log_in(client, "alice", "alice-pass-123", "10.0.0.1")
    assert allowed.status_code == 302
    assert client.session["_auth_user_id"] == str(alice.pk)


@pytest.mark.django_db
def test_the_refusal_names_the_wait_in_minutes_for_a_long_window(client, alice, throttle):
    for _ in range(5):
        log_in(client, "alice", "wrong-password", "10.0.0.2")
    refused = log_in(client, "alice", "alice-pass-123", "10.0.0.2")
    assert refused.status_code == 429
    assert error_text(refused) == "Too many failed logins. Try again in 5 minutes."


@pytest.mark.django_db
def test_one_person_s_typos_lock_their_username_not_the_office_behind_the_same_address(client, alice, bob, throttle):
    """Issue 25, item 12: five wrong passwords for one user locked out every user behind the same
    address, the admin included."""
    for _ in range(5):
        log_in(client, "alice", "wrong-password", "10.0.0.3")
    # The username is locked from any address...
    assert log_in(Client(), "alice", "alice-pass-123", "10.0.0.4").status_code == 429
    # ...but a colleague behind the same address logs in.
    other = Client()
    assert log_in(other, "bob", "bob-pass-123", "10.0.0.3").status_code == 302
    assert other.session["_auth_user_id"] == str(bob.pk)


@pytest.mark.django_db
def test_an_address_that_tries_many_usernames_is_refused_for_all(client, bob, throttle):
    throttle.LOGIN_ADDRESS_USERNAME_LIMIT = 10
    for i in range(10):  # password spraying: one guess each for ten accounts
        assert log_in(Client(), f"user{i}", "Spring2026!", "10.0.0.5").status_code == 200
    assert log_in(Client(), "bob", "bob-pass-123", "10.0.0.5").status_code == 429
    assert log_in(Client(), "bob", "bob-pass-123", "10.0.0.6").status_code == 302  # elsewhere, bob is fine


@pytest.mark.django_db
def test_a_successful_login_clears_the_usernames_failures(client, alice, throttle):
    for _ in range(4):
        log_in(Client(), "alice", "wrong-password", "10.0.1.1")
    assert log_in(Client(), "alice", "alice-pass-123", "10.0.1.2").status_code == 302
    # Without the reset, the username would be locked after the next failure.
    for _ in range(4):
        response = log_in(Client(), "alice", "wrong-password", "10.0.1.3")
        assert response.status_code == 200
        assert "Please enter a correct username and password" in error_text(response)


@pytest.mark.django_db
def test_the_admin_login_is_throttled_too(client, django_user_model, throttle):
    django_user_model.objects.create_superuser("root", "root@example.com", "root-pass-123")
    url = reverse("admin:login")
    for _ in range(5):
        assert "Please enter the correct username and password" in error_text(
            log_in(client, "root", "x", "10.0.2.1", url)
        )
    refused = log_in(client, "root", "root-pass-123", "10.0.2.1", url)
    assert error_text(refused) == "Too many failed logins. Try again in 5 minutes."
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_behind_a_proxy_the_address_is_the_last_forwarded_one(rf, throttle):
    request = rf.get("/", REMOTE_ADDR="10.9.9.9", HTTP_X_FORWARDED_FOR="1.2.3.4, 203.0.113.7")
    assert loginthrottle.client_ip(request) == "10.9.9.9"  # not trusted unless BEHIND_PROXY
    throttle.BEHIND_PROXY = True
    assert loginthrottle.client_ip(request) == "203.0.113.7"  # the entry the proxy appended


@pytest.mark.django_db
def test_logins_are_not_throttled_when_redis_is_down(client, alice, throttle, caplog):
    throttle.REDIS_URL = "redis://127.0.0.1:1/15"  # nothing listens there
    for _ in range(6):
        assert log_in(client, "alice", "wrong-password", "10.0.3.1").status_code == 200
    assert log_in(client, "alice", "alice-pass-123", "10.0.3.1").status_code == 302
    assert "Login throttling is off: Redis is unreachable" in caplog.text


# --- VAR_DIR and the generated secret key --------------------------------------------------

PRINT_KEY = "from django.conf import settings; print(settings.SECRET_KEY)"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_settings_create_a_private_var_dir_and_secret_key(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", PRINT_KEY], cwd=REPO, env=settings_env(tmp_path), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    var_dir = tmp_path / "var"
    assert mode(var_dir) == 0o700
    assert mode(var_dir / "secret_key") == 0o600
    assert (var_dir / "secret_key").read_text() == result.stdout.strip()
    assert len(result.stdout.strip()) >= 50
    assert os.listdir(var_dir) == ["secret_key"]  # no temporary file left behind


def test_an_existing_var_dir_and_key_file_are_tightened_and_the_key_kept(tmp_path):
    var_dir = tmp_path / "var"
    var_dir.mkdir(mode=0o755)
    var_dir.chmod(0o755)
    (var_dir / "secret_key").write_text("an-existing-key-" + "x" * 40 + "\n")
    (var_dir / "secret_key").chmod(0o644)
    result = subprocess.run(
        [sys.executable, "-c", PRINT_KEY], cwd=REPO, env=settings_env(tmp_path), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "an-existing-key-" + "x" * 40
    assert mode(var_dir) == 0o700
    assert mode(var_dir / "secret_key") == 0o600


def test_processes_starting_at_once_agree_on_one_generated_key(tmp_path):
    # Each process imports what the settings need first, then waits for the go file, so that all
    # of them load the settings (and race to create the key) at the same moment.
    go = tmp_path / "go"
    script = (
        "import os, time\n"
        "import dj_database_url, django.core.management.utils\n"
        "from django.conf import settings\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.001)\n"
        "print(settings.SECRET_KEY)\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=REPO,
            env=settings_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    time.sleep(1.0)
    go.touch()
    outputs = [p.communicate(timeout=60) for p in processes]
    assert all(p.returncode == 0 for p in processes), [err for _, err in outputs]
    keys = {out.strip() for out, _ in outputs}
    key_file = tmp_path / "var" / "secret_key"
    assert keys == {key_file.read_text()}
    assert mode(key_file) == 0o600
    assert os.listdir(tmp_path / "var") == ["secret_key"]
