from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from core.ids import CONVERSATION_ID_MAX_LENGTH, MAX_LENGTH, new_conversation_id, new_generation_id


class Status(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
ACTIVE_STATUSES = frozenset({Status.QUEUED, Status.RUNNING})


class FinishReason(models.TextChoices):
    """PROTOCOL §8: as the provider reported it, plus ours (cancelled, error)."""

    STOP = "stop"
    LENGTH = "length"
    # A filtered answer is completed but must never look like a normal stop.
    CONTENT_FILTER = "content_filter"
    TOOL_CALLS = "tool_calls"
    CANCELLED = "cancelled"
    ERROR = "error"


def current_provider() -> str:
    """The provider that runs generations created now (LLM_PROVIDER): `demo` labels the
    offline demo's made-up answers as such (PROTOCOL §7)."""
    return str(settings.LLM_PROVIDER)


class Generation(models.Model):
    """One LLM generation: the request, and the store of record for its output.

    The worker is the only writer while it runs; every write it makes is fenced by
    ``attempt`` so that a worker presumed dead cannot overwrite a newer attempt.
    """

    id = models.CharField(primary_key=True, max_length=MAX_LENGTH, default=new_generation_id)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="generations"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    model = models.CharField(max_length=100)
    provider = models.CharField(max_length=16, default=current_provider)
    prompt = models.TextField()
    system = models.TextField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField()
    temperature = models.FloatField(null=True, blank=True)

    output = models.TextField(default="", blank=True)
    # PROTOCOL §8: what a reasoning model thought before answering (`reasoning` events),
    # kept beside the output and never part of it.
    reasoning = models.TextField(default="", blank=True)
    # The last event seq that `output` includes; once terminal, the seq of `done`.
    seq = models.PositiveIntegerField(default=0)
    attempt = models.PositiveSmallIntegerField(default=1)
    finish_reason = models.CharField(
        max_length=16, choices=FinishReason.choices, null=True, blank=True
    )
    usage = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(default=0)
    # The completion tokens the running attempt may use: min(max_tokens, the user's daily
    # quota left when it started, less what other running generations reserved). While the
    # generation runs, it counts toward the day's quota at this figure (core.selectors).
    token_cap = models.PositiveIntegerField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    # An operator's retry of a failed generation is a new generation (api.services).
    retry_of = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="retries"
    )

    # Conversations (docs/protocol.md): every generation is a turn of one conversation, and
    # follows `parent` (None: the conversation's first turn, or an edit of it). Null only for
    # rows created before conversations existed.
    conversation = models.ForeignKey(
        "Conversation", on_delete=models.CASCADE, null=True, blank=True, related_name="turns"
    )
    parent = models.ForeignKey(
        "self", on_delete=models.CASCADE, null=True, blank=True, related_name="children"
    )
    # 1, 2, 3, ... in the order the conversation's turns were created: the seq of the
    # conversation's `turn` events, so that a subscriber resumes after the last it saw.
    turn_index = models.PositiveIntegerField(null=True, blank=True)

    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_hash = models.CharField(max_length=64, blank=True, default="")

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # The list endpoint and the admin: a user's generations, newest first.
            models.Index(fields=["user", "-created_at", "-id"], name="gen_user_created"),
            # The reaper: running generations by heartbeat age.
            models.Index(fields=["status", "heartbeat_at"], name="gen_status_heartbeat"),
            # Quotas: a user's usage since midnight and their active generations.
            models.Index(fields=["user", "status"], name="gen_user_status"),
            # The admin's list, newest first, and each of its filters with that ordering, so
            # that a page reads only the rows it shows. The id is explicit: the admin orders
            # by (created_at, id), and an index's implicit id is ascending, which a descending
            # created_at cannot use (a filesort of the whole table, bench/admin_scale.py).
            models.Index(fields=["-created_at", "-id"], name="gen_created"),
            models.Index(fields=["status", "-created_at", "-id"], name="gen_status_created"),
            models.Index(fields=["model", "-created_at", "-id"], name="gen_model_created"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "idempotency_key"], name="gen_user_idempotency_key"
            ),
            # A conversation's turns in order, and no two with one index (the conversation's
            # row lock serialises creates; this makes a slip loud instead of silent).
            models.UniqueConstraint(
                fields=["conversation", "turn_index"], name="gen_conversation_turn_index"
            ),
        ]

    def __str__(self) -> str:
        return self.id

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The generation object of PROTOCOL §2."""
        return {
            "id": self.id,
            "status": self.status,
            "model": self.model,
            "provider": self.provider,
            "prompt": self.prompt,
            "system": self.system,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "output": self.output,
            "reasoning": self.reasoning,
            "seq": self.seq,
            "attempt": self.attempt,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "error": self.error,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "conversation_id": self.conversation_id,
            "parent_id": self.parent_id,
        }


class Conversation(models.Model):
    """A user's multi-turn chat: a tree of turns (generations), each following its parent.

    `current_turn` is the tip of the branch the user is on: a new turn that names no parent
    follows it, and the conversation view shows the path from the root to it."""

    id = models.CharField(
        primary_key=True, max_length=CONVERSATION_ID_MAX_LENGTH, default=new_conversation_id
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True, default="")
    system = models.TextField(null=True, blank=True)
    current_turn = models.ForeignKey(
        Generation, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    turn_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            # The list endpoint: a user's conversations, newest first; and the admin's search.
            models.Index(fields=["user", "-created_at", "-id"], name="conv_user_created"),
            models.Index(fields=["-created_at", "-id"], name="conv_created"),
        ]

    def __str__(self) -> str:
        return self.title or self.id

    def to_dict(self) -> dict[str, Any]:
        """The conversation object of docs/protocol.md (without its turns)."""
        return {
            "id": self.id,
            "title": self.title,
            "system": self.system,
            "current_turn_id": self.current_turn_id,
            "turn_count": self.turn_count,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


class UserLimits(models.Model):
    """Per-user overrides of the limits of PROTOCOL §6; a blank field uses the setting."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="limits"
    )
    rate_limit_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_day = models.PositiveIntegerField(null=True, blank=True)
    max_active_generations = models.PositiveIntegerField(null=True, blank=True)
    max_connections = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "user limits"

    def __str__(self) -> str:
        return f"limits for {self.user}"


class SettledUsage(models.Model):
    """The completion tokens of a user's finished generations, by the UTC day each was created
    on: what the daily quota counts of them (PROTOCOL §6), kept as one figure per user and day.

    A generation's tokens are added in the transaction that writes its final row
    (jobs.writer), and never change after; the quota's reads (core.selectors) add those of
    the user's generations still queued or running, which a user has at most
    MAX_ACTIVE_GENERATIONS of. Summing every generation of the day instead cost each create
    and each claim a read of all of them, under the user's row lock (docs/scaling.md, "The
    daily quota's read"). Deleting a finished generation does not give its tokens back."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="settled_usage"
    )
    day = models.DateField()
    completion_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "day"], name="settled_usage_user_day"),
        ]

    def __str__(self) -> str:
        return f"{self.user} on {self.day}: {self.completion_tokens}"


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return str(value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z")
