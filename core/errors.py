"""The error vocabulary of PROTOCOL §2, mapped to HTTP statuses in one place."""

from __future__ import annotations

import json
from typing import Any

import redis
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse

STATUS_BY_CODE: dict[str, int] = {
    "invalid_json": 400,
    "invalid_request": 400,
    "prompt_too_long": 400,
    "unauthorized": 401,
    "token_expired": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "idempotency_conflict": 409,
    # Conversations (docs/protocol.md): a turn whose parent is still running; a conversation
    # at MAX_CONVERSATION_TURNS.
    "parent_not_finished": 409,
    "conversation_full": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "quota_exceeded": 429,
    "too_many_active": 429,
    "too_many_streams": 429,
    "internal_error": 500,
    "unavailable": 503,
}


# Failures to reach the database or Redis, as opposed to bugs: `unavailable` (503 on REST, an
# error frame on the WebSocket), not `internal_error`.
UNAVAILABLE_ERRORS = (OperationalError, InterfaceError, redis.ConnectionError, redis.TimeoutError)
# A database or Redis restart takes seconds; a client retrying sooner only adds load.
UNAVAILABLE_RETRY_AFTER_S = 1


class ApiError(Exception):
    """A failure the client is told about, with a code from the contract."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        retry_after_s: int | None = None,
        allow: str | None = None,
    ) -> None:
        super().__init__(message)
        if code not in STATUS_BY_CODE:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.message = message
        self.details = details or {}
        self.retry_after_s = retry_after_s
        self.allow = allow  # a 405's Allow header: the methods the path takes

    @property
    def status(self) -> int:
        return STATUS_BY_CODE[self.code]

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
            }
        }


def error_response(error: ApiError) -> HttpResponse:
    response = HttpResponse(
        json.dumps(error.body()), status=error.status, content_type="application/json"
    )
    if error.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    if error.status == 429:
        # Every 429 carries Retry-After (PROTOCOL §2).
        response["Retry-After"] = str(max(1, error.retry_after_s or 1))
    elif error.status == 503 and error.retry_after_s is not None:
        response["Retry-After"] = str(max(1, error.retry_after_s))
    if error.allow is not None:
        response["Allow"] = error.allow
    return response


def unavailable() -> ApiError:
    return ApiError(
        "unavailable",
        "The service cannot reach its storage; try again shortly.",
        retry_after_s=UNAVAILABLE_RETRY_AFTER_S,
    )


def not_found(what: str = "generation") -> ApiError:
    return ApiError("not_found", f"No such {what}.")


def payload_too_large() -> ApiError:
    limit = settings.MAX_REQUEST_BYTES
    size = f"{limit // 1024} KiB" if limit % 1024 == 0 else f"{limit} bytes"
    return ApiError("payload_too_large", f"The request body is larger than {size}.")


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not valid JSON")


def parse_json(data: str | bytes, what: str) -> Any:
    """`data` (bytes: UTF-8) as JSON, else invalid_json. NaN and Infinity are refused (echoed
    back in `ref` they would be invalid JSON), and so is nesting too deep for the parser (a
    RecursionError was a 500, or a 1011 on the WebSocket)."""
    try:
        text = data if isinstance(data, str) else data.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ApiError("invalid_json", f"The {what} is not valid JSON.") from None
