"""The WebSocket's close codes and error frames (PROTOCOL §5), in one place.

The error codes and their messages are core.errors' (``ApiError``), shared with REST; this
module only says how the WebSocket carries them.
"""

from __future__ import annotations

from typing import Any

from api.validation import encodable
from core.errors import ApiError
from jobs.events import dumps

# RFC 6455 "going away": the server is shutting down (realtime/daphne_ext.py sends it).
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_TOO_BIG = 1009
# RFC 6455 "Try Again Later": the database or Redis was unreachable while authenticating, so
# the connection cannot be set up; the client reconnects with its backoff.
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_SLOW_CONSUMER = 4008
CLOSE_UNAUTHORIZED = 4401
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_TOO_MANY_CONNECTIONS = 4429
# Codes a server may send (RFC 6455 §7.4.1) that autobahn's sendClose refuses.
ENDPOINT_CLOSE_CODES = frozenset(
    {CLOSE_GOING_AWAY, CLOSE_UNSUPPORTED_DATA, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN_LATER}
)

_NO_REF = object()


def echoable(ref: Any) -> bool:
    """Whether `ref` can be echoed as it came: any JSON value whose text encodes as UTF-8 (a
    string with a lone surrogate cannot; NaN and Infinity were refused by the parser)."""
    try:
        dumps({"ref": ref}).encode("utf-8")
    except (UnicodeEncodeError, ValueError, RecursionError):
        return False
    return True


def error_reply(error: ApiError, ref: Any, generation_id: str | None = None) -> dict[str, Any]:
    """The `error` frame answering a client's frame (`ref` echoed when it can be)."""
    reply: dict[str, Any] = {"type": "error", "ref": ref if echoable(ref) else None}
    # Encodable: the id is echoed, and a lone surrogate cannot be sent.
    if generation_id is not None and encodable(generation_id):
        reply["id"] = generation_id
    reply.update({"code": error.code, "message": error.message, "details": error.details})
    if error.retry_after_s is not None:
        reply["retry_after"] = error.retry_after_s
    return reply


def closing_error(error: ApiError, ref: Any = _NO_REF) -> dict[str, Any]:
    """The `error` frame sent just before the server closes the connection: code and message
    only (and `ref`, when a frame of the client's caused it)."""
    frame: dict[str, Any] = {"type": "error"}
    if ref is not _NO_REF:
        frame["ref"] = ref
    frame.update({"code": error.code, "message": error.message})
    return frame
