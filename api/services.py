"""Every write to a generation: what the API asks for and what the worker reports.

The worker's writes are fenced: each is an UPDATE ... WHERE attempt = <its attempt> AND
status = 'running', so a worker that was presumed dead and replaced changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from api.conversations import NO_TARGET, TurnTarget, place_retry, place_turn, turn_created
from api.errors import ApiError
from api.models import TERMINAL_STATUSES, FinishReason, Generation, Status
from api.ratelimit import rate_limiter
from api.selectors import (
    active_count,
    generation_for_user,
    limits_for,
    start_of_day_utc,
    tokens_committed_today,
    tokens_used_today,
)
from api.validation import GenerationParams
from project import metrics
from realtime import events
from realtime.eventlog import SEQ_GAP_AFTER_LOST_LOG, event_log
from realtime.publish import publish_event

logger = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW = timedelta(hours=24)
# A client told "too many active" can retry when one of its generations ends; a few seconds
# is the right order for a streaming answer.
TOO_MANY_ACTIVE_RETRY_S = 5
# How long a cancel request waits for the worker to stop, so the reply usually shows the
# final state; the worker reads the flag between chunks, well within this.
CANCEL_WAIT_S = 2.0


def _enqueue(generation_id: str, *, delay_s: float = 0.0) -> None:
    from jobs.tasks import run_generation

    try:
        if delay_s > 0:
            run_generation.schedule((generation_id,), delay=delay_s)
        else:
            run_generation(generation_id)
    except Exception:
        # The row is committed and queued; the reaper re-enqueues queued generations that
        # no worker has claimed, so a broken queue delays the generation but loses nothing.
        logger.exception("enqueue failed for %s; the reaper will retry", generation_id)


def _request_fingerprint(params: GenerationParams, target: TurnTarget) -> str:
    """The request's hash; a request with no conversation fields hashes as it always did."""
    if not target.given:
        return params.fingerprint()
    return hashlib.sha256(
        f"{params.fingerprint()}|{target.fingerprint_part()}".encode()
    ).hexdigest()


def _idempotent_match(
    user: AbstractBaseUser, key: str, params: GenerationParams, target: TurnTarget = NO_TARGET
) -> Generation | None:
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
    if idempotency_key:
        existing = _idempotent_match(user, idempotency_key, params, target)
        if existing is not None:
            return existing, False
    try:
        with transaction.atomic():
            # Serialise this user's creates: the idempotency re-check, the rate limit and the
            # quotas below must see each other's effects, or concurrent requests race past.
            get_user_model().objects.select_for_update().filter(pk=user.pk).first()
            if idempotency_key:
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
            _check_limits(user)
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
            )
    except IntegrityError:
        # A concurrent repeat won the unique (user, key) race after our first check.
        if not idempotency_key:
            raise
        existing = _idempotent_match(user, idempotency_key, params, target)
        if existing is None:
            raise
        return existing, False
    return generation, True


def _create_turn(
    *, conversation_id: str | None, turn_index: int | None, **fields: Any
) -> Generation:
    """A new queued generation: its row, its place as its conversation's current turn, and
    its task, enqueued only once the row is visible to the worker (after the commit)."""
    generation = Generation.objects.create(
        conversation_id=conversation_id, turn_index=turn_index, **fields
    )
    if conversation_id is not None and turn_index is not None:
        turn_created(
            conversation_id=conversation_id, generation_id=generation.id, turn_index=turn_index
        )
    transaction.on_commit(lambda: _enqueue(generation.id))
    return generation


def _check_limits(user: AbstractBaseUser, *, rate_limit: bool = True) -> None:
    limits = limits_for(user.pk)
    if active_count(user.pk) >= limits.max_active_generations:
        metrics.REJECTIONS.labels(code="too_many_active").inc()
        raise ApiError(
            "too_many_active",
            f"At most {limits.max_active_generations} generations may run at once.",
            retry_after_s=TOO_MANY_ACTIVE_RETRY_S,
        )
    if tokens_used_today(user.pk) >= limits.tokens_per_day:
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
            retry_after_s=int(wait_s + 0.999),
        )


