"""A malformed environment variable stops the service at start, naming the variable
(PROTOCOL §7), rather than running with a silently chosen default."""

from __future__ import annotations

import subprocess

import pytest

from tests.harness import DAPHNE, PYTHON, ROOT, Service
from tests.tier_env import free_port

BAD_VALUES: list[tuple[str, str]] = [
    ("RATE_LIMIT_PER_MINUTE", "abc"),
    ("RATE_LIMIT_PER_MINUTE", "0"),
    ("DEBUG", "maybe"),
    ("CHECKPOINT_INTERVAL_S", "-1"),
    ("CHECKPOINT_INTERVAL_S", "nan"),
    ("DATABASE_URL", "ftp://x"),
    ("DATABASE_URL", "postgres://u:p@localhost/db"),
    ("MAX_PROMPT_CHARS", "32k"),
    ("MAX_OUTPUT_TOKENS", "0"),
    ("TOKENS_PER_DAY", "1.5"),
    ("MAX_ACTIVE_GENERATIONS", "-3"),
    ("JWT_AUTO_CREATE_USERS", "perhaps"),
    ("JWT_ALGORITHMS", "none"),
    ("JWT_ALGORITHMS", "HS256,,RS256"),
    ("JWT_PUBLIC_KEY", "not a pem"),
    ("LLM_PROVIDER", "skynet"),
    ("ALLOWED_MODELS", "gpt-4o,,gpt-4o-mini"),
    ("DEFAULT_MODEL", "not-in-the-allow-list"),
    ("TICKET_TTL_S", "5m"),
    ("WS_AUTH_TIMEOUT", "soon"),
    ("OPENAI_TOKEN_LIMIT_PARAM", "max_output_tokens"),
    ("OPENAI_STREAM_OPTIONS", "sometimes"),
    ("OPENAI_MAX_COMPLETION_TOKENS_MODELS", "o1*,,o3*"),
    ("PROVIDER_FIRST_BYTE_TIMEOUT_S", "0"),
    ("PROVIDER_FINISH_GRACE_S", "-1"),
    # Conversations.
    ("CONTEXT_BUDGET_TOKENS", "0"),
    ("CONTEXT_BUDGETS", "gpt-4o"),
    ("CONTEXT_BUDGETS", "gpt-4o=lots"),
    ("CONTEXT_BUDGETS", "gpt-4o=0"),
    ("MAX_CONVERSATION_TURNS", "many"),
    ("MAX_HISTORY_CHARS", "-1"),
    # Metrics.
    ("WORKER_METRICS_PORT", "-1"),
    ("WORKER_METRICS_PORT", "65536"),
    ("WORKER_METRICS_PORT", "ninety"),
]


def manage_check(service: Service, **overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "manage.py", "check"],
        cwd=ROOT,
        env={**service.env, **overrides},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_manage_check_passes_with_the_service_environment(service: Service) -> None:
    # The baseline: what fails below fails because of the one bad value.
    result = manage_check(service)

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_malformed_variable_stops_manage_check_with_a_message_naming_it(
    service: Service, name: str, value: str
) -> None:
    result = manage_check(service, **{name: value})

    assert result.returncode != 0
    assert name in result.stderr


def test_hs256_with_a_public_key_is_refused_at_start(service: Service) -> None:
    # Allowing both would open the key-confusion attack: an HMAC keyed with the public PEM.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )

    result = manage_check(service, JWT_PUBLIC_KEY=public_pem, JWT_ALGORITHMS="ES256,HS256")

    assert result.returncode != 0
    assert "JWT_ALGORITHMS" in result.stderr


def test_daphne_refuses_to_start_with_a_malformed_variable(service: Service) -> None:
    result = subprocess.run(
        [DAPHNE, "-b", "127.0.0.1", "-p", str(free_port()), "project.asgi:application"],
        cwd=ROOT,
        env={**service.env, "MAX_ACTIVE_GENERATIONS": "lots"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "MAX_ACTIVE_GENERATIONS" in result.stderr
