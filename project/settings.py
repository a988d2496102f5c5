"""Settings, read once from the environment (PROTOCOL.md section 7).

Two modes share one code base:

- the embedded default (no ``REDIS_URL``): SQLite unless ``DATABASE_URL`` says otherwise, an
  in-memory channel layer and replay buffer, and a Huey consumer running inside the web
  process, so ``daphne project.asgi:application`` alone is the whole service;
- the distributed mode (``REDIS_URL`` set): Redis carries the Huey queue, the channel layer,
  the replay buffers and the rate limits; ``manage.py run_huey`` processes run generations.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import dj_database_url

from core.env import (
    ConfigError,
    envbool,
    envchoice,
    envfloat,
    envint,
    envintmap,
    envlist,
    envstr,
)
from core.redis import async_retry_options  # no models: safe to import from settings

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(envstr("VAR_DIR", str(BASE_DIR / "var")))


def _local_secret(name: str) -> str:
    """A random secret kept in var/ so that the embedded default needs no setup.

    A fixed development key would let anyone who read this repository forge tokens for a
    service started with no configuration; a per-installation random key does not.
    """
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    path = VAR_DIR / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(48)
    try:
        # Created with mode 0600 (not written, then restricted): no moment in which another
        # local user could read it; O_EXCL: of two processes starting at once, one writes.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value)
    return value


SECRET_KEY = envstr("SECRET_KEY") or _local_secret("secret_key")
DEBUG = envbool("DEBUG", False)
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["*"])
# Browser origins allowed to open the WebSocket and call the API cross-origin. The service's
# own origin (the sample page) is always allowed; clients that send no Origin are too.
ALLOWED_ORIGINS = envlist("ALLOWED_ORIGINS", [])

REDIS_URL = envstr("REDIS_URL")
DISTRIBUTED = bool(REDIS_URL)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "huey.contrib.djhuey",
    # django-ninja: its interactive API docs (templates and static files) at /api/v1/docs.
    "ninja",
    "core",
    "api",
    "jobs",
    "realtime",
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

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# --- Database -------------------------------------------------------------------------------

DATABASE_URL = envstr("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
try:
    _database: dict[str, Any] = dict(dj_database_url.parse(DATABASE_URL))
except Exception as exc:  # dj_database_url raises several types for a bad URL
    raise ConfigError(f"DATABASE_URL={DATABASE_URL!r} is not valid: {exc}") from None
if _database["ENGINE"] == "django.db.backends.sqlite3":
    _database["OPTIONS"] = {
        # WAL lets the SSE view read while a worker thread checkpoints; IMMEDIATE takes the
        # write lock at BEGIN, so two writers queue on `timeout` instead of deadlocking.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
elif _database["ENGINE"] == "django.db.backends.mysql":
    # Django's, with fewer round trips: one START TRANSACTION to begin, and a kept
    # connection's health check in its request's first statement (core/mysql/base.py).
    _database["ENGINE"] = "core.mysql"
    _database["OPTIONS"] = {
        "charset": "utf8mb4",
        # The server's default, which a new connection then keeps: the client would turn it
        # off at connect, and Django back on.
        "autocommit": True,
        # READ COMMITTED: after a duplicate-key error on an idempotency key, the next read
        # must see the row the winning transaction committed, which REPEATABLE READ hides.
        "isolation_level": "read committed",
        # A database that drops packets (rather than refusing) would hold a new connection,
        # /readyz's included, and a query on a connection gone silent, until TCP gave up
        # (about 15 minutes). No statement here runs near 30 s; lock waits give up sooner
        # (innodb_lock_wait_timeout applies first only if set below 30).
        "connect_timeout": 5,
        "read_timeout": 30,
        "write_timeout": 30,
    }
    _database.setdefault("TEST", {})["CHARSET"] = "utf8mb4"
    _database["TEST"]["COLLATION"] = "utf8mb4_unicode_ci"
else:
    raise ConfigError(f"DATABASE_URL={DATABASE_URL!r}: only mysql:// and sqlite:// are supported")
# Kept only by the few threads that do a process's database work (project.handler's request
# threads, realtime.db's readers, a worker's engine threads: a bounded number per process);
# any other thread's connection is closed after its request or task. The SSE view and the
# WebSocket consumer hold none while they wait for events.
_database["CONN_MAX_AGE"] = 0
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channels, Huey, replay buffer -----------------------------------------------------------

# Redis connection pool size per process for the replay buffer, the cancel flags and the
# rate limits. Set explicitly: an unbounded pool hides leaks, a tiny one raises
# "Too many connections" under 100 concurrent subscribers.
REDIS_MAX_CONNECTIONS = envint("REDIS_MAX_CONNECTIONS", 200, minimum=10)

if DISTRIBUTED:
    CHANNEL_LAYERS: dict[str, Any] = {
        "default": {
            # The pub/sub layer: one PUBLISH per group_send and no per-channel capacity to
            # overflow; "The channel layer" in docs/design.md has the measurement behind it.
            # channels_redis's, reading its socket without a timer per message.
            "BACKEND": "realtime.layer.PubSubChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        # Redis dropped the connection (a restart, CLIENT KILL): reconnect,
                        # re-subscribe the layer's channels and send again, not fail.
                        **async_retry_options(),
                    }
                ]
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            # Large enough that a stalled subscriber is closed as a slow consumer before the
            # layer starts dropping; anything dropped is repaired from the replay buffer.
            "CONFIG": {"capacity": 10_000, "expiry": 60},
        }
    }

HUEY_WORKERS = envint("HUEY_WORKERS", 64, minimum=1, maximum=1024)
# On SIGINT (graceful) a worker finishes its generations for this long, then hands the rest
# back to the queue (jobs.tasks.hand_back_interrupted); on SIGTERM it hands back at once.
# Huey's default is to wait forever; docker-compose's stop_grace_period must exceed this.
WORKER_SHUTDOWN_GRACE_S = envfloat("WORKER_SHUTDOWN_GRACE_S", 60.0, minimum=0)
_HUEY_CONSUMER = {
    "workers": HUEY_WORKERS,
    # Threads: a generation spends its life waiting on the provider's socket.
    "worker_type": "thread",
    "periodic": True,
    "scheduler_interval": 1,
}
if DISTRIBUTED:
    HUEY: dict[str, Any] = {
        # Huey's Redis queue; of a worker's idle threads only a few wait in Redis at a time.
        "huey_class": "jobs.redis_queue.GatedRedisHuey",
        "name": "llm-generations",
        "immediate": False,  # djhuey would run tasks inline when DEBUG is on
        # An idle worker thread waits for a task (in a BRPOP, or for its turn to make one) this
        # many seconds. Huey's 1 s cost a worker with 260 threads 17% of its CPU
        # (bench/results/profile_worker.md); an enqueue wakes a waiting BRPOP at once either
        # way, and an idle thread sees a graceful stop (SIGINT) within this long, inside the
        # grace period.
        "connection": {"url": REDIS_URL, "read_timeout": 5},
        "consumer": {
            **_HUEY_CONSUMER,
            "check_worker_health": True,
            "shutdown_timeout": WORKER_SHUTDOWN_GRACE_S,
        },
    }
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    HUEY = {
        # SQLite storage whose idle workers are woken by an enqueue instead of polling.
        "huey_class": "jobs.embedded.WakingSqliteHuey",
        "name": "llm-generations",
        "immediate": False,
        # Queued generations survive a restart of the embedded process.
        "filename": envstr("HUEY_SQLITE_PATH", str(VAR_DIR / "huey.sqlite3")),
        "consumer": _HUEY_CONSUMER,
    }

# --- Identity --------------------------------------------------------------------------------

JWT_SECRET = envstr("JWT_SECRET") or SECRET_KEY
JWT_PUBLIC_KEY = envstr("JWT_PUBLIC_KEY").replace("\\n", "\n")
JWT_PRIVATE_KEY = envstr("JWT_PRIVATE_KEY").replace("\\n", "\n")
_JWT_ALLOWED_ALGORITHMS = (
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
)


def _default_jwt_algorithms() -> list[str]:
    """HS256 with a shared secret; with a public key, the algorithm of its family."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if not JWT_PUBLIC_KEY:
        return ["HS256"]
    if "EC PUBLIC KEY" in JWT_PUBLIC_KEY:
        return ["ES256"]
    try:
        key = load_pem_public_key(JWT_PUBLIC_KEY.encode())
    except ValueError:
        raise ConfigError("JWT_PUBLIC_KEY is not a PEM public key") from None
    return ["ES256"] if isinstance(key, ec.EllipticCurvePublicKey) else ["RS256"]