def generation_cancel(
    *, user: AbstractBaseUser, generation_id: str, wait_s: float = CANCEL_WAIT_S
) -> Generation:
    """Stop a generation; idempotent. Returns it, usually already cancelled.

    Waits up to `wait_s` for the worker to stop, so that a REST reply shows the final state;
    the WebSocket passes 0 and its client learns the end from the `done` event.
    """
    generation = generation_for_user(user=user, generation_id=generation_id)
    if generation.is_terminal:
        return generation
    if _cancel_queued(generation):
        generation.refresh_from_db()
        return generation
    Generation.objects.filter(pk=generation.pk, status=Status.RUNNING).update(cancel_requested=True)
    event_log().request_cancel(generation.pk)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        generation.refresh_from_db()
        if generation.is_terminal:
            break
        if generation.status == Status.QUEUED and _cancel_queued(generation):
            generation.refresh_from_db()
            break
        time.sleep(0.05)
    return generation


def _cancel_queued(generation: Generation) -> bool:
    """Cancel a generation no worker holds; it then never starts. False if one does."""
    return _terminate_without_worker(
        Generation.objects.filter(
            pk=generation.pk, status=Status.QUEUED, attempt=generation.attempt
        ),
        generation.pk,
        generation.attempt,
        # No worker has claimed this attempt; fencing the log to it shuts out earlier ones.
        log_owner=generation.attempt,
        row_output=generation.output,
        row_seq=generation.seq,
        status=Status.CANCELLED,
        finish_reason=FinishReason.CANCELLED,
        error=None,
    )


def _terminate_without_worker(
    rows: Any,
    generation_id: str,
    attempt: int,
    *,
    log_owner: int,
    row_output: str,
    row_seq: int,
    status: str,
    finish_reason: str,
    error: dict[str, str] | None,
) -> bool:
    """End a generation that no live worker holds, keeping the log and the row in agreement.

    Subscribers may have seen events past the row's last checkpoint (a worker died between
    two checkpoints): the final output is the row's text plus those events. If the buffer can
    no longer supply them, the output is the row's, and a gap before `done` makes every
    subscriber replace its text with the row's snapshot.

    The log is first fenced to `log_owner`, and read only then, so that nothing is appended
    between the read and `done`, nor after it. Where a worker may still hold `attempt` (the
    reaper only presumes it dead), `log_owner` is a number no worker holds.
    """
    # `done` goes above any seq a subscriber may hold: they find the gap unfillable, read
    # the (then final) row, and end with its snapshot and `done`, whatever they had seen.
    last_published = _last_published_seq(
        event_log().take_fence(generation_id, log_owner), attempt=attempt, row_seq=row_seq
    )
    after_row, _ = event_log().read_after_sync(generation_id, row_seq)
    head = max(row_seq, last_published)
    if [event.seq for event in after_row] == list(range(row_seq + 1, head + 1)):
        output = events.fold((event.decoded() for event in after_row), row_output)
        done_seq = head + 1
    else:
        # The buffer can no longer name everything subscribers saw after the checkpoint (it
        # was trimmed, or lost): the final output is the row's, and `done` skips a seq, so
        # that every subscriber finds a gap it cannot fill, reads the final row and takes
        # its snapshot before `done` (realtime.subscription), whatever it had seen.
        output = row_output
        done_seq = head + 2
    updated = rows.update(
        status=status,
        finish_reason=finish_reason,
        error=error,
        seq=done_seq,
        output=output,
        finished_at=timezone.now(),
        cancel_requested=status == Status.CANCELLED,
    )
    if not updated:
        if log_owner != attempt:
            _publish_done_of_finished_row(generation_id, log_owner)
        return False
    metrics.GENERATIONS_FINISHED.labels(status=status, finish_reason=finish_reason).inc()
    final = events.done(
        generation_id,
        done_seq,
        status=status,
        finish_reason=finish_reason,
        usage=None,
        error=error,
    )
    publish_event(generation_id, log_owner, final)
    return True


