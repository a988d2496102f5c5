"""The write side of a generation, in one place: claim, checkpoint, finish, requeue, hand-back,
and ending a generation no worker holds (for jobs.reaper and jobs.cancel).

Every write is fenced by attempt, in the row (UPDATE ... WHERE attempt = <its attempt> AND
status = 'running') and in the log, so a worker presumed dead and replaced changes nothing.
An event goes to the log first (the truth), then live, fire-and-forget: subscribers repair
a lost live send from the log (docs/design.md, "One generation").
"""

from __future__ import annotations

import asyncio
import logging
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from core import metrics
from core.loops import start_loop_thread
from core.models import TERMINAL_STATUSES, Generation, SettledUsage, Status
from core.selectors import quota_left_today, sql_names
from jobs import events
from jobs.eventlog import SEQ_GAP_AFTER_LOST_LOG, event_log

logger = logging.getLogger(__name__)


# --- Publishing ------------------------------------------------------------------------------

# Live sends run on this many ordered lanes; a generation always uses the same lane, so
# its events reach the layer in seq order while other generations go on in parallel.
_LANES = 8


def group_name(generation_id: str) -> str:
    return f"gen.{generation_id}"


class LiveSender:
    """Forwards live events to the channel layer from any thread, on one long-lived loop.

    A loop per call (``async_to_sync`` in a worker thread) would give channels_redis a new
    connection pool per message (channels_redis issues 125 and 266); one loop keeps one.
    In the embedded default the loop is the web server's own, because the in-memory layer
    may only be touched from the loop its subscribers wait on.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: list[asyncio.Queue[tuple[str, dict[str, Any]]]] = []

    async def bind_running_loop(self) -> None:
        """Deliver on the calling loop from now on (the embedded web server's)."""
        with self._lock:
            if self._loop is not None:
                return
            self._loop = asyncio.get_running_loop()
        await self._start_lanes()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop | None:
        with self._lock:
            if self._loop is not None:
                return self._loop
            if not settings.DISTRIBUTED:
                # The in-memory layer lives on the web loop; until the web server has bound
                # it there is nobody to deliver to. The buffer has the event regardless.
                return None
            self._loop = start_loop_thread("live-sender", self._start_lanes)
            return self._loop

    async def _start_lanes(self) -> None:
        self._queues = [asyncio.Queue() for _ in range(_LANES)]
        for queue in self._queues:
            asyncio.get_running_loop().create_task(self._drain(queue))

    async def _drain(self, queue: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
        layer = get_channel_layer()
        assert layer is not None
        while True:
            group, message = await queue.get()
            try:
                await layer.group_send(group, message)
                metrics.LIVE_SENDS.labels(result="sent").inc()
            except Exception:
                # Lost live messages are repaired from the buffer by every subscriber.
                metrics.LIVE_SENDS.labels(result="failed").inc()
                logger.warning("live send to %s failed", group, exc_info=True)

    def send(self, group: str, message: dict[str, Any]) -> None:
        self.send_many([(group, message)])

    def send_many(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """`send` for a batch (the engine's batcher): one hop to the sending loop for all."""
        loop = self._ensure_loop()
        if loop is None or not self._queues:
            return
        loop.call_soon_threadsafe(self._put_on_lanes, messages)

    def _put_on_lanes(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        for group, message in messages:
            self._queues[zlib.crc32(group.encode()) % _LANES].put_nowait((group, message))


def live_message(generation_id: str, seq: int, kind: str, data: str) -> tuple[str, dict[str, Any]]:
    """The live layer's group and message for one logged event (realtime.live receives it)."""
    return group_name(generation_id), {
        "type": "gen.event",
        "id": generation_id,
        "seq": seq,
        "kind": kind,
        "data": data,
    }


def pubsub_encoder() -> Callable[[str, dict[str, Any]], tuple[str, bytes]]:
    """What RedisPubSubChannelLayer.group_send would PUBLISH for a group's message: (channel,
    payload), the same channel name and serializer (channels-redis is pinned to 4.3.0). For
    the worker's batch script (jobs.eventlog.BATCH_APPEND_SCRIPT), which publishes it in the
    same call as the append; the layer has one shard, the log's Redis (settings)."""
    layer = get_channel_layer()
    assert isinstance(layer, RedisPubSubChannelLayer)
    channel_name = layer._get_layer()._get_group_channel_name

    def encode(group: str, message: dict[str, Any]) -> tuple[str, bytes]:
        return channel_name(group), layer.serialize(message)

    return encode


@cache
def live_sender() -> LiveSender:
    return LiveSender()


def publish_event(generation_id: str, attempt: int, event: dict[str, Any]) -> bool:
    """Append `event` to the generation's log and send it live.

    Returns False, and sends nothing, when `attempt` has been superseded or the seq was
    already written: the caller has lost ownership of the generation and must stop.
    """
    data = events.dumps(event)
    kind, seq = event["type"], event["seq"]
    if not event_log().append(generation_id, attempt, seq, kind, data):
        return False
    metrics.EVENTS_PUBLISHED.labels(type=kind).inc()
    live_sender().send(*live_message(generation_id, seq, kind, data))
    return True


# --- The queue -------------------------------------------------------------------------------


def enqueue(generation_id: str, *, delay_s: float = 0.0) -> None:
    """Put a queued generation on the task queue (`delay_s`: no sooner than that)."""
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


# --- The worker's writes, fenced by attempt ---------------------------------------------------


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
    created_at: datetime | None = None  # for the time to first token (core.metrics)
    # The turn it answers in its conversation; None for a first turn, which has no history.
    parent_id: str | None = None
    # Completion tokens that earlier runs of this generation (failed attempts, a run handed
    # back on shutdown) were paid for: they count toward the daily quota and the usage.
    earlier_completion_tokens: int = 0


# What a claim reads of the row (generation_claim).
_CLAIM_COLUMNS = (
    "user_id, attempt, completion_tokens, seq, max_tokens, model, prompt, system, temperature,"
    " created_at, parent_id"
)


def generation_claim(generation_id: str) -> Claim | None:
    """Take a queued generation for this worker; None when cancelled or taken elsewhere.

    One row write: the row is read, its quota reservation computed under the user's row lock,
    and the claim (running, heartbeat, start time, cap) written by a single UPDATE, fenced by
    what was read. The user's row is locked before the generation's, as a create does: a
    claim that locked the generation first could deadlock with a cancel of it.

    In SQL: it is on every generation's way to its first token, and through the ORM its four
    statements cost about twice their round trips (docs/scaling.md)."""
    now = timezone.now()
    table = sql_names(Generation).table
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {_CLAIM_COLUMNS} FROM {table} WHERE id = %s AND status = %s",
            [generation_id, Status.QUEUED],
        )
        row = cursor.fetchone()
        if row is None:
            return None
        (user_id, attempt, used, seq, max_tokens, model, prompt, system, temperature) = row[:9]
        created_at, parent_id = row[9:]
        token_cap = _token_cap(
            user_id=user_id, generation_id=generation_id, used=used, max_tokens=max_tokens
        )
        cursor.execute(
            f"UPDATE {table} SET status = %s, heartbeat_at = %s,"
            " started_at = COALESCE(started_at, %s), token_cap = %s"
            # Unchanged since the read: no other worker claimed and gave it back meanwhile
            # (a hand-back keeps the attempt, and moves the seq and the tokens used).
            " WHERE id = %s AND status = %s AND attempt = %s AND completion_tokens = %s"
            " AND seq = %s",
            [
                Status.RUNNING,
                connection.ops.adapt_datetimefield_value(now),
                connection.ops.adapt_datetimefield_value(now),
                token_cap,
                generation_id,
                Status.QUEUED,
                attempt,
                used,
                seq,
            ],
        )
        if not cursor.rowcount:
            return None
    try:
        last_published = event_log().take_fence(generation_id, attempt)
    except Exception:
        # Redis is unreachable: give the claim back rather than leave the row running with
        # no worker (the reaper would take HEARTBEAT_TIMEOUT_S and an attempt to notice).
        # The reaper re-enqueues it once the queue is back.
        fenced(generation_id, attempt).update(status=Status.QUEUED, heartbeat_at=now)
        raise
    # This attempt continues above any seq a subscriber may hold, so that after a lost log
    # they see a gap, read the row (checkpointed right after this attempt's `reset`) and take
    # its snapshot, instead of dropping this attempt's first events as duplicates.
    last_published = _last_published_seq(last_published, attempt=attempt, row_seq=seq)
    return Claim(
        generation_id=generation_id,
        attempt=attempt,
        start_seq=max(seq, last_published),
        model=model,
        prompt=prompt,
        system=system,
        # The cap, not the request's figure: the daily quota may leave less room.
        max_tokens=token_cap,
        temperature=temperature,
        created_at=_aware(created_at),
        parent_id=parent_id,
        earlier_completion_tokens=used,
    )


def _aware(value: Any) -> datetime | None:
    """A datetime column read in SQL: naive, in UTC (USE_TZ), as both backends return it."""
    if value is None or timezone.is_aware(value):
        return value  # type: ignore[no-any-return]
    return timezone.make_aware(value, UTC)


def _last_published_seq(fenced: int | None, *, attempt: int, row_seq: int) -> int:
    """The last seq published to the log, from what `take_fence` found (None: nothing).

    Nothing found although an earlier attempt ran or the row was checkpointed means the log
    was lost (Redis restarted) after events may have been published past the row's
    checkpoint: subscribers may hold seqs up to there, so the answer is far above the row."""
    if fenced is None and (attempt > 1 or row_seq > 0):
        return row_seq + SEQ_GAP_AFTER_LOST_LOG
    return fenced or 0


def _token_cap(*, user_id: int, generation_id: str, used: int, max_tokens: int) -> int:
    """The completion tokens the attempt being claimed may use, reserved against the user's
    daily quota by writing it to the row in the claim's transaction.

    The cap is min(max_tokens, quota - committed), where committed counts each other running
    generation at its own cap (selectors.quota_left_today): first come, first served,
    and concurrent generations never pass the quota together. Once a generation ends, only
    the tokens it used count, and the rest of its reservation is free again.

    Serialised per user: on MySQL by the user's row (as creates are), so that the sum below
    sees every reservation committed before (READ COMMITTED); on SQLite by the database's
    write lock, which every transaction takes at its start (IMMEDIATE)."""
    # The completion tokens of earlier runs of this generation (0 on its first claim) were
    # paid for, so they leave the quota less room. The user's row lock and the quota's
    # reading are one statement (the reading comes once the lock is granted).
    left = quota_left_today(user_id, excluding=generation_id, lock=True) - used
    return max(0, min(max_tokens, left))


def fenced(generation_id: str, attempt: int) -> Any:
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
    table = sql_names(Generation).table
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
    """Persist the fold so far and the heartbeat of every attempt a worker process runs, in one
    statement: (still ours, cancel requested) by generation id.

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
    """Write the final row, and its tokens into its user's settled usage with it; `seq` is
    that of the `done` event published after it."""
    completion_tokens = usage["completion_tokens"] if usage else 0
    return _write_final_row(
        fenced(generation_id, attempt),
        generation_id,
        status=status,
        output=output,
        reasoning=reasoning,
        seq=seq,
        finish_reason=finish_reason,
        usage=usage,
        error=error,
        completion_tokens=completion_tokens,
        heartbeat_at=timezone.now(),
    )


def _write_final_row(rows: Any, generation_id: str, **changes: Any) -> bool:
    """End the generation `rows` selects (still as it was read: fenced), with `changes`, and
    settle its tokens in the same transaction; whether it was ended here."""
    with transaction.atomic():
        updated = rows.update(finished_at=timezone.now(), **changes)
        if updated:
            settle_usage(generation_id)
    return bool(updated)


def settle_usage(generation_id: str) -> None:
    """Add the completion tokens of a generation that has just finished to its user's settled
    usage of the day it was created on (core.models.SettledUsage), in the transaction that
    wrote its final row: a quota read sees it either still active or settled, never both
    or neither. One statement, whatever the user's day held."""
    with connection.cursor() as cursor:
        cursor.execute(_settle_sql(connection.vendor), [generation_id])


@cache
def _settle_sql(vendor: str) -> str:
    settled, generations = sql_names(SettledUsage), sql_names(Generation)
    tokens = settled.column["completion_tokens"]
    column = generations.column
    select = (
        f"INSERT INTO {settled.table}"
        f" ({settled.column['user_id']}, {settled.column['day']}, {tokens})"
        f" SELECT {column['user_id']}, DATE({column['created_at']}), {column['completion_tokens']}"
        f" FROM {generations.table}"
        f" WHERE {column['id']} = %s AND {column['completion_tokens']} > 0"
    )
    if vendor == "mysql":
        return (
            f"{select} ON DUPLICATE KEY UPDATE"
            f" {settled.table}.{tokens} = {settled.table}.{tokens} + VALUES({tokens})"
        )
    # SQLite's upsert (the SELECT's WHERE keeps its ON from reading as a join's).
    return (
        f"{select} ON CONFLICT ({settled.column['user_id']}, {settled.column['day']})"
        f" DO UPDATE SET {tokens} = {tokens} + excluded.{tokens}"
    )


def generation_requeue(
    generation_id: str,
    attempt: int,
    *,
    fold: Checkpoint | None = None,
    delay_s: float = 0.0,
    hand_back: bool = False,
) -> bool:
    """Give a running attempt back to the queue as the next attempt, or with `hand_back` as
    the same one (its worker is stopping: a stop is not a failure, and does not use up
    MAX_ATTEMPTS). Either way the next run starts with `reset`.

    A hand-back is only for the runner itself, after its last write: it stops at once, so no
    write of the attempt can follow, and the next claim of the same attempt number is alone.
    `fold`: the runner's text so far and the completion tokens its runs were paid for, which
    the next one counts; without it the row keeps its last checkpoint (the reaper, or a
    runner that did not answer a shutdown in time). `delay_s`: the next attempt starts no
    sooner (a back-off after a provider failure mid-stream)."""
    changes: dict[str, Any] = {} if hand_back else {"attempt": F("attempt") + 1}
    if fold is not None:
        changes.update(
            output=fold.output,
            reasoning=fold.reasoning,
            seq=fold.seq,
            completion_tokens=fold.completion_tokens,
        )
    updated = fenced(generation_id, attempt).update(
        status=Status.QUEUED,
        # For a queued row, heartbeat_at is when it was last enqueued (see reap_stale).
        heartbeat_at=timezone.now(),
        **changes,
    )
    if updated:
        transaction.on_commit(lambda: enqueue(generation_id, delay_s=delay_s))
    return bool(updated)


# --- Ending a generation no worker holds (cancel before a claim, the reaper) -----------------


def terminate_without_worker(
    rows: Any,
    generation_id: str,
    attempt: int,
    *,
    log_owner: int,
    row_output: str,
    row_reasoning: str,
    row_seq: int,
    status: str,
    finish_reason: str,
    error: dict[str, str] | None,
) -> bool:
    """End a generation that no live worker holds, keeping the log and the row in agreement.

    Subscribers may have seen events past the row's last checkpoint (a worker died between
    two checkpoints): the final output is the row's text plus those events. If the buffer can
    no longer supply them (trimmed, or lost), the output is the row's, and `done` skips a seq:
    every subscriber finds a gap it cannot fill, reads the final row and takes its snapshot
    before `done` (realtime.subscription), whatever it had seen.

    The log is first fenced to `log_owner`, and read only then, so that nothing is appended
    between the read and `done`, nor after it. Where a worker may still hold `attempt` (the
    reaper only presumes it dead), `log_owner` is a number no worker holds.
    """
    last_published = _last_published_seq(
        event_log().take_fence(generation_id, log_owner), attempt=attempt, row_seq=row_seq
    )
    after_row, _ = event_log().read_after_sync(generation_id, row_seq)
    head = max(row_seq, last_published)
    if [event.seq for event in after_row] == list(range(row_seq + 1, head + 1)):
        output, reasoning = events.fold_with_reasoning(
            (event.decoded() for event in after_row), row_output, row_reasoning
        )
        done_seq = head + 1
    else:
        output, reasoning = row_output, row_reasoning
        done_seq = head + 2
    updated = _write_final_row(
        rows,
        generation_id,
        status=status,
        finish_reason=finish_reason,
        error=error,
        seq=done_seq,
        output=output,
        reasoning=reasoning,
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