JWT_ALGORITHMS = envlist("JWT_ALGORITHMS", _default_jwt_algorithms())
for _alg in JWT_ALGORITHMS:
    if _alg not in _JWT_ALLOWED_ALGORITHMS:
        raise ConfigError(
            f"JWT_ALGORITHMS contains {_alg!r}: allowed are {', '.join(_JWT_ALLOWED_ALGORITHMS)}"
        )
if JWT_PUBLIC_KEY and any(alg.startswith("HS") for alg in JWT_ALGORITHMS):
    # Mixing them would let a token signed with the public key as an HMAC secret pass.
    raise ConfigError("JWT_ALGORITHMS: HS* algorithms cannot be used with JWT_PUBLIC_KEY")
if not JWT_PUBLIC_KEY and not all(alg.startswith("HS") for alg in JWT_ALGORITHMS):
    raise ConfigError("JWT_ALGORITHMS: RS*/ES* algorithms need JWT_PUBLIC_KEY")
JWT_AUDIENCE = envstr("JWT_AUDIENCE")
JWT_ISSUER = envstr("JWT_ISSUER")
JWT_AUTO_CREATE_USERS = envbool("JWT_AUTO_CREATE_USERS", True)
JWT_LEEWAY_S = 30  # PROTOCOL §1: at most 30 s of clock skew is forgiven
JWT_TTL_S = envint("JWT_TTL_S", 3600, minimum=30)

