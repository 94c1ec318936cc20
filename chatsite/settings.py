"""Settings for the chat studio: one module, configured by environment variables.

Every setting has a safe embedded default for a single machine (SQLite, a private Redis on a
unix socket under VAR_DIR, the packaged default model). A bad value fails loudly at start-up.
"""

import os
from pathlib import Path
from urllib.parse import urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no).")


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}.")
    return value


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number.") from None


# Runtime state of a single-machine install: SQLite file, private Redis socket, secret key.
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))
# Where converted model weights live (the packaged default is converted here once).
MODEL_DIR = Path(env_str("MODEL_DIR", str(VAR_DIR / "models")))

DEBUG = env_bool("DEBUG", False)


def _secret_key() -> str:
    key = os.environ.get("SECRET_KEY")
    if key:
        return key
    # Local default: a random key generated once and kept under VAR_DIR (never in the repo).
    path = VAR_DIR / "secret_key"
    if path.exists():
        return path.read_text().strip()
    from django.core.management.utils import get_random_secret_key

    VAR_DIR.mkdir(parents=True, exist_ok=True)
    key = get_random_secret_key()
    path.write_text(key)
    path.chmod(0o600)
    return key


SECRET_KEY = _secret_key()

ALLOWED_HOSTS = [h.strip() for h in env_str("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in env_str("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "chat",
    "finetuning",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "chatsite.asgi.application"
WSGI_APPLICATION = None

DATABASES = {
    "default": dj_database_url.parse(env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"), conn_max_age=0)
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (daphne, inference worker, Celery) write to the same file.
    DATABASES["default"].setdefault("OPTIONS", {})
    # IMMEDIATE transactions take the write lock at BEGIN, so concurrent writers wait for each
    # other (busy timeout) instead of failing with "database is locked" when a read upgrades.
    DATABASES["default"]["OPTIONS"].update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Tests run an inference worker in a thread: a file (not shared-cache memory) avoids
    # "table is locked" between connections.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"
SERVE_STATIC = env_bool("SERVE_STATIC", True)

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

# --- Redis: channel layer, token streams, inference queue, Celery broker -------------------
# Unset: the run command starts a private Redis on this unix socket (never port 6379).
PRIVATE_REDIS_SOCKET = VAR_DIR / "redis.sock"
REDIS_URL = env_str("REDIS_URL", f"unix://{PRIVATE_REDIS_SOCKET}")


def _celery_broker_url(redis_url: str) -> str:
    parsed = urlparse(redis_url)
    if parsed.scheme == "unix":
        return f"redis+socket://{parsed.path}"
    return redis_url


# No Channels channel layer: chat replies travel through Redis streams (chat/streams.py, see
# docs/architecture.md), and a layer would hold one blocking Redis connection per open socket
# for nothing. The fine-tuning job page will add one when it needs group broadcasts.
CHANNEL_LAYERS: dict = {}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", _celery_broker_url(REDIS_URL))
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 7 * 24 * 3600}
CELERY_TASK_ALWAYS_EAGER = False

# --- Chat limits ---------------------------------------------------------------------------
CHAT_MAX_FRAME_BYTES = env_int("CHAT_MAX_FRAME_BYTES", 64 * 1024, minimum=1024)
CHAT_MAX_MESSAGE_CHARS = env_int("CHAT_MAX_MESSAGE_CHARS", 16000, minimum=1)
CHAT_MAX_TITLE_CHARS = 200
CHAT_MAX_SYSTEM_PROMPT_CHARS = env_int("CHAT_MAX_SYSTEM_PROMPT_CHARS", 8000, minimum=1)
# Per-user message rate limit: CHAT_RATE_LIMIT messages per CHAT_RATE_WINDOW_S (0 disables).
CHAT_RATE_LIMIT = env_int("CHAT_RATE_LIMIT", 20, minimum=0)
CHAT_RATE_WINDOW_S = env_int("CHAT_RATE_WINDOW_S", 60, minimum=1)
# Deltas are coalesced and flushed about this often (milliseconds).
CHAT_FLUSH_INTERVAL_MS = env_int("CHAT_FLUSH_INTERVAL_MS", 50, minimum=1)
# How long a finished stream's deltas stay in Redis for resume (seconds).
CHAT_STREAM_TTL_S = env_int("CHAT_STREAM_TTL_S", 3600, minimum=10)
# A worker that has not sent a heartbeat for this long is considered dead.
INFERENCE_HEARTBEAT_TTL_S = env_int("INFERENCE_HEARTBEAT_TTL_S", 5, minimum=2)
# A queued reply with no live worker at all is failed after this long.
INFERENCE_QUEUE_TIMEOUT_S = env_int("INFERENCE_QUEUE_TIMEOUT_S", 30, minimum=1)
# Maximum number of requests decoded together in one batch by a worker.
INFERENCE_MAX_BATCH = env_int("INFERENCE_MAX_BATCH", 16, minimum=1)

# /metrics (Prometheus): staff users, or `Authorization: Bearer <METRICS_TOKEN>` when set.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
