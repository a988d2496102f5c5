"""The event types of PROTOCOL §3, their JSON form, and the client's fold over them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

# Characters that JSON allows raw but that line-splitting readers break lines on: Python's
# str.splitlines (so the SSE example of docs/browser-client.md), and JavaScript before ES2019
# for U+2028/U+2029. Escaped in every JSON the service sends, so one event is one line
# for every reader.
_LINE_BREAKERS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"}
_LINE_BREAKER_TABLE = str.maketrans(_LINE_BREAKERS)


def escape_line_breakers(text: str) -> str:
    """`text` (JSON) with U+2028, U+2029 and U+0085 written as escapes: the same JSON value."""
    if "\u2028" in text or "\u2029" in text or "\u0085" in text:
        return text.translate(_LINE_BREAKER_TABLE)
    return text


def dumps(obj: Any) -> str:
    return escape_line_breakers(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))


def delta(generation_id: str, seq: int, text: str) -> dict[str, Any]:
    return {"type": "delta", "id": generation_id, "seq": seq, "text": text}


def reasoning(generation_id: str, seq: int, text: str) -> dict[str, Any]:
    """PROTOCOL §8: append `text` to the generation's reasoning (never to its output)."""
    return {"type": "reasoning", "id": generation_id, "seq": seq, "text": text}


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


def snapshot(
    generation_id: str, seq: int, text: str, status: str, reasoning_text: str = ""
) -> dict[str, Any]:
    """Not a log event: the fold of events 1..seq, sent first on a fresh subscribe."""
    return {
        "type": "snapshot",
        "id": generation_id,
        "seq": seq,
        "text": text,
        "reasoning": reasoning_text,
        "status": status,
    }


def fold(messages: Iterable[dict[str, Any]], text: str = "") -> str:
    """What a client does with what it receives: the text it ends up showing."""
    return fold_with_reasoning(messages, text)[0]


def fold_with_reasoning(
    messages: Iterable[dict[str, Any]], text: str = "", reasoning: str = ""
) -> tuple[str, str]:
    """`fold`, with the reasoning beside the text (PROTOCOL §8): (text, reasoning)."""
    for message in messages:
        kind = message["type"]
        if kind == "snapshot":
            text, reasoning = message["text"], message.get("reasoning", "")
        elif kind == "delta":
            text += message["text"]
        elif kind == "reasoning":
            reasoning += message["text"]
        elif kind == "reset":
            text = reasoning = ""
    return text, reasoning
