"""The typed shapes of the wire contract (PROTOCOL §2, docs/protocol.md): one definition each,
shared by REST (served from them by django-ninja), the WebSocket and SSE event models, and the
generated OpenAPI document.

Response models mirror what `Generation.to_dict` and friends write, key for key: a field that
the server omits when it has nothing to say (`retry_after`) is excluded when None, never sent
as null, so a model dump is the same bytes as before the models existed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

GenerationStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
# PROTOCOL §8: as the provider reported it, plus ours (cancelled, error).
FinishReasonName = Literal["stop", "length", "content_filter", "tool_calls", "cancelled", "error"]
# The REST error vocabulary (api.errors.STATUS_BY_CODE), also used by WebSocket error frames.
ErrorCode = Literal[
    "invalid_json",
    "invalid_request",
    "prompt_too_long",
    "unauthorized",
    "token_expired",
    "not_found",
    "method_not_allowed",
    "idempotency_conflict",
    "parent_not_finished",
    "conversation_full",
    "payload_too_large",
    "unsupported_media_type",
    "rate_limited",
    "quota_exceeded",
    "too_many_active",
    "too_many_streams",
    "internal_error",
    "unavailable",
]


def _is_none(value: Any) -> bool:
    return value is None


class WireModel(BaseModel):
    """What the server sends. Unknown keys are allowed when reading one back (PROTOCOL §8: a
    client ignores fields it does not know), so a model tolerates a newer server."""

    model_config = ConfigDict(extra="allow")


class RequestModel(BaseModel):
    """What a client sends: unknown fields are rejected (PROTOCOL §2: 400 invalid_request)."""

    model_config = ConfigDict(extra="forbid")


# --- Shared response shapes ------------------------------------------------------------------


class Usage(WireModel):
    """Token counts of a generation: the provider's figures when it reports them, else counted."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerationError(WireModel):
    """The `error` of a failed generation and of its `done` event (PROTOCOL §8)."""

    code: str = Field(description="e.g. provider_rate_limited, provider_unavailable, worker_lost")
    message: str
    retry_after: int | None = Field(
        default=None,
        exclude_if=_is_none,
        description="Seconds, when the provider said when to retry (absent otherwise).",
    )


class Generation(WireModel):
    """The generation object of PROTOCOL §2 (`api.models.Generation.to_dict`)."""

    id: str = Field(examples=["gen_3kTMd9sXq2Lr8vNp4YwZ1a"])
    status: GenerationStatus
    model: str
    provider: str = Field(description="openai, or demo for the offline demo's answers.")
    prompt: str
    system: str | None
    max_tokens: int
    temperature: float | None
    output: str
    reasoning: str
    seq: int = Field(
        description="The last event seq that output includes; once terminal, the seq of done."
    )
    attempt: int
    finish_reason: FinishReasonName | None
    usage: Usage | None
    error: GenerationError | None
    created_at: str = Field(examples=["2026-11-26T17:00:00.000Z"])
    started_at: str | None
    finished_at: str | None
    conversation_id: str | None
    parent_id: str | None


class ErrorDetail(WireModel):
    """The `error` member of every error body."""

    code: ErrorCode
    message: str
    details: dict[str, Any] = Field(
        default_factory=dict, description="Field errors of invalid_request, and the like."
    )
    retry_after: int | None = Field(
        default=None,
        exclude_if=_is_none,
        description="Seconds (WebSocket error frames); REST says it in the Retry-After header.",
    )


class ErrorBody(WireModel):
    """Every REST error: `{"error": {"code", "message", "details"}}`."""

    error: ErrorDetail


class Conversation(WireModel):
    """The conversation object without its turns (`api.models.Conversation.to_dict`)."""

    id: str = Field(examples=["conv_9aD2kLm0PqRsTuVwXyZ123"])
    title: str
    system: str | None
    current_turn_id: str | None
    turn_count: int
    created_at: str
    updated_at: str


class Branch(WireModel):
    turn_id: str
    turns: int
    current: bool


class ConversationDetail(Conversation):
    """The conversation with every turn, the current branch and the list of branches."""

    turns: list[Generation]
    current_path: list[str]
    branches: list[Branch]
