"""What a client or an operator asks of generations: create (limits, idempotency, the turn's
place in its conversation), cancel and retry. The worker's writes are jobs.writer's."""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from api.conversations import NO_TARGET, TurnTarget, place_retry, place_turn, turn_created
from api.ratelimit import rate_limiter
from api.validation import GenerationParams
from core import metrics
from core.errors import ApiError
from core.models import Generation, Status
from core.selectors import (
    Usage,
    generation_for_user,
    lock_user,
    start_of_day_utc,
    usage_now,
)
from jobs import cancel
from jobs.writer import enqueue

logger = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW = timedelta(hours=24)
# A client told "too many active" can retry when one of its generations ends; a few seconds
# is the right order for a streaming answer.
TOO_MANY_ACTIVE_RETRY_S = 5


def _request_fingerprint(params: GenerationParams, target: TurnTarget) -> str:
    """The request's hash; a request with no conversation fields hashes as it always did."""
    if not target.given:
        return params.fingerprint()
    conversation_part = f"{target.conversation_id}|{target.parent_given}|{target.parent_id}"
    return hashlib.sha256(f"{params.fingerprint()}|{conversation_part}".encode()).hexdigest()


def _idempotent_match(
    user: AbstractBaseUser, key: str | None, params: GenerationParams, target: TurnTarget
) -> Generation | None:
    """The generation an earlier request with `key` created, if any."""
    if not key:
        return None
    existing = Generation.objects.filter(user_id=user.pk, idempotency_key=key).first()
    if existing is None:
        return None
    if existing.created_at < timezone.now() - IDEMPOTENCY_WINDOW:
        # Past the window the key is free again: release it from the old generation.
        Generation.objects.filter(pk=existing.pk).update(idempotency_key=None)
        return None
    if existing.request_hash != _request_fingerprint(params, target):
        raise ApiError(
            "idempotency_conflict",
            "This Idempotency-Key was used with a different request body.",
        )
    return existing


def generation_create(
    *,
    user: AbstractBaseUser,
    params: GenerationParams,
    idempotency_key: str | None,
    target: TurnTarget = NO_TARGET,
) -> tuple[Generation, bool]:
    """Create and enqueue a generation; (generation, created). A repeat returns the first.

    The generation is a turn of a conversation: the one `target` names, or a new one
    (api.conversations.place_turn)."""
    existing = _idempotent_match(user, idempotency_key, params, target)
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            # Serialise this user's creates: the idempotency re-check, the rate limit and the
            # quotas below must see each other's effects, or concurrent requests race past.
            # The user's row lock and the usage the limits are checked against, in one
            # statement (the usage is read once the lock is granted).
            usage = usage_now(user.pk, lock=True)
            existing = _idempotent_match(user, idempotency_key, params, target)
            if existing is not None:
                return existing, False
            # Where the turn goes first: a request refused for its conversation fields (404,
            # 409, prompt_too_long) must not spend the rate limit. Its writes roll back with
            # the transaction when a limit refuses the request below.
            placement = place_turn(
                user=user,
                target=target,
                model=params.model,
                prompt=params.prompt,
                system=params.system,
            )
            _check_limits(user, usage)
            generation = _create_turn(
                user_id=user.pk,
                model=params.model,
                prompt=params.prompt,
                # A turn runs with its conversation's system prompt.
                system=placement.system,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                idempotency_key=idempotency_key,
                request_hash=_request_fingerprint(params, target) if idempotency_key else "",
                conversation_id=placement.conversation.pk,
                parent_id=placement.parent_id,
                turn_index=placement.turn_index,
                announce=not placement.new_conversation,
            )
    except IntegrityError:
        # A concurrent repeat won the unique (user, key) race after our first check.
        existing = _idempotent_match(user, idempotency_key, params, target)
        if existing is None:
            raise
        return existing, False
    return generation, True


