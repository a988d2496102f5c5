"""The typed shapes of the wire contract (PROTOCOL §2, docs/protocol.md): one definition each,
shared by REST (served from them by django-ninja), the WebSocket and SSE event models, and the
generated OpenAPI document.

Response models mirror what `Generation.to_dict` and friends write, key for key: a field that
the server omits when it has nothing to say (`retry_after`) is excluded when None, never sent
as null, so a model dump is the same bytes as before the models existed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from django.conf import settings
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from api.validation import encodable, sanitize_text

GenerationStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
# PROTOCOL §8: as the provider reported it, plus ours (cancelled, error).
FinishReasonName = Literal["stop", "length", "content_filter", "tool_calls", "cancelled", "error"]
# The REST error vocabulary (core.errors.STATUS_BY_CODE), also used by WebSocket error frames.
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
    """What the server sends: exactly these fields, so that a field added where a shape is
    written and forgotten here fails a test (the schema checks of tests/api). Clients still
    ignore fields they do not know (PROTOCOL §8); that tolerance is theirs, not the server's."""

    model_config = ConfigDict(extra="forbid")


class RequestModel(BaseModel):
    """What a client sends: unknown fields are rejected (PROTOCOL §2: 400 invalid_request), and
    types are strict (a number is not a string, `true` is not an integer)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# --- Shared response shapes ------------------------------------------------------------------


class Usage(WireModel):
    """Token counts of a generation: the provider's figures when it reports them, else counted."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    earlier_attempts_completion_tokens: int | None = Field(
        default=None,
        exclude_if=_is_none,
        description="Completion tokens of earlier attempts that failed mid-stream, included "
        "above (absent when there were none).",
    )


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
    """The generation object of PROTOCOL §2 (`core.models.Generation.to_dict`)."""

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
    """The conversation object without its turns (`core.models.Conversation.to_dict`)."""

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


# --- Requests ---------------------------------------------------------------------------------


def _refuse(message: str) -> PydanticCustomError:
    # The message is the one `details` shows for the field (api.validation.field_errors).
    return PydanticCustomError("invalid", message)


def _prompt(value: str) -> str:
    prompt = sanitize_text(value)
    if not prompt.strip():
        raise _refuse("Must not be empty.")
    return prompt


def _system(value: str | None) -> str | None:
    # Its length is prompt_too_long, a code of its own, checked after the field errors.
    return None if value is None else sanitize_text(value) or None


def _title(value: str) -> str:
    title = " ".join(sanitize_text(value).split())
    if len(title) > settings.MAX_TITLE_CHARS:
        raise _refuse(f"At most {settings.MAX_TITLE_CHARS} characters.")
    return title


def _encodable(value: str) -> str:
    if not encodable(value):
        raise _refuse("Text that is valid Unicode (no lone surrogates).")
    return value


# Looked up as sent: a lone surrogate (valid JSON) cannot be encoded for the query, a 400 not a 500.
Credential = Annotated[str, AfterValidator(_encodable)]
# Text fields as stored: control characters removed (PROTOCOL §6).
Prompt = Annotated[str, AfterValidator(_prompt)]
SystemPrompt = Annotated[str | None, AfterValidator(_system)]
Title = Annotated[str, AfterValidator(_title)]


class GenerationCreateRequest(RequestModel):
    """The body of `POST /generations` (and of the WebSocket `generate` frame).

    Types are strict (a number is not a string, `true` is not an integer); the limits that
    depend on settings (the model allow-list, MAX_OUTPUT_TOKENS) are checked here too, and the
    lengths after sanitising by api.validation.generation_params (prompt_too_long, a code of
    its own). Absent and null optional fields both mean "the default"."""

    prompt: Prompt = Field(description="1 to MAX_PROMPT_CHARS characters after sanitising.")
    model: str | None = Field(default=None, description="One of ALLOWED_MODELS.")
    system: SystemPrompt = Field(default=None, description="At most MAX_SYSTEM_CHARS characters.")
    max_tokens: int | None = Field(default=None, description="1 to MAX_OUTPUT_TOKENS.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    conversation_id: str | None = Field(
        default=None, description="Follow this conversation's current turn."
    )
    parent_id: str | None = Field(
        default=None,
        description="Follow this turn; null with conversation_id: a new first turn.",
    )

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        if value is not None and value not in settings.ALLOWED_MODELS:
            raise _refuse("Must be one of: " + ", ".join(settings.ALLOWED_MODELS) + ".")
        return value

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= settings.MAX_OUTPUT_TOKENS:
            raise _refuse(f"Must be from 1 to {settings.MAX_OUTPUT_TOKENS}.")
        return value


class ConversationCreateRequest(RequestModel):
    """The body of `POST /conversations`."""

    title: Title = Field(default="", description="At most 200 characters; empty: the first prompt.")
    system: SystemPrompt = Field(default=None, description="At most MAX_SYSTEM_CHARS characters.")


class ConversationUpdateRequest(RequestModel):
    """The body of `PATCH /conversations/{id}`: any of the fields; an absent one is unchanged."""

    title: Title = Field(default="", description="Rename.")
    system: SystemPrompt = Field(default=None, description="For turns created from now on.")
    current_turn_id: str = Field(
        default="", description="Switch to the branch through this turn (down to a leaf)."
    )


class TokenRequest(RequestModel):
    """The body of `POST /auth/token`."""

    username: Credential = Field(min_length=1)
    password: Credential = Field(min_length=1)


# --- Other responses --------------------------------------------------------------------------


class Token(WireModel):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="Seconds.")


class Ticket(WireModel):
    ticket: str = Field(description="For ?ticket= of this generation's events only.")
    expires_in: int = Field(description="Seconds (TICKET_TTL_S).")


class GenerationPage(WireModel):
    results: list[Generation]
    next_cursor: str | None


class ConversationPage(WireModel):
    results: list[Conversation]
    next_cursor: str | None


class MeUsage(WireModel):
    tokens_today: int = Field(description="Completion tokens since 00:00 UTC.")
    tokens_per_day: int
    active: int
    max_active: int


class Me(WireModel):
    username: str
    usage: MeUsage