# --- Provider --------------------------------------------------------------------------------

OPENAI_API_KEY = envstr("OPENAI_API_KEY")
OPENAI_BASE_URL = envstr("OPENAI_BASE_URL")
# PROTOCOL §7: the offline demo only when no provider is named at all; a base URL alone is a
# local server (vLLM, Ollama, llama.cpp, LM Studio), which needs no key.
LLM_PROVIDER = envchoice(
    "LLM_PROVIDER", "openai" if OPENAI_API_KEY or OPENAI_BASE_URL else "demo", ("openai", "demo")
)
if LLM_PROVIDER == "openai" and not OPENAI_API_KEY and not OPENAI_BASE_URL:
    raise ConfigError(
        "LLM_PROVIDER=openai needs OPENAI_API_KEY (for OpenAI itself) or OPENAI_BASE_URL "
        "(for another OpenAI-compatible server)"
    )
PROVIDER_CONNECT_TIMEOUT_S = envfloat("PROVIDER_CONNECT_TIMEOUT_S", 10.0, minimum=0.1)
PROVIDER_READ_TIMEOUT_S = envfloat("PROVIDER_READ_TIMEOUT_S", 60.0, minimum=0.1)
# A reasoning model may think for minutes before its first byte, and a local server first load
# the model; PROVIDER_READ_TIMEOUT_S holds between chunks once text has come.
PROVIDER_FIRST_BYTE_TIMEOUT_S = envfloat("PROVIDER_FIRST_BYTE_TIMEOUT_S", 300.0, minimum=0.1)
# Seconds to wait for the usage chunk after the finish reason, for a server that keeps the
# connection open after its answer: the answer is complete, only the provider's count waits.
PROVIDER_FINISH_GRACE_S = envfloat("PROVIDER_FINISH_GRACE_S", 2.0, minimum=0.0, maximum=60)