def _publish_done_of_finished_row(generation_id: str, log_owner: int) -> None:
    """The worker presumed dead wrote its final row first after all, but the fence may have
    refused its `done`: publish it for it (refused in turn if the worker's got in first)."""
    row = (
        Generation.objects.filter(pk=generation_id)
        .values_list("status", "seq", "finish_reason", "usage", "error")
        .first()
    )
    if row is None or row[0] not in TERMINAL_STATUSES:
        return
    status, seq, finish_reason, usage, error = row
    done = events.done(
        generation_id, seq, status=status, finish_reason=finish_reason, usage=usage, error=error
    )
    publish_event(generation_id, log_owner, done)


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
        get_user_model().objects.select_for_update().filter(pk=original.user_id).first()
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


# --- The worker's side ----------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    generation_id: str
    attempt: int
    start_seq: int  # the last seq already in the log; this attempt continues after it
    model: str
    prompt: str
    system: str | None
    max_tokens: int  # the cap for this attempt: the request's, or less if the quota is short
    temperature: float | None
    created_at: datetime | None = None  # for the time to first token (project.metrics)
    # Completion tokens that earlier runs of this generation (failed attempts, a run handed
    # back on shutdown) were paid for: they count toward the daily quota and the usage.
    earlier_completion_tokens: int = 0


def generation_claim(generation_id: str) -> Claim | None:
    """Take a queued generation for this worker; None when cancelled or taken elsewhere."""
    now = timezone.now()
    with transaction.atomic():
        updated = Generation.objects.filter(pk=generation_id, status=Status.QUEUED).update(
            status=Status.RUNNING, heartbeat_at=now
        )
        if not updated:
            return None
        Generation.objects.filter(pk=generation_id).update(
            started_at=Coalesce(F("started_at"), Value(now)),
            token_cap=_token_cap(generation_id),
        )
    generation = Generation.objects.get(pk=generation_id)
    try:
        last_published = event_log().take_fence(generation_id, generation.attempt)
    except Exception:
        # Redis is unreachable: give the claim back rather than leave the row running with
        # no worker (the reaper would take HEARTBEAT_TIMEOUT_S and an attempt to notice).
        # The reaper re-enqueues it once the queue is back.
        _fenced(generation_id, generation.attempt).update(status=Status.QUEUED, heartbeat_at=now)
        raise
    # This attempt continues above any seq a subscriber may hold, so that after a lost log
    # they see a gap, read the row (checkpointed right after this attempt's `reset`) and take
    # its snapshot, instead of dropping this attempt's first events as duplicates.
    last_published = _last_published_seq(
        last_published, attempt=generation.attempt, row_seq=generation.seq
    )
    return Claim(
        generation_id=generation_id,
        attempt=generation.attempt,
        start_seq=max(generation.seq, last_published),
        model=generation.model,
        prompt=generation.prompt,
        system=generation.system,
        # The cap, not the request's figure: the daily quota may leave less room.
        max_tokens=generation.token_cap if generation.token_cap is not None else 0,
        temperature=generation.temperature,
        created_at=generation.created_at,
        earlier_completion_tokens=generation.completion_tokens,
    )


def _last_published_seq(fenced: int | None, *, attempt: int, row_seq: int) -> int:
    """The last seq published to the log, from what `take_fence` found (None: nothing).

    Nothing found although an earlier attempt ran or the row was checkpointed means the log
    was lost (Redis restarted) after events may have been published past the row's
    checkpoint: subscribers may hold seqs up to there, so the answer is far above the row."""
    if fenced is None and (attempt > 1 or row_seq > 0):
        return row_seq + SEQ_GAP_AFTER_LOST_LOG
    return fenced or 0


