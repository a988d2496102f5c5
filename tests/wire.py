"""Every frame and event the service sends in a test is checked against its model
(realtime/schemas.py), where the tests receive them: the WebSocket test client
(tests/realtime/wsclient.py), the SSE reader (tests/harness.py `parse_sse`), the in-process
subscriber (tests/realtime/support.py) and the tests that hold a connection of their own.

A frame of an unknown type, or with a field missing, extra, null where it may not be, or of
the wrong type fails the test that received it, with the frame and what is wrong with it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from realtime.schemas import EVENT_MODELS, SERVER_FRAME_MODELS


def _union_by_type(models: tuple[type[BaseModel], ...]) -> TypeAdapter[Any]:
    """One of `models`, told apart by the `type` field."""
    union: Any = Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007
    return TypeAdapter(union)


server_frame_adapter = _union_by_type(SERVER_FRAME_MODELS)
event_adapter = _union_by_type(EVENT_MODELS)


def _check(adapter: TypeAdapter[Any], message: Any, what: str) -> Any:
    try:
        # Strict: "5" is not a seq, 1.0 not a count (the lax mode would convert them).
        model = adapter.validate_python(message, strict=True)
    except ValidationError as failure:
        raise AssertionError(f"{what} does not match its model: {message!r}\n{failure}") from None
    return model


def check_frame(message: Any) -> None:
    """A WebSocket frame from the service: an event or a control frame."""
    _check(server_frame_adapter, message, "WebSocket frame")


def check_event(message: Any) -> None:
    """An event object (SSE `data:`, the subscription's output): snapshot, delta, reasoning,
    reset or done."""
    _check(event_adapter, message, "event")


def check_sse_frame(frame: dict[str, Any]) -> None:
    """One parsed SSE event (`id`, `event`, `data`): the data is an event, `event:` is its
    type and `id:` its seq (PROTOCOL §4)."""
    data = frame["data"]
    check_event(data)
    assert frame.get("event") == data["type"], f"event: {frame.get('event')!r} for {data!r}"
    assert frame.get("id") == str(data["seq"]), f"id: {frame.get('id')!r} for {data!r}"


def decoded_frame(text: str | bytes) -> dict[str, Any]:
    """A WebSocket text frame from the service, decoded and checked."""
    assert isinstance(text, str), f"expected a text frame, got {text!r}"
    message: dict[str, Any] = json.loads(text)
    check_frame(message)
    return message


def decoded_event(text: str) -> dict[str, Any]:
    """An SSE `data:` value from the service, decoded and checked."""
    message: dict[str, Any] = json.loads(text)
    check_event(message)
    return message
