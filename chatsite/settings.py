"""Settings for the chat studio: one module, configured by environment variables.

Every setting has a safe embedded default for a single machine (SQLite, a private Redis on a
unix socket under VAR_DIR, the packaged default model). A bad value fails loudly at start-up.
"""

import os
import secrets
import stat
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


def _make_private(path: Path, mode: int) -> None:
    """Give a file or folder we own exactly `mode` (someone else's is left alone)."""
    info = path.stat()
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != mode:
        path.chmod(mode)


def _private_var_dir() -> None:
    """VAR_DIR holds the secret key, the SQLite file and the private Redis socket: owner only (0700).

    Created when this process keeps something there by default; an existing one is tightened.
    """
    if not all(os.environ.get(name) for name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL")):
        VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    if VAR_DIR.is_dir():
        _make_private(VAR_DIR, 0o700)


def _read_secret_key(path: Path) -> str:
    _make_private(path, 0o600)
    key = path.read_text().strip()
    if not key:
        raise ImproperlyConfigured(f"{path} is empty: delete it to generate a new key, or set SECRET_KEY.")
    return key


def _secret_key() -> str:
    key = os.environ.get("SECRET_KEY")
    if key:
        return key
    # Local default: a random key generated once and kept under VAR_DIR (never in the repo).
    path = VAR_DIR / "secret_key"
    if path.exists():
        return _read_secret_key(path)
    from django.core.management.utils import get_random_secret_key

    # Several processes start at once (daphne, workers, Celery): each writes a complete key to its
    # own 0600 temporary file, then hard-links it to the final name, which succeeds for exactly
    # one of them; the others read the winner's key. The file is never seen empty or half-written.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(get_random_secret_key())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race; its key is the key
    finally:
        tmp.unlink(missing_ok=True)
    return _read_secret_key(path)


_private_var_dir()
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
    "chatsite",
    "inference",
    "chat",
    "finetuning",
    "moderation",
    "presets",
    "dashboard",
    "api",
    "evals",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "api.middleware.ApiJsonErrors",  # every answer under /v1 is JSON (OpenAI's error shape)
    "chatsite.security.ContentSecurityPolicyMiddleware",
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
# Behind a proxy that serves collectstatic output, point this outside VAR_DIR (which is 0700).
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
SERVE_STATIC = env_bool("SERVE_STATIC", True)

# --- HTTPS, cookies and security headers ---------------------------------------------------
# The defaults suit `make run` on http://127.0.0.1:8000; docs/deploy.md lists the production
# values, under which `manage.py check --deploy` reports no issues.
# HTTPS=1: the site is reached over https only: secure cookies, and http requests are redirected.
HTTPS = env_bool("HTTPS", False)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", HTTPS)
# Strict-Transport-Security (sent over https only); 0 sends none. Production: 31536000 (a year).
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# BEHIND_PROXY=1: a proxy terminates TLS and forwards X-Forwarded-Proto (which it must set,
# overwriting the client's) and appends the client address to X-Forwarded-For (login throttling
# reads the last entry). Never set it when clients reach daphne directly: they could forge both.
BEHIND_PROXY = env_bool("BEHIND_PROXY", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if BEHIND_PROXY else None
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Sent with every HTML page (chatsite.security); empty sends none. Pages load scripts and styles
# from /static/ only (no inline script, no eval, and a style="" attribute is ignored). Under
# CSP Level 3, 'self' in connect-src also allows the page's own ws:// or wss:// origin, which
# the chat socket uses (any browser since 2022), and no other socket host.
CONTENT_SECURITY_POLICY = env_str(
    "CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'",
)

# --- Login throttling (chatsite/loginthrottle.py) ------------------------------------------
# After LOGIN_FAILURE_LIMIT failed logins for one username within
# LOGIN_FAILURE_WINDOW_S seconds, further attempts are refused, the password unchecked, until
# enough of those failures are older than the window. 0 turns the limit off.
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=0)
LOGIN_FAILURE_WINDOW_S = env_int("LOGIN_FAILURE_WINDOW_S", 300, minimum=1)
# From one client address: after failed logins for this many distinct usernames within the window
# (password spraying), every attempt from it is refused; one person's typos never lock out the
# others behind the same address (an office's NAT).
LOGIN_ADDRESS_USERNAME_LIMIT = env_int("LOGIN_ADDRESS_USERNAME_LIMIT", 10, minimum=0)

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
# Eval runs have a queue of their own: `make run` gives it its own worker (threads), so a run
# never waits behind a fine-tuning job, which takes the default queue's one slot for its length.
CELERY_TASK_ROUTES = {"evals.*": {"queue": "evals"}}

# --- Chat limits ---------------------------------------------------------------------------
CHAT_MAX_FRAME_BYTES = env_int("CHAT_MAX_FRAME_BYTES", 64 * 1024, minimum=1024)
CHAT_MAX_MESSAGE_CHARS = env_int("CHAT_MAX_MESSAGE_CHARS", 16000, minimum=1)
# Characters per token the chat page's counter assumes: on the safe side of the packaged model's
# tokenizer (bench/token_counter.py: 2.87 at the lowest on prose, Markdown with code, code and
# JSON Lines; medians 3.35-3.64), so the page rarely shows a message fitting that does not. The
# socket counts exactly with the model's tokenizer near the limit (chat/limits.py).
CHAT_CHARS_PER_TOKEN = env_float("CHAT_CHARS_PER_TOKEN", 2.8)
if not CHAT_CHARS_PER_TOKEN > 0:
    raise ImproperlyConfigured(f"CHAT_CHARS_PER_TOKEN={CHAT_CHARS_PER_TOKEN} must be above 0.")
CHAT_MAX_TITLE_CHARS = 200
# After a conversation's first reply, its model writes a short title in the background (chat/titles.py).
CHAT_MODEL_TITLES = env_bool("CHAT_MODEL_TITLES", True)
CHAT_TITLE_MAX_TOKENS = env_int("CHAT_TITLE_MAX_TOKENS", 16, minimum=1)
# A title request is background work (it waits while people's replies run); one still waiting after
# this many seconds is dropped and the cut first message stays the title.
CHAT_TITLE_WAIT_S = env_int("CHAT_TITLE_WAIT_S", 300, minimum=1)
CHAT_MAX_SYSTEM_PROMPT_CHARS = env_int("CHAT_MAX_SYSTEM_PROMPT_CHARS", 8000, minimum=1)
# Per-user message rate limit: CHAT_RATE_LIMIT messages per CHAT_RATE_WINDOW_S (0 disables).
CHAT_RATE_LIMIT = env_int("CHAT_RATE_LIMIT", 20, minimum=0)
CHAT_RATE_WINDOW_S = env_int("CHAT_RATE_WINDOW_S", 60, minimum=1)
# Conversation logs: conversations users deleted and replies regenerate replaced stay, hidden
# from their users, for the admins this many days; then chat.retention purges them (0: at its
# next run). The purge runs every LOGS_PURGE_INTERVAL_S in the Celery worker, or `purgelogs`.
LOGS_RETENTION_DAYS = env_int("LOGS_RETENTION_DAYS", 30, minimum=0)
LOGS_PURGE_INTERVAL_S = env_int("LOGS_PURGE_INTERVAL_S", 3600, minimum=60)
CELERY_BEAT_SCHEDULE = {
    "purge-logs": {"task": "chat.purge_logs", "schedule": LOGS_PURGE_INTERVAL_S},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Default daily quota of prompt + completion tokens per user (UTC day; 0: unlimited). Per-user and
# per-group overrides of both limits are set in the admin (presets.Quota).
CHAT_DAILY_TOKEN_QUOTA = env_int("CHAT_DAILY_TOKEN_QUOTA", 0, minimum=0)
# Feedback on a reply: the longest comment and edited answer accepted.
CHAT_FEEDBACK_MAX_COMMENT_CHARS = env_int("CHAT_FEEDBACK_MAX_COMMENT_CHARS", 2000, minimum=1)
CHAT_FEEDBACK_MAX_EDIT_CHARS = env_int("CHAT_FEEDBACK_MAX_EDIT_CHARS", 16000, minimum=1)
# Deltas are coalesced and flushed about this often (milliseconds).
CHAT_FLUSH_INTERVAL_MS = env_int("CHAT_FLUSH_INTERVAL_MS", 50, minimum=1)
# ... times the replies running at once on a worker, up to this (inference/worker.py).
CHAT_FLUSH_MAX_MS = env_int("CHAT_FLUSH_MAX_MS", 200, minimum=1)
# How long a finished stream's deltas stay in Redis for resume (seconds).
CHAT_STREAM_TTL_S = env_int("CHAT_STREAM_TTL_S", 3600, minimum=10)
# An open websocket re-reads its session this often (seconds) and closes with 4401 once the user
# logged out elsewhere, changed their password or was deactivated (chatsite/socket_sessions.py).
SOCKET_SESSION_RECHECK_S = env_float("SOCKET_SESSION_RECHECK_S", 15.0)
# A worker that has not sent a heartbeat for this long is considered dead.
INFERENCE_HEARTBEAT_TTL_S = env_int("INFERENCE_HEARTBEAT_TTL_S", 5, minimum=2)
# A queued reply with no live worker at all is failed after this long.
INFERENCE_QUEUE_TIMEOUT_S = env_int("INFERENCE_QUEUE_TIMEOUT_S", 30, minimum=1)
# Maximum number of requests decoded together in one batch by a worker.
INFERENCE_MAX_BATCH = env_int("INFERENCE_MAX_BATCH", 16, minimum=1)
# Most requests waiting in the shared queue; more are refused with a clear "server busy" error.
INFERENCE_MAX_QUEUE = env_int("INFERENCE_MAX_QUEUE", 200, minimum=1)
# Most models one worker keeps loaded; the least recently used idle one is unloaded first.
INFERENCE_MAX_MODELS = env_int("INFERENCE_MAX_MODELS", 2, minimum=1)
# LoRA adapters (tuned models) one loaded base model serves at once; the least recently used
# idle one is dropped beyond this (a few MB each).
INFERENCE_MAX_ADAPTERS = env_int("INFERENCE_MAX_ADAPTERS", 16, minimum=1)
# A model unused this long is unloaded (0: never).
INFERENCE_IDLE_UNLOAD_S = env_int("INFERENCE_IDLE_UNLOAD_S", 1800, minimum=0)
# llama.cpp: threads (0: the number of CPU cores) and parallel sequences (slots) per model.
INFERENCE_LLAMACPP_THREADS = env_int("INFERENCE_LLAMACPP_THREADS", 0, minimum=0)
INFERENCE_LLAMACPP_PARALLEL = env_int("INFERENCE_LLAMACPP_PARALLEL", 8, minimum=1)
# transformers: long prompts are read in chunks of this many tokens between decoding steps, so
# other users' replies go on meanwhile. llama.cpp: tokens per batch (prompt chunks and the other
# sequences' next tokens together). Both chosen with bench/run.py (docs/performance.md): with 64
# rather than 256, users who send together join the running batch sooner (8 users 0.91x bare
# llama.cpp instead of 0.79x), and a 2,000-token prompt is read about a third slower.
INFERENCE_PREFILL_CHUNK = env_int("INFERENCE_PREFILL_CHUNK", 128, minimum=16)
INFERENCE_LLAMACPP_BATCH = env_int("INFERENCE_LLAMACPP_BATCH", 64, minimum=16)
# The largest request body of a page, form or JSON call; uploads and the API have their own
# (chatsite/bodylimit.py: a larger body is answered 413 before it is read).
HTTP_MAX_BODY_BYTES = env_int("HTTP_MAX_BODY_BYTES", 3 * 1024 * 1024, minimum=64 * 1024)
# Developer API (/v1): requests per minute per key (a key may set its own), the largest JSON
# body of a chat completion, and the most choices (`n`) one request may ask for.
API_RATE_LIMIT = env_int("API_RATE_LIMIT", 120, minimum=0)
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 1_000_000, minimum=1000)
API_MAX_CHOICES = env_int("API_MAX_CHOICES", 4, minimum=1)
# Evals (/v1/evals): items one run may hold, and runs one user may have queued or running at once.
EVALS_MAX_ITEMS = env_int("EVALS_MAX_ITEMS", 1000, minimum=1)
EVALS_MAX_ACTIVE_RUNS = env_int("EVALS_MAX_ACTIVE_RUNS", 3, minimum=1)

# Redis connections one web process's event loop may open (inference/streams.py `async_client`),
# however many sockets it serves: two hold the blocking reads that every socket shares (reply
# streams, inference/stream_reader.py; user events, chat/sync.py), the rest serve short commands,
# which wait for a free one. With its database thread's, the login throttle's and Celery's, a web
# process then holds at most 20 (bench/sockets.py: 1,000 sockets).
REDIS_MAX_CONNECTIONS = env_int("REDIS_MAX_CONNECTIONS", 16, minimum=10)

# Moderation: a rule saved in the admin applies in every process within this many seconds.
MODERATION_RELOAD_S = env_int("MODERATION_RELOAD_S", 2, minimum=0)
# Output rules with regular expressions: the streamed tail held back so a match of up to this
# many characters is caught before any of it is shown (keywords hold back their own length).
MODERATION_STREAM_WINDOW = env_int("MODERATION_STREAM_WINDOW", 64, minimum=8)

# Extra folders (comma-separated) a "local folder" model may be loaded from, besides MODEL_DIR.
INFERENCE_MODEL_ROOTS = [p for p in env_str("INFERENCE_MODEL_ROOTS", "").split(",") if p.strip()]
# Most replies one user may have queued or generating at once, across conversations.
CHAT_MAX_ACTIVE_PER_USER = env_int("CHAT_MAX_ACTIVE_PER_USER", 4, minimum=1)

# --- Fine-tuning -----------------------------------------------------------------------------
# Datasets, job checkpoints and logs; tuned models are written under MODEL_DIR/tuned.
FINETUNE_DIR = Path(env_str("FINETUNE_DIR", str(VAR_DIR / "finetuning")))
# Largest dataset upload, refused before the file is read into memory.
FINETUNE_MAX_UPLOAD_BYTES = env_int("FINETUNE_MAX_UPLOAD_BYTES", 50 * 1024 * 1024, minimum=1024)
FINETUNE_MAX_ROWS = env_int("FINETUNE_MAX_ROWS", 100_000, minimum=1)
# A checkpoint every this many optimizer steps (a killed worker resumes from the last one).
FINETUNE_CHECKPOINT_STEPS = env_int("FINETUNE_CHECKPOINT_STEPS", 20, minimum=1)
# A running job whose worker has not reported for this long is resumed by the next worker start.
FINETUNE_STALE_S = env_int("FINETUNE_STALE_S", 120, minimum=5)
# A job whose worker died this many times ends failed instead of starting again.
FINETUNE_MAX_ATTEMPTS = env_int("FINETUNE_MAX_ATTEMPTS", 3, minimum=1)
# Questions of the general-knowledge probe asked before and after training (0: all of them).
FINETUNE_PROBE_ITEMS = env_int("FINETUNE_PROBE_ITEMS", 0, minimum=0)
# A tuned model that lost more than this share of what the base model answered right is marked.
FINETUNE_FORGET_LIMIT = float(env_str("FINETUNE_FORGET_LIMIT", "0.1"))
# Training throughput (tokens/s) used for estimates before a job of this machine has been measured.
FINETUNE_ESTIMATE_TOKENS_PER_S = float(env_str("FINETUNE_ESTIMATE_TOKENS_PER_S", "200"))

# /metrics (Prometheus): staff users, or `Authorization: Bearer <METRICS_TOKEN>` when set.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")

# Usage dashboard (dashboard/rollup.py): rows younger than this are counted on a later refresh,
# so one whose insert commits a moment after a higher id's is never skipped. 0 counts at once.
DASHBOARD_SETTLE_S = env_int("DASHBOARD_SETTLE_S", 30, minimum=0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