def _token_cap(generation_id: str) -> int:
    """The completion tokens the attempt being claimed may use, reserved against the user's
    daily quota by writing it to the row in the claim's transaction.

    The cap is min(max_tokens, quota - committed), where committed counts each other running
    generation at its own cap (selectors.tokens_committed_today): first come, first served,
    and concurrent generations never pass the quota together. Once a generation ends, only
    the tokens it used count, and the rest of its reservation is free again.

    Serialised per user: on MySQL by the user's row (as creates are); on SQLite by the
    database's write lock, which the claim's UPDATE took before this reads anything."""
    user_id, max_tokens, earlier_tokens = Generation.objects.values_list(
        "user_id", "max_tokens", "completion_tokens"
    ).get(pk=generation_id)
    get_user_model().objects.select_for_update().filter(pk=user_id).first()
    # `earlier_tokens`: what earlier runs of this generation used (0 on its first claim);
    # they were paid for, so they leave the quota less room.
    left = (
        limits_for(user_id).tokens_per_day
        - tokens_committed_today(user_id, excluding=generation_id)
        - earlier_tokens
    )
    return max(0, min(max_tokens, left))


def _fenced(generation_id: str, attempt: int) -> Any:
    return Generation.objects.filter(pk=generation_id, attempt=attempt, status=Status.RUNNING)


@dataclass(frozen=True)
class Checkpoint:
    """One running attempt's fold so far, as a checkpoint writes it."""

    generation_id: str
    attempt: int
    output: str
    reasoning: str
    seq: int
    completion_tokens: int


# Rows per checkpoint statement: 6 parameters a row keeps a statement of this many rows well
# inside SQLite's 32,766 bound variables and MySQL's packet size.
CHECKPOINT_ROWS_PER_STATEMENT_MAX = 500


def _checkpoint_many_sql(checkpoints: list[Checkpoint], now: datetime, *, uncancelled: bool) -> int:
    """One UPDATE for every row of `checkpoints`, each fenced by its own attempt; how many rows
    it matched (MySQL is connected with FOUND_ROWS, SQLite counts matches)."""
    table = connection.ops.quote_name(Generation._meta.db_table)
    params: list[Any] = []
    assignments = []
    columns: dict[str, list[Any]] = {
        "output": [c.output for c in checkpoints],
        "reasoning": [c.reasoning for c in checkpoints],
        "seq": [c.seq for c in checkpoints],
        "completion_tokens": [c.completion_tokens for c in checkpoints],
    }
    cases = " ".join("WHEN %s THEN %s" for _ in checkpoints)
    for column, values in columns.items():
        assignments.append(f"{column} = CASE id {cases} END")
        for checkpoint, value in zip(checkpoints, values, strict=True):
            params.extend((checkpoint.generation_id, value))
    params.append(connection.ops.adapt_datetimefield_value(now))
    fences = " OR ".join("(id = %s AND attempt = %s)" for _ in checkpoints)
    for checkpoint in checkpoints:
        params.extend((checkpoint.generation_id, checkpoint.attempt))
    params.append(Status.RUNNING)
    sql = (
        f"UPDATE {table} SET {', '.join(assignments)}, heartbeat_at = %s"
        f" WHERE ({fences}) AND status = %s"
    )
    if uncancelled:
        sql += " AND NOT cancel_requested"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


