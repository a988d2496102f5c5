"""Every WebSocket frame and SSE event of the wire contract (PROTOCOL §3-5 and §8,
docs/protocol.md) as a pydantic model, one per `type`.

These models are the contract's single statement of the realtime shapes: the AsyncAPI document
(realtime/asyncapi.py) is generated from their JSON schemas, frontend-sample/client.d.ts is
checked against them, and the test suite validates every frame and event the service sends
against them (tests/wire.py). The generation, usage, error and conversation objects inside
them are api/schemas.py's.

The models describe what this server sends and accepts, exactly: unknown keys are refused
(`extra="forbid"`), so a field added to an emitted frame and not here fails a test. A client
still ignores fields it does not know (PROTOCOL §8); that is its rule, not the server's.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import (
    Conversation,
    ErrorDetail,
    FinishReasonName,
    Generation,
    GenerationCreateRequest,
    GenerationError,
    GenerationStatus,
    Usage,
)

TerminalStatus = Literal["completed", "failed", "cancelled"]

# `ref` is whatever JSON value the client put in its frame, echoed as it came (PROTOCOL §5).
_REF_DESCRIPTION = "The client frame's `ref`, echoed as it came (null when it sent none)."


class Frame(BaseModel):
    """One JSON text frame (or SSE `data:` line)."""

    model_config = ConfigDict(extra="forbid")


def _omitted(description: str) -> Any:
    """A field that may be left out but is never sent as null: typed without None (so that
    validation refuses a null), its default (None, when absent) kept out of the schema."""
    return Field(default=None, description=description, json_schema_extra=_drop_default)


def _drop_default(schema: dict[str, Any]) -> None:
    del schema["default"]


# --- Events: the same JSON on the WebSocket and as SSE `data:` (PROTOCOL §3, §8) -------------


class SnapshotEvent(Frame):
    """Not a log event: the fold of events 1..seq, sent first on a subscription from 0, or when
    the events after the client's position can no longer be replayed."""

    type: Literal["snapshot"]
    id: str
    seq: int = Field(ge=0)
    text: str = Field(description="The output of the current attempt through `seq`.")
    reasoning: str = Field(description="The reasoning through `seq` (v1.1).")
    status: GenerationStatus = Field(description="The row's status when it was read.")


class DeltaEvent(Frame):
    """Append `text` to the output."""

    type: Literal["delta"]
    id: str
    seq: int = Field(ge=1)
    text: str


class ReasoningEvent(Frame):
    """Append `text` to the reasoning, never to the output (v1.1; same seq space as delta)."""

    type: Literal["reasoning"]
    id: str
    seq: int = Field(ge=1)
    text: str


class ResetEvent(Frame):
    """A new attempt started after a failure: discard the text and the reasoning so far."""

    type: Literal["reset"]
    id: str
    seq: int = Field(ge=1)
    attempt: int = Field(ge=1)


class DoneEvent(Frame):
    """Terminal: nothing follows it."""

    type: Literal["done"]
    id: str
    seq: int = Field(ge=1)
    status: TerminalStatus
    finish_reason: FinishReasonName | None
    usage: Usage | None
    error: GenerationError | None


EVENT_MODELS: tuple[type[Frame], ...] = (
    SnapshotEvent,
    DeltaEvent,
    ReasoningEvent,
    ResetEvent,
    DoneEvent,
)


# --- Frames the server sends besides events (PROTOCOL §5, docs/protocol.md) ------------------


class AuthOkFrame(Frame):
    """The reply to `auth` (the first and every renewal)."""

    type: Literal["auth.ok"]
    ref: Any = Field(description=_REF_DESCRIPTION)
    user: str = Field(description="The username.")
    expires_at: int = Field(description="The token's `exp`, in Unix seconds.")


class ErrorFrame(ErrorDetail, Frame):
    """A frame that could not be run, or the reason for the close that follows (4401, 4429).

    `ref` is absent only from errors that answer no frame (`token_expired`, a deactivated
    account); `id` is there when the frame named a generation."""

    type: Literal["error"]
    ref: Any = Field(default=None, description=_REF_DESCRIPTION)
    id: str = _omitted("The generation the failed frame named.")
    retry_after: int = _omitted("Seconds before trying again (429 codes, unavailable).")


class Reply(Frame):
    """A frame answering one of the client's (its `ref` echoed)."""

    ref: Any = Field(description=_REF_DESCRIPTION)


class GenerationReply(Reply):
    id: str


