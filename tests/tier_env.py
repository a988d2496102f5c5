"""Chooses the tier the whole test run covers, before Django reads its settings.

``TEST_TIER=embedded`` (the default): SQLite, in-memory layer and buffer, worker in the web
process. ``TEST_TIER=distributed``: MySQL + Redis, Daphne and ``run_huey`` processes. The same
tests run on both; ``./dev test`` runs the suite once per tier.

Loaded with ``-p tests.tier_env`` (pyproject's addopts), i.e. before pytest-django sets up.
"""

from __future__ import annotations

import os
import socket
import tempfile

TIER = os.environ.setdefault("TEST_TIER", "embedded")
if TIER not in ("embedded", "distributed"):
    raise SystemExit(f"TEST_TIER must be embedded or distributed, not {TIER!r}")

MYSQL_SERVER_URL = os.environ.get("TEST_MYSQL_URL", "mysql://root:@127.0.0.1:3306")
REDIS_SERVER_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
JWT_SECRET = "test-jwt-secret-0123456789abcdef0123456789"
RUN_DIR = tempfile.mkdtemp(prefix=f"llm-tests-{TIER}-")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


FAKE_LLM_PORT = free_port()

# Defaults generous enough that limits never interfere with tests that are not about them.
BASE_ENV = {
    "SECRET_KEY": "test-secret-key-0123456789abcdef0123456789",
    "JWT_SECRET": JWT_SECRET,
    "LLM_PROVIDER": "openai",
    "OPENAI_API_KEY": "test",
    "RATE_LIMIT_PER_MINUTE": "100000",
    "MAX_ACTIVE_GENERATIONS": "100000",
    "TOKENS_PER_DAY": "1000000000",
    "MAX_CONNECTIONS_PER_USER": "1000",
    "MAX_SSE_STREAMS_PER_USER": "1000",
    "MAX_SUBSCRIPTIONS_PER_CONNECTION": "100000",
    "WS_FRAMES_PER_SECOND": "100000",
    "LOGIN_FAILURES_PER_ACCOUNT": "100000",
    "LOGIN_FAILURES_PER_ADDRESS": "100000",
    "LOG_LEVEL": "WARNING",
}
for _name in (
    "DATABASE_URL",
    "REDIS_URL",
    "JWT_PUBLIC_KEY",
    "JWT_PRIVATE_KEY",
    "JWT_ALGORITHMS",
    "JWT_AUDIENCE",
    "JWT_ISSUER",
    "ALLOWED_MODELS",
    "DEFAULT_MODEL",
):
    os.environ.pop(_name, None)
os.environ.update(BASE_ENV)
os.environ["OPENAI_BASE_URL"] = f"http://127.0.0.1:{FAKE_LLM_PORT}/v1"
os.environ["VAR_DIR"] = os.path.join(RUN_DIR, "inproc-var")
os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
if TIER == "embedded":
    os.environ["DATABASE_URL"] = f"sqlite:///{RUN_DIR}/inproc.sqlite3"
else:
    # Per process: pytest-django drops and recreates test_<name>, so two runs must not share it.
    os.environ["DATABASE_URL"] = f"{MYSQL_SERVER_URL}/llm_inproc_{os.getpid()}"
    os.environ["REDIS_URL"] = f"{REDIS_SERVER_URL}/14"