def generation_checkpoint_many(checkpoints: list[Checkpoint]) -> dict[str, tuple[bool, bool]]:
    """`generation_checkpoint` for every attempt a worker process runs, in one statement:
    (still ours, cancel requested) by generation id.

    One UPDATE carries every row, each fenced by its attempt and "not cancelled"; when it
    matched them all (the common case) that answers both questions. Only when it matched
    fewer does one SELECT tell superseded rows from cancelled ones, and one more UPDATE
    stores the fold of the cancelled ones (their runner stops, and ends them from it)."""
    results: dict[str, tuple[bool, bool]] = {}
    now = timezone.now()
    for start in range(0, len(checkpoints), CHECKPOINT_ROWS_PER_STATEMENT_MAX):
        batch = checkpoints[start : start + CHECKPOINT_ROWS_PER_STATEMENT_MAX]
        if _checkpoint_many_sql(batch, now, uncancelled=True) == len(batch):
            results.update((c.generation_id, (True, False)) for c in batch)
            continue
        rows = {
            generation_id: (attempt, status, cancel_requested)
            for generation_id, attempt, status, cancel_requested in Generation.objects.filter(
                pk__in=[c.generation_id for c in batch]
            ).values_list("id", "attempt", "status", "cancel_requested")
        }
        cancelled = []
        for checkpoint in batch:
            attempt, status, cancel_requested = rows.get(checkpoint.generation_id, (0, "", False))
            ours = attempt == checkpoint.attempt and status == Status.RUNNING
            results[checkpoint.generation_id] = (ours, ours and cancel_requested)
            if ours and cancel_requested:
                cancelled.append(checkpoint)
        if cancelled:
            _checkpoint_many_sql(cancelled, now, uncancelled=False)
    return results


def generation_checkpoint(
    generation_id: str,
    attempt: int,
    *,
    output: str,
    seq: int,
    completion_tokens: int,
    reasoning: str = "",
) -> tuple[bool, bool]:
    """Persist one attempt's fold so far and its heartbeat: (still ours, cancel requested)."""
    checkpoint = Checkpoint(generation_id, attempt, output, reasoning, seq, completion_tokens)
    return generation_checkpoint_many([checkpoint])[generation_id]


def generation_final_seq(generation_id: str, attempt: int) -> int | None:
    """The seq of `done` in the final row that `attempt` wrote; None if it wrote none."""
    final: int | None = (
        Generation.objects.filter(pk=generation_id, attempt=attempt, status__in=TERMINAL_STATUSES)
        .values_list("seq", flat=True)
        .first()
    )
    return final


def generation_finish(
    generation_id: str,
    attempt: int,
    *,
    status: str,
    output: str,
    seq: int,
    finish_reason: str,
    usage: dict[str, int] | None,
    error: dict[str, Any] | None,
    reasoning: str = "",
) -> bool:
    """Write the final row; `seq` is that of the `done` event published after it."""
    completion_tokens = usage["completion_tokens"] if usage else 0
    updated = _fenced(generation_id, attempt).update(
        status=status,
        output=output,
        reasoning=reasoning,
        seq=seq,
        finish_reason=finish_reason,
        usage=usage,
        error=error,
        completion_tokens=completion_tokens,
        finished_at=timezone.now(),
        heartbeat_at=timezone.now(),
    )
    return bool(updated)


def generation_requeue(
    generation_id: str,
    attempt: int,
    *,
    output: str | None = None,
    seq: int | None = None,
    reasoning: str | None = None,
    completion_tokens: int | None = None,
    delay_s: float = 0.0,
) -> bool:
    """Hand a running attempt back to the queue as the next attempt (which sends `reset`).

    Without `output` and `seq` the row keeps its last checkpoint (a hand-back on shutdown
    for a runner that did not answer in time). `delay_s`: the next attempt starts no sooner
    (a back-off after a provider failure mid-stream)."""
    fold: dict[str, Any] = {} if output is None or seq is None else {"output": output, "seq": seq}
    if reasoning is not None:
        fold["reasoning"] = reasoning
    if completion_tokens is not None:
        fold["completion_tokens"] = completion_tokens
    updated = _fenced(generation_id, attempt).update(
        status=Status.QUEUED,
        attempt=F("attempt") + 1,
        # For a queued row, heartbeat_at is when it was last enqueued (see reap_stale).
        heartbeat_at=timezone.now(),
        **fold,
    )
    if updated:
        transaction.on_commit(lambda: _enqueue(generation_id, delay_s=delay_s))
    return bool(updated)