def _openai_hosted(base_url: str) -> bool:
    """OpenAI itself (no base URL) or Azure OpenAI: servers that take max_completion_tokens."""
    return not base_url or any(
        host in base_url for host in ("api.openai.com", ".openai.azure.com", ".azure.com/")
    )


# Which parameter carries the output cap. OpenAI's o-series and GPT-5 refuse `max_tokens`
# (400 "use max_completion_tokens"); older self-hosted servers know only `max_tokens`.
OPENAI_TOKEN_LIMIT_PARAM = envchoice(
    "OPENAI_TOKEN_LIMIT_PARAM",
    "max_completion_tokens" if _openai_hosted(OPENAI_BASE_URL) else "max_tokens",
    ("max_tokens", "max_completion_tokens"),
)
# Per model (shell-style patterns), overriding OPENAI_TOKEN_LIMIT_PARAM either way.
OPENAI_MAX_COMPLETION_TOKENS_MODELS = envlist(
    "OPENAI_MAX_COMPLETION_TOKENS_MODELS", ["o1*", "o3*", "o4*", "gpt-5*"]
)
OPENAI_MAX_TOKENS_MODELS = envlist("OPENAI_MAX_TOKENS_MODELS", [])
# `stream_options: {"include_usage": true}` asks for the provider's own token count; a few
# servers refuse the field. Off globally, or for the models matching a pattern.
OPENAI_STREAM_OPTIONS = envbool("OPENAI_STREAM_OPTIONS", True)
OPENAI_NO_STREAM_OPTIONS_MODELS = envlist("OPENAI_NO_STREAM_OPTIONS_MODELS", [])
# aiohttp reads a stream for about half the CPU per token of httpx, a worker's largest cost
# (bench/results/provider_read.md); httpx, the SDK's default, for a server that needs HTTP/2.
OPENAI_HTTP_TRANSPORT = envchoice("OPENAI_HTTP_TRANSPORT", "aiohttp", ("aiohttp", "httpx"))