class ConversationReply(Reply):
    conversation_id: str


class CreatedFrame(Reply):
    """The reply to `generate`; the connection is then subscribed to it from 0."""

    type: Literal["created"]
    generation: Generation


class SubscribedFrame(GenerationReply):
    """The reply to `subscribe`; the events follow."""

    type: Literal["subscribed"]


class UnsubscribedFrame(GenerationReply):
    """The reply to `unsubscribe`; no event of that generation follows."""

    type: Literal["unsubscribed"]


class AckFrame(GenerationReply):
    """The reply to `cancel` once the cancel is recorded; `done` (cancelled) follows."""

    type: Literal["ack"]


class PongFrame(Reply):
    """The reply to `ping`."""

    type: Literal["pong"]


class ConversationSubscribedFrame(ConversationReply):
    """The reply to `subscribe_conversation`; `turn` frames follow."""

    type: Literal["conversation_subscribed"]


class ConversationUnsubscribedFrame(ConversationReply):
    """The reply to `unsubscribe_conversation`."""

    type: Literal["conversation_unsubscribed"]


class TurnFrame(Frame):
    """A turn of a followed conversation: every one above `after`, then each new one."""

    type: Literal["turn"]
    conversation_id: str
    seq: int = Field(ge=1, description="The turn's number in the conversation (branches count).")
    generation: Generation


class ConversationUpdatedFrame(Frame):
    """A followed conversation was renamed or switched branch (best effort, never replayed)."""

    type: Literal["conversation_updated"]
    conversation_id: str
    conversation: Conversation


class ConversationDeletedFrame(Frame):
    """A followed conversation was deleted; its subscription has ended."""

    type: Literal["conversation_deleted"]
    conversation_id: str


CONTROL_FRAME_MODELS: tuple[type[Frame], ...] = (
    AuthOkFrame,
    ErrorFrame,
    CreatedFrame,
    SubscribedFrame,
    UnsubscribedFrame,
    AckFrame,
    PongFrame,
    ConversationSubscribedFrame,
    ConversationUnsubscribedFrame,
    TurnFrame,
    ConversationUpdatedFrame,
    ConversationDeletedFrame,
)
SERVER_FRAME_MODELS = EVENT_MODELS + CONTROL_FRAME_MODELS


# --- Frames the client sends (PROTOCOL §5); each may carry `ref` -----------------------------


class ClientFrame(Frame):
    ref: Any = Field(
        default=None, description="Any JSON value; echoed in the reply (and in its error)."
    )


class AuthFrame(ClientFrame):
    """The first frame (within WS_AUTH_TIMEOUT), and again with a fresh token to renew."""

    type: Literal["auth"]
    token: str = Field(description="A JWT (PROTOCOL §1).")


class GenerateFrame(GenerationCreateRequest, ClientFrame):
    """Start a generation (the body of `POST /generations`) and subscribe to it from 0."""

    type: Literal["generate"]
    idempotency_key: str = _omitted("As the Idempotency-Key header of REST.")


class SubscribeFrame(ClientFrame):
    type: Literal["subscribe"]
    id: str
    after: int | None = Field(
        default=None, ge=0, le=2**53, description="The last seq the client has; 0 or absent: all."
    )


class UnsubscribeFrame(ClientFrame):
    type: Literal["unsubscribe"]
    id: str


class CancelFrame(ClientFrame):
    type: Literal["cancel"]
    id: str


class PingFrame(ClientFrame):
    type: Literal["ping"]


class SubscribeConversationFrame(ClientFrame):
    type: Literal["subscribe_conversation"]
    conversation_id: str
    after: int | None = Field(default=None, ge=0, description="The last turn seq the client has.")


class UnsubscribeConversationFrame(ClientFrame):
    type: Literal["unsubscribe_conversation"]
    conversation_id: str


# Each client frame and the frame that answers it (PROTOCOL §5); an `error` may answer any.
REPLIES: dict[type[Frame], type[Frame]] = {
    AuthFrame: AuthOkFrame,
    GenerateFrame: CreatedFrame,
    SubscribeFrame: SubscribedFrame,
    UnsubscribeFrame: UnsubscribedFrame,
    CancelFrame: AckFrame,
    PingFrame: PongFrame,
    SubscribeConversationFrame: ConversationSubscribedFrame,
    UnsubscribeConversationFrame: ConversationUnsubscribedFrame,
}
CLIENT_FRAME_MODELS = tuple(REPLIES)