def generation_hand_back(
    generation_id: str,
    attempt: int,
    *,
    output: str,
    seq: int,
    reasoning: str = "",
    completion_tokens: int | None = None,
) -> bool:
    """Give a running generation back to the queue unfinished (its worker is stopping), as the
    same attempt: a stop is not a failure, and does not use up MAX_ATTEMPTS.

    Only for the runner itself, after its last write: it stops at once, so no write of the
    attempt can follow, and the next claim of the same attempt number is alone. The next
    run starts with `reset`, since subscribers have seen this one's text. The tokens this
    run used were paid for: the next run counts them (`completion_tokens`)."""
    tokens: dict[str, Any] = (
        {} if completion_tokens is None else {"completion_tokens": completion_tokens}
    )
    updated = _fenced(generation_id, attempt).update(
        status=Status.QUEUED,
        output=output,
        reasoning=reasoning,
        seq=seq,
        heartbeat_at=timezone.now(),
        **tokens,
    )
    if updated:
        transaction.on_commit(lambda: _enqueue(generation_id))
    return bool(updated)


def reap_stale(
    *, heartbeat_timeout_s: float, max_attempts: int, now: datetime | None = None
) -> int:
    """Re-queue (or fail) running generations whose worker stopped beating; re-enqueue queued
    generations that no worker has picked up. Returns how many were touched."""
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=heartbeat_timeout_s)
    touched = 0
    stale = Generation.objects.filter(status=Status.RUNNING, heartbeat_at__lt=stale_before)
    for generation_id, attempt, seq, output in stale.values_list("id", "attempt", "seq", "output")[
        :500
    ]:
        if attempt < max_attempts:
            if generation_requeue(generation_id, attempt, output=output, seq=seq):
                logger.warning(
                    "generation %s: worker lost, re-queued as attempt %d",
                    generation_id,
                    attempt + 1,
                )
                touched += 1
        elif _fail_lost(generation_id, attempt, output=output, seq=seq):
            touched += 1
    # Queued rows whose task may have been lost (enqueue failed, or a queue restart):
    # enqueueing again is harmless, because only one claim can win.
    # A queued row's heartbeat_at is when it was last (re-)enqueued: each is re-enqueued at
    # most once per timeout, so a backlog that keeps every worker busy is not multiplied.
    waiting = Generation.objects.filter(status=Status.QUEUED).filter(
        Q(heartbeat_at__isnull=True, created_at__lt=stale_before) | Q(heartbeat_at__lt=stale_before)
    )
    for generation_id in waiting.values_list("id", flat=True)[:500]:
        if Generation.objects.filter(pk=generation_id, status=Status.QUEUED).update(
            heartbeat_at=now
        ):
            _enqueue(generation_id)
            touched += 1
    return touched


def _fail_lost(generation_id: str, attempt: int, *, output: str, seq: int) -> bool:
    logger.error(
        "generation %s: worker lost on the last attempt (%d); failed",
        generation_id,
        attempt,
    )
    return _terminate_without_worker(
        _fenced(generation_id, attempt),
        generation_id,
        attempt,
        # The worker may be alive but cut off from the database, still appending to the log:
        # fence it out. No worker gets attempt + 1, since only a running row is re-queued.
        log_owner=attempt + 1,
        row_output=output,
        row_seq=seq,
        status=Status.FAILED,
        finish_reason=FinishReason.ERROR,
        error={
            "code": "worker_lost",
            "message": "The worker running this generation stopped.",
        },
    )


def generation_heartbeat(running: dict[str, int]) -> None:
    """Mark the attempts this process is running as alive, even while the provider is silent."""
    if not running:
        return
    # One statement for every attempt running here, however many (each still fenced by its
    # own attempt): a per-generation UPDATE cost a round trip per running generation.
    fenced = Q()
    for generation_id, attempt in running.items():
        fenced |= Q(pk=generation_id, attempt=attempt)
    Generation.objects.filter(fenced, status=Status.RUNNING).update(heartbeat_at=timezone.now())
