"""The frame models refuse what the contract does not allow, so the checks of tests/wire.py
(run on every frame and event the suite receives) fail a test whose frames drift."""

from __future__ import annotations

from typing import Any

import pytest

from jobs import events
from tests.wire import check_event, check_frame, check_sse_frame

GENERATION_ID = "gen_" + "A" * 22

GENERATION: dict[str, Any] = {
    "id": GENERATION_ID,
    "status": "completed",
    "model": "gpt-4o-mini",
    "provider": "openai",
    "prompt": "Hello",
    "system": None,
    "max_tokens": 64,
    "temperature": None,
    "output": "Hi",
    "reasoning": "",
    "seq": 3,
    "attempt": 1,
    "finish_reason": "stop",
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    "error": None,
    "created_at": "2026-11-26T17:00:00.000Z",
    "started_at": "2026-11-26T17:00:00.100Z",
    "finished_at": "2026-11-26T17:00:01.000Z",
    "conversation_id": "conv_" + "B" * 22,
    "parent_id": None,
}
USAGE = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
RATE_LIMITED: dict[str, Any] = {
    "code": "provider_rate_limited",
    "message": "Slow down.",
    "retry_after": 30,
}

ERROR_FRAME: dict[str, Any] = {
    "type": "error",
    "ref": "r2",
    "id": GENERATION_ID,
    "code": "rate_limited",
    "message": "Too many frames.",
    "details": {},
    "retry_after": 1,
}
SNAPSHOT = events.snapshot(GENERATION_ID, 0, "", "queued")
DONE = events.done(
    GENERATION_ID, 8, status="completed", finish_reason="stop", usage=USAGE, error=None
)

# One of each frame as the service writes it (the events by jobs/events.py itself).
VALID_FRAMES: list[dict[str, Any]] = [
    SNAPSHOT,
    events.snapshot(GENERATION_ID, 4, "text", "running", "thought"),
    events.delta(GENERATION_ID, 5, "more"),
    events.reasoning(GENERATION_ID, 6, "hmm"),
    events.reset(GENERATION_ID, 7, 2),
    DONE,
    events.done(
        GENERATION_ID,
        8,
        status="completed",
        finish_reason="length",
        usage={**USAGE, "earlier_attempts_completion_tokens": 1},
        error=None,
    ),
    events.done(
        GENERATION_ID,
        9,
        status="failed",
        finish_reason="error",
        usage=None,
        error=RATE_LIMITED,
    ),
    {"type": "auth.ok", "ref": None, "user": "alice", "expires_at": 1_800_000_000},
    {"type": "created", "ref": "r1", "generation": GENERATION},
    {"type": "subscribed", "ref": {"any": ["json"]}, "id": GENERATION_ID},
    {"type": "unsubscribed", "ref": 3, "id": GENERATION_ID},
    {"type": "ack", "ref": None, "id": GENERATION_ID},
    {"type": "pong", "ref": "p"},
    ERROR_FRAME,
    {"type": "error", "code": "token_expired", "message": "The token has expired."},
    {"type": "conversation_subscribed", "ref": None, "conversation_id": "conv_1"},
    {"type": "conversation_unsubscribed", "ref": None, "conversation_id": "conv_1"},
    {"type": "turn", "conversation_id": "conv_1", "seq": 1, "generation": GENERATION},
    {
        "type": "conversation_updated",
        "conversation_id": "conv_1",
        "conversation": {
            "id": "conv_1",
            "title": "t",
            "system": None,
            "current_turn_id": GENERATION_ID,
            "turn_count": 1,
            "created_at": "2026-11-26T17:00:00.000Z",
            "updated_at": "2026-11-26T17:00:00.000Z",
        },
    },
    {"type": "conversation_deleted", "conversation_id": "conv_1"},
]


@pytest.mark.parametrize("frame", VALID_FRAMES, ids=lambda frame: str(frame["type"]))
def test_each_frame_the_service_writes_matches_its_model(frame: dict[str, Any]) -> None:
    check_frame(frame)


def _with(frame: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**frame, **changes}


def _without(frame: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in frame.items() if key != name}


DELTA = events.delta(GENERATION_ID, 5, "more")
CREATED = {"type": "created", "ref": "r1", "generation": GENERATION}


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (_with(DELTA, extra="x"), "extra field"),
        (_with(DELTA, seq="5"), "seq as a string"),
        (_with(DELTA, seq=0), "a delta at seq 0"),
        (_with(DELTA, text=None), "null text"),
        (_without(DELTA, "id"), "missing id"),
        (_with(DELTA, type="deltas"), "unknown type"),
        (_without(DELTA, "type"), "no type"),
        (_with(DONE, status="running"), "done that is not terminal"),
        (_with(DONE, finish_reason="finished"), "unknown finish reason"),
        (_with(DONE, usage={**USAGE, "prompt_tokens": "1"}), "usage count as a string"),
        (_without(SNAPSHOT, "reasoning"), "snapshot without reasoning"),
        (_with(CREATED, generation={**GENERATION, "secret": 1}), "extra generation field"),
        (_with(CREATED, generation=_without(GENERATION, "parent_id")), "generation lacks one"),
        (_without(CREATED, "ref"), "a reply that does not echo ref"),
        (_with(ERROR_FRAME, id=None), "error id null rather than absent"),
        (_with(ERROR_FRAME, code="teapot"), "an error code outside the contract"),
        ({"type": "pong", "ref": None, "user": "alice"}, "pong with a field of auth.ok"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_frame_that_drifts_from_its_model_fails(frame: dict[str, Any], why: str) -> None:
    with pytest.raises(AssertionError):
        check_frame(frame)


def test_a_control_frame_is_not_an_event() -> None:
    check_frame({"type": "pong", "ref": None})
    with pytest.raises(AssertionError):
        check_event({"type": "pong", "ref": None})


def test_an_sse_event_names_its_type_and_seq() -> None:
    check_sse_frame({"id": "5", "event": "delta", "data": DELTA})
    with pytest.raises(AssertionError):
        check_sse_frame({"id": "4", "event": "delta", "data": DELTA})
    with pytest.raises(AssertionError):
        check_sse_frame({"id": "5", "event": "message", "data": DELTA})
