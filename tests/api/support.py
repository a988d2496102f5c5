"""Assertions and token crafting shared by the black-box API tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx

GENERATION_ID_PATTERN = r"^gen_[0-9A-Za-z]{22}$"
TIMESTAMP_PATTERN = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"
GENERATION_FIELDS = {
    "id",
    "status",
    "model",
    "prompt",
    "system",
    "max_tokens",
    "temperature",
    "output",
    "seq",
    "attempt",
    "finish_reason",
    "usage",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    # Protocol v1.1: a reasoning model's thinking, and which provider ran it (demo or not).
    "reasoning",
    "provider",
    # Conversations: every generation is a turn of one (docs/protocol.md).
    "conversation_id",
    "parent_id",
}
# Well-formed, but never issued: 22 base-62 characters after the prefix.
UNKNOWN_GENERATION_ID = "gen_" + "A" * 22


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The contract's error body, `{"error": {"code", "message", "details"}}`; returns details."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["details"], dict), error
    assert "Traceback" not in response.text
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer"), response.headers
    details: dict[str, Any] = error["details"]
    return details


def assert_unauthorized(response: httpx.Response) -> None:
    assert_error(response, 401, "unauthorized")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(username: str, *, ttl_s: int = 3600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": username, "iat": now, "exp": now + ttl_s, **extra}


def unsigned_token(payload: dict[str, Any], alg: str = "none") -> str:
    """A JWT with no signature, as an attacker writes it by hand (PyJWT refuses `none` keys)."""
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(payload).encode())}."


def hmac_token(payload: dict[str, Any], secret: bytes, alg: str = "HS256") -> str:
    """An HMAC-signed JWT built by hand, so any bytes can be the secret (a public key PEM too)."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64url(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def fresh_rate_window(min_left_s: float = 20) -> None:
    """Wait, if need be, until the one-minute rate window has `min_left_s` left, so that a
    test's requests all fall in one window (api.ratelimit: fixed windows on the minute)."""
    left = 60 - time.time() % 60
    if left < min_left_s:
        time.sleep(left + 0.2)
