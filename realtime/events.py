"""The event types of PROTOCOL §3, their JSON form, and the client's fold over them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def delta(generation_id: str, seq: int, text: str) -> dict[str, Any]:
    return {"type": "delta", "id": generation_id, "seq": seq, "text": text}


def reset(generation_id: str, seq: int, attempt: int) -> dict[str, Any]:
    return {"type": "reset", "id": generation_id, "seq": seq, "attempt": attempt}


def done(
    generation_id: str,
    seq: int,
    *,
    status: str,
    finish_reason: str | None,
    usage: dict[str, int] | None,
    error: dict[str, str] | None,
) -> dict[str, Any]:
    return {
        "type": "done",
        "id": generation_id,
        "seq": seq,
        "status": status,
        "finish_reason": finish_reason,
        "usage": usage,
        "error": error,
    }


def snapshot(generation_id: str, seq: int, text: str, status: str) -> dict[str, Any]:
    """Not a log event: the fold of events 1..seq, sent first on a fresh subscribe."""
    return {
        "type": "snapshot",
        "id": generation_id,
        "seq": seq,
        "text": text,
        "status": status,
    }


def fold(messages: Iterable[dict[str, Any]], text: str = "") -> str:
    """What a client does with what it receives: the text it ends up showing."""
    for message in messages:
        kind = message["type"]
        if kind == "snapshot":
            text = message["text"]
        elif kind == "delta":
            text += message["text"]
        elif kind == "reset":
            text = ""
    return text