ALLOWED_MODELS = envlist("ALLOWED_MODELS", ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1"])
DEFAULT_MODEL = envstr("DEFAULT_MODEL", ALLOWED_MODELS[0])
if DEFAULT_MODEL not in ALLOWED_MODELS:
    raise ConfigError(f"DEFAULT_MODEL={DEFAULT_MODEL!r} is not in ALLOWED_MODELS")

# --- Limits (PROTOCOL §6) --------------------------------------------------------------------

MAX_PROMPT_CHARS = envint("MAX_PROMPT_CHARS", 32_000, minimum=1)
MAX_SYSTEM_CHARS = envint("MAX_SYSTEM_CHARS", 8_000, minimum=1)
MAX_OUTPUT_TOKENS = envint("MAX_OUTPUT_TOKENS", 4_096, minimum=1)
DEFAULT_MAX_TOKENS = min(1_024, MAX_OUTPUT_TOKENS)
RATE_LIMIT_PER_MINUTE = envint("RATE_LIMIT_PER_MINUTE", 20, minimum=1)
TOKENS_PER_DAY = envint("TOKENS_PER_DAY", 200_000, minimum=1)
MAX_ACTIVE_GENERATIONS = envint("MAX_ACTIVE_GENERATIONS", 5, minimum=1)
MAX_CONNECTIONS_PER_USER = envint("MAX_CONNECTIONS_PER_USER", 10, minimum=1)
MAX_REQUEST_BYTES = 64 * 1024  # PROTOCOL §2: 413 above this

# --- Conversations (docs/protocol.md "Conversations") ---------------------------------------

# Counted as the demo tokenizer counts (about one per word); CONTEXT_BUDGETS overrides it for
# the models it names.
CONTEXT_BUDGET_TOKENS = envint("CONTEXT_BUDGET_TOKENS", 16_000, minimum=1)
CONTEXT_BUDGETS = envintmap("CONTEXT_BUDGETS", {})
# Turns per conversation (regenerations and edits count): bounds the rows read to build one
# turn's history, and the conversation view.
MAX_CONVERSATION_TURNS = envint("MAX_CONVERSATION_TURNS", 200, minimum=1)
# The hard bound on one provider request's size, whatever the token estimate says.
MAX_HISTORY_CHARS = envint("MAX_HISTORY_CHARS", 200_000, minimum=1)
MAX_TITLE_CHARS = 200  # the column's size; a default title is the first prompt, cut to 80

# --- Realtime and worker timings -------------------------------------------------------------

WS_AUTH_TIMEOUT = envfloat("WS_AUTH_TIMEOUT", 10.0, minimum=0.1)
WS_MAX_BUFFER = envint("WS_MAX_BUFFER", 1024 * 1024, minimum=1024)
# A running generation's row is written at most this often (and only once its text moved on):
# the live log (Redis, or the web process's memory) carries every event between two
# checkpoints, so a longer interval costs only how stale a running row's `output` reads over
# REST, and how much of the log a reader or the reaper folds in after it (docs/scaling.md).
CHECKPOINT_INTERVAL_S = envfloat("CHECKPOINT_INTERVAL_S", 4.0, minimum=0.05, maximum=60)
HEARTBEAT_TIMEOUT_S = envfloat("HEARTBEAT_TIMEOUT_S", 30.0, minimum=1)
MAX_ATTEMPTS = envint("MAX_ATTEMPTS", 3, minimum=1, maximum=20)
TICKET_TTL_S = envint("TICKET_TTL_S", 300, minimum=1)
if HEARTBEAT_TIMEOUT_S <= 2 * CHECKPOINT_INTERVAL_S:
    raise ConfigError("HEARTBEAT_TIMEOUT_S must be more than twice CHECKPOINT_INTERVAL_S")

# --- Operations ----------------------------------------------------------------------------

# Unset: /metrics is open like /healthz, for a scraper on a private network (the numbers name
# no user and no prompt). The worker's port has no token (docs/metrics.md).
METRICS_TOKEN = envstr("METRICS_TOKEN")
WORKER_METRICS_PORT = envint("WORKER_METRICS_PORT", 0, minimum=0, maximum=65535)

# --- Django odds and ends --------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(VAR_DIR / "static")))

LOG_LEVEL = envchoice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))
LOG_FORMAT = envchoice("LOG_FORMAT", "json", ("json", "plain"))
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "project.logs.JsonFormatter"},
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"},
    },
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["stderr"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "daphne": {"level": "WARNING"},
        # run_huey gives "huey" a plain-text handler of its own unless it has one, and its
        # lines then reach the root's handler too: each printed twice, once not as JSON.
        "huey": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
        # The consumer's lifecycle lines (start, signals, shutdown) as run_huey always printed
        # them; per-task lines stay off: the runner logs each attempt with the generation id.
        "huey.consumer": {"level": "INFO"},
        # The openai SDK's HTTP clients log every request at INFO ("HTTP Request: POST ...").
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
    },
}

# --- Public deployment (security) ------------------------------------------------------------

# A guessable HMAC secret lets anyone mint tokens for any user: refuse short ones ("changeme")
# at start. 32 bytes is the key size of HS256; `openssl rand -base64 48` makes a good one.
JWT_SECRET_MIN_CHARS = 32
if not JWT_PUBLIC_KEY and len(JWT_SECRET) < JWT_SECRET_MIN_CHARS:
    raise ConfigError(
        f"JWT_SECRET is {len(JWT_SECRET)} characters: at least {JWT_SECRET_MIN_CHARS} are needed "
        "(or unset it to use SECRET_KEY, which must then be as long)"
    )