def _create_turn(
    *,
    conversation_id: str | None,
    turn_index: int | None,
    announce: bool = True,
    **fields: Any,
) -> Generation:
    """A new queued generation: its row, its place as its conversation's current turn
    (announced to the conversation's followers unless `announce` is False), and its task,
    enqueued only once the row is visible to the worker (after the commit)."""
    generation = Generation.objects.create(
        conversation_id=conversation_id, turn_index=turn_index, **fields
    )
    if conversation_id is not None and turn_index is not None:
        turn_created(
            conversation_id=conversation_id,
            generation_id=generation.id,
            turn_index=turn_index,
            announce=announce,
        )
    transaction.on_commit(lambda: enqueue(generation.id))
    return generation


def _check_limits(
    user: AbstractBaseUser, usage: Usage | None = None, *, rate_limit: bool = True
) -> None:
    """Refuse the create if a limit says so; `usage` is read here unless given (read under
    the user's row lock, which the caller holds)."""
    usage = usage or usage_now(user.pk)
    limits = usage.limits
    if usage.active >= limits.max_active_generations:
        metrics.REJECTIONS.labels(code="too_many_active").inc()
        raise ApiError(
            "too_many_active",
            f"At most {limits.max_active_generations} generations may run at once.",
            retry_after_s=TOO_MANY_ACTIVE_RETRY_S,
        )
    if usage.tokens_today >= limits.tokens_per_day:
        midnight = start_of_day_utc() + timedelta(days=1)
        metrics.REJECTIONS.labels(code="quota_exceeded").inc()
        raise ApiError(
            "quota_exceeded",
            f"The daily quota of {limits.tokens_per_day} completion tokens is used up.",
            retry_after_s=int((midnight - timezone.now()).total_seconds()) + 1,
        )
    if not rate_limit:
        return
    wait_s = rate_limiter().take(f"create:{user.pk}", limits.rate_limit_per_minute)
    if wait_s is not None:
        metrics.REJECTIONS.labels(code="rate_limited").inc()
        raise ApiError(
            "rate_limited",
            f"At most {limits.rate_limit_per_minute} generations per minute.",
            retry_after_s=wait_s,
        )


def generation_cancel(
    *, user: AbstractBaseUser, generation_id: str, wait_s: float = cancel.CANCEL_WAIT_S
) -> Generation:
    """Stop the user's generation (jobs.cancel); another user's is 'not found'."""
    return cancel.cancel(generation_for_user(user=user, generation_id=generation_id), wait_s=wait_s)


def generation_retry(*, generation_id: str) -> tuple[Generation, bool]:
    """An operator's retry of a failed generation: (the retry, created).

    The retry is a NEW generation, for the same user with the same request, linked to the
    original by `retry_of`; the original stays failed. Re-opening the failed one instead would
    send events after a `done` that its clients have already seen (PROTOCOL §3: nothing
    follows `done`). A generation is retried once: asking again returns the first retry.

    The retry counts toward the user's active and daily limits like any create, and is refused
    as one would be (too_many_active, quota_exceeded); the per-minute rate limit is the
    user's own allowance and an operator's action does not spend it."""
    with transaction.atomic():
        original = Generation.objects.select_related("user").get(pk=generation_id)
        # The user's row serialises this with the user's own creates (the limits below).
        lock_user(original.user_id)
        existing = Generation.objects.filter(retry_of_id=original.pk).order_by("created_at")
        first_retry = existing.first()
        if first_retry is not None:
            return first_retry, False
        if original.status != Status.FAILED:
            raise ApiError(
                "invalid_request",
                f"Only a failed generation can be retried; this one is {original.status}.",
            )
        _check_limits(original.user, rate_limit=False)
        # A turn of a conversation is retried as a new branch beside it (same parent).
        turn_index = place_retry(original)
        retry = _create_turn(
            user_id=original.user_id,
            model=original.model,
            prompt=original.prompt,
            system=original.system,
            max_tokens=original.max_tokens,
            temperature=original.temperature,
            retry_of=original,
            conversation_id=original.conversation_id,
            parent_id=original.parent_id,
            turn_index=turn_index,
        )
    logger.info("generation %s: retried as %s", original.pk, retry.pk)
    return retry, True