# An identity provider signs tokens for all of its applications with one key: without an
# audience, a token it issued to another application would be accepted here (and create an
# account). A public-key configuration needs JWT_AUDIENCE, or this explicit opt-out, which the
# start-up log states (api.apps.ApiConfig.ready).
JWT_ALLOW_ANY_AUDIENCE = envbool("JWT_ALLOW_ANY_AUDIENCE", False)
if JWT_PUBLIC_KEY and not JWT_AUDIENCE and not JWT_ALLOW_ANY_AUDIENCE:
    raise ConfigError(
        "JWT_AUDIENCE is required with JWT_PUBLIC_KEY (tokens the identity provider issued to "
        "other applications would be accepted); set JWT_ALLOW_ANY_AUDIENCE=true to opt out"
    )
# The longest lifetime a token may have (exp minus now, and issue_token's --ttl): a leaked
# token with a ten-year exp would be a password that cannot be changed.
JWT_MAX_TTL_S = envint("JWT_MAX_TTL_S", 24 * 3600, minimum=60)
if JWT_TTL_S > JWT_MAX_TTL_S:
    raise ConfigError(f"JWT_TTL_S={JWT_TTL_S} is more than JWT_MAX_TTL_S={JWT_MAX_TTL_S}")

# Failed password sign-ins per minute (PROTOCOL §8; api.login_throttle).
LOGIN_FAILURES_PER_ACCOUNT = envint("LOGIN_FAILURES_PER_ACCOUNT", 5, minimum=1)
LOGIN_FAILURES_PER_ADDRESS = envint("LOGIN_FAILURES_PER_ADDRESS", 20, minimum=1)
AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Counted apart from WebSocket connections (MAX_CONNECTIONS_PER_USER).
MAX_SSE_STREAMS_PER_USER = envint("MAX_SSE_STREAMS_PER_USER", 20, minimum=1)
# Generations one WebSocket follows at once: each costs a live group and buffer checks.
MAX_SUBSCRIPTIONS_PER_CONNECTION = envint("MAX_SUBSCRIPTIONS_PER_CONNECTION", 100, minimum=1)
# In bursts of twice this many (realtime.consumers.frame_burst); 2,000 subscribe frames in 6 s
# were 2,000 database reads.
WS_FRAMES_PER_SECOND = envint("WS_FRAMES_PER_SECOND", 20, minimum=1)
ACCOUNT_RECHECK_INTERVAL_S = envfloat("ACCOUNT_RECHECK_INTERVAL_S", 5.0, minimum=0.5)

# Behind an HTTPS proxy: its header that says the request was HTTPS, the origins the admin's
# forms are posted from (the CSRF check compares them with the browser's), cookies and HSTS.
SECURE_PROXY_SSL_HEADER_NAME = envstr("SECURE_PROXY_SSL_HEADER")
if SECURE_PROXY_SSL_HEADER_NAME:
    _ssl_header, _, _ssl_value = SECURE_PROXY_SSL_HEADER_NAME.partition(":")
    if not _ssl_header.strip() or not _ssl_value.strip():
        raise ConfigError("SECURE_PROXY_SSL_HEADER must look like 'X-Forwarded-Proto: https'")
    SECURE_PROXY_SSL_HEADER = (
        "HTTP_" + _ssl_header.strip().upper().replace("-", "_"),
        _ssl_value.strip(),
    )
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])
for _origin in CSRF_TRUSTED_ORIGINS:
    if not _origin.startswith(("http://", "https://")):
        raise ConfigError(f"CSRF_TRUSTED_ORIGINS: {_origin!r} must start with https:// or http://")
SECURE_COOKIES = envbool("SECURE_COOKIES", False)
SESSION_COOKIE_SECURE = SECURE_COOKIES
CSRF_COOKIE_SECURE = SECURE_COOKIES
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0, minimum=0)
