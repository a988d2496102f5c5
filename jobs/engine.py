"""One asyncio event loop per worker process, running every generation of the process, and
its one batcher of event appends and checkpoints (docs/design.md, "One generation", 3-4)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from functools import cache, partial
from typing import Any, Generic, NamedTuple, TypeVar

import msgpack  # type: ignore[import-untyped]
import redis
from django.conf import settings
from django.db import DatabaseError, connection

from core import metrics
from core.loops import start_loop_thread
from core.models import FinishReason, Status
from core.redis import async_client
from core.retry import Backoff
from jobs import events, writer
from jobs.coalescing import Coalescer, coalesce_interval_s
from jobs.eventlog import (
    BATCH_APPEND_SCRIPT,
    REPLAY_MAX_EVENTS,
    RedisEventLog,
    event_log,
    replay_ttl_s,
)
from jobs.history import count_tokens, history_for
from jobs.providers.base import (
    RETRY_AFTER_MAX_S,
    Chunk,
    ProviderError,
    ProviderRequest,
    astream_with_retry,
    backoff_s,
    get_provider,
)
from jobs.runner import STOPPING_RESCHEDULE_S, housekeeping
from jobs.writer import (
    Checkpoint,
    Claim,
    live_message,
    live_sender,
    pubsub_encoder,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

# Threads (each with its own database connection, kept) for the database work of the
# generations of this process: their claims, the checkpoint statement of every running one,
# final writes. A checkpoint, a final write and two claims can go on at once, and a process
# never holds more connections than this (plus the housekeeping thread's), where it held one
# per running generation and a new one per claim.
DATABASE_THREADS = 4
# Checkpoints are written on ticks this many times per CHECKPOINT_INTERVAL_S; a generation
# is in the tick's statement once CHECKPOINT_INTERVAL_S has passed since its last one, so
# its checkpoints stay between one and 1.25 intervals apart, and one statement carries
# about a quarter of the process's running generations.
CHECKPOINT_TICKS_PER_INTERVAL = 4
# The row of a running attempt is its heartbeat (jobs.reaper): it is written at least this many
# times per HEARTBEAT_TIMEOUT_S, by a checkpoint when text flows, else by one for that alone.
HEARTBEATS_PER_TIMEOUT = 4

# The final row write is retried this long through a database outage before giving up;
# nothing is published as done until the row holds the full output.
FINAL_WRITE_RETRY_S = 60.0
# An event that cannot reach Redis is retried this long (the provider's text waits in the
# attempt meanwhile), so that a Redis restart or a dropped connection costs a pause,
# not an attempt. Past it, the runner hands the generation back to the queue.
REDIS_RETRY_S = 30.0
# With nothing waiting to be sent, an attempt still wakes this often while the provider is
# silent: to see a cancel or a stop.
IDLE_TICK_S = 0.25


class LostOwnership(Exception):
    """This attempt was superseded (re-queued by the reaper, or cancelled while queued)."""


def _on_own_connection(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run database work in one of the engine's threads, on that thread's connection, which
    stays open for the next call; closed after a database error, so that the next call
    connects afresh (the server restarted, or dropped it)."""
    try:
        return function(*args, **kwargs)
    except DatabaseError:
        with suppress(Exception):
            connection.close()
        raise


class _Append(NamedTuple):
    """One event to append, in the order of EventLog.append's arguments."""

    generation_id: str
    attempt: int
    seq: int
    kind: str
    data: str


class _Batches(Generic[ItemT, ResultT]):
    """Items added in one loop iteration go to `send` in one call, at its end: every attempt
    whose flush came due on the same boundary has added its own by then. What comes while a
    batch is in flight goes in the next one, at once. Each future answers its item's result,
    or the batch's error."""

    def __init__(self, send: Callable[[list[ItemT]], Awaitable[list[ResultT]]]) -> None:
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._items: list[ItemT] = []
        self._futures: list[asyncio.Future[ResultT]] = []
        self._busy = False  # a batch is about to go, or in flight

    def add(self, item: ItemT) -> asyncio.Future[ResultT]:
        future: asyncio.Future[ResultT] = self._loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        if not self._busy:
            self._busy = True
            self._loop.call_soon(self._start)
        return future

    def _start(self) -> None:
        self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._items:
                items, futures = self._items, self._futures
                self._items, self._futures = [], []
                try:
                    results = await self._send(items)
                except Exception as error:
                    for future in futures:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for future, result in zip(futures, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._busy = False


class Batcher:
    """The process's one writer to the event log, the live layer and the checkpoints."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._appends = _Batches(self._send_appends)
        self.checkpoints = _Batches(self._write_checkpoints)
        # The attempts whose periodic checkpoints it writes (each until its last write).
        self.attempts: set[Attempt] = set()
        # Redis-py's script: EVALSHA, and the script loaded again first when Redis lost it (a
        # restart, or SCRIPT FLUSH: nothing of the call ran). None in the embedded default.
        self._append_script = (
            async_client().register_script(BATCH_APPEND_SCRIPT) if settings.DISTRIBUTED else None
        )
        self._ticker = self._loop.create_task(self._tick_checkpoints())

    # -- events ----------------------------------------------------------------------------

    def publish(
        self, generation_id: str, attempt: int, event: dict[str, Any]
    ) -> asyncio.Future[bool]:
        """Append `event` to the generation's log and send it live, in this iteration's batch.

        The future answers False, and nothing is sent live, when `attempt` has been fenced
        off or the seq was already taken by other data: the attempt must stop."""
        append = _Append(generation_id, attempt, event["seq"], event["type"], events.dumps(event))
        return self._appends.add(append)

    async def _send_appends(self, batch: list[_Append]) -> list[bool]:
        """Whether each of `batch` was appended. With Redis, one script call appends and
        publishes them all; in the embedded default, the log appends and the live sends are
        made here."""
        if self._append_script is None:
            log = event_log()
            appended = [log.append(*a) for a in batch]
            live = [
                live_message(a.generation_id, a.seq, a.kind, a.data)
                for a, ok in zip(batch, appended, strict=True)
                if ok
            ]
            if live:
                live_sender().send_many(live)
        else:
            appended = [answer == 1 for answer in await self._call_script(batch)]
        for append, ok in zip(batch, appended, strict=True):
            if ok:
                metrics.EVENTS_PUBLISHED.labels(type=append.kind).inc()
        return appended

    async def _call_script(self, batch: list[_Append]) -> list[int]:
        keys: list[str] = []
        appends: list[tuple[Any, ...]] = []
        encode = pubsub_encoder()
        for a in batch:
            keys += (
                RedisEventLog._stream_key(a.generation_id),
                RedisEventLog._fence_key(a.generation_id),
            )
            channel, payload = encode(*live_message(a.generation_id, a.seq, a.kind, a.data))
            appends.append(
                (str(a.attempt), a.seq, a.data, a.kind, replay_ttl_s(a.kind), channel, payload)
            )
        assert self._append_script is not None
        # MessagePack's older format, without a binary type: Redis's Lua reads only that.
        packed = msgpack.packb(appends, use_bin_type=False)
        answers: list[int] = await self._append_script(keys, [REPLAY_MAX_EVENTS, packed])
        return answers

    # -- checkpoints -----------------------------------------------------------------------

    async def _write_checkpoints(self, batch: list[Checkpoint]) -> list[tuple[bool, bool]]:
        results = await self._engine.database(writer.generation_checkpoint_many, batch)
        return [results[checkpoint.generation_id] for checkpoint in batch]

    async def _tick_checkpoints(self) -> None:
        while True:
            await asyncio.sleep(settings.CHECKPOINT_INTERVAL_S / CHECKPOINT_TICKS_PER_INTERVAL)
            now = self._loop.time()
            for attempt in list(self.attempts):
                attempt.checkpoint_if_due(now)


class Attempt:
    """One attempt of one generation, as a task on the engine's loop: provider stream ->
    coalesced deltas -> event log + row."""

    def __init__(self, claim: Claim, *, engine: Engine, stopping: threading.Event) -> None:
        self.claim = claim
        self.generation_id = claim.generation_id
        self.attempt = claim.attempt
        self.seq = claim.start_seq
        self.text = ""
        self.reasoning = ""
        self.completion_tokens = 0
        self.history: tuple[tuple[str, str], ...] = ()
        self._engine = engine
        self._batcher = engine.batcher
        self._loop = asyncio.get_running_loop()
        self.clock = self._loop.time
        # The pending text's event type: `delta`, or `reasoning` (PROTOCOL §8). Both share
        # the seq space, so at a change of type what waits is set aside, to be sent first.
        self._pending_kind = "delta"
        self._pending = Coalescer()
        self._set_aside: deque[tuple[str, str]] = deque()
        self._send_now = False  # the coalescer asked for the pending text to go at once
        # What the provider's reader has seen (it runs as a task of its own, _read, and
        # wakes this one when it ends: the stream ended, or it stopped at a cancel, a stop
        # or the cap).
        self._read_error: Exception | None = None
        self.finish_reason: str | None = None
        self.usage: dict[str, int] | None = None
        # When the finish reason came (the grace for the usage chunk runs from it), and when
        # the last chunk came once text had (the between-chunk timeout runs from it).
        self._finished_at: float | None = None
        self._last_chunk_at: float | None = None
        # The attempt's task waits on `_waiter` until the reader wakes it, or until its timer.
        self._waiter: asyncio.Future[None] | None = None
        self._wait_timer: asyncio.TimerHandle | None = None
        self._woken = False
        # The fold that the log holds for certain (its last append answered): what a
        # periodic checkpoint writes, never text whose append is still in flight.
        self._published = (claim.start_seq, "", "")
        # When the row was last written for this attempt (the claim, a checkpoint), and the
        # seq it then held: a checkpoint is written only once the fold has moved on, or as a
        # heartbeat when the row has not been written for a while (a silent provider).
        self._last_checkpoint = self.clock()
        self._checkpointed_seq = claim.start_seq
        self._checkpoint_in_flight: asyncio.Future[tuple[bool, bool]] | None = None
        self._lost = False
        self._cancel = False
        self._cancel_checked_at = float("-inf")
        self._cancel_read: asyncio.Task[None] | None = None
        self._stopping = stopping
        self.timer = metrics.AttemptTimer(
            model=claim.model,
            created_at=claim.created_at,
            first_text_of_generation=claim.start_seq == 0,
        )

    # -- the batcher's side ----------------------------------------------------------------

    def checkpoint_if_due(self, now: float) -> None:
        """Write this attempt's periodic checkpoint if one is due at `now` and none in flight:
        the fold has moved on and CHECKPOINT_INTERVAL_S has passed, or the row has gone
        unwritten for a heartbeat interval (HEARTBEAT_TIMEOUT_S / 4), whatever the fold."""
        since_s = now - self._last_checkpoint
        moved_on = self._published[0] != self._checkpointed_seq
        if not (moved_on and since_s >= settings.CHECKPOINT_INTERVAL_S) and since_s < (
            settings.HEARTBEAT_TIMEOUT_S / HEARTBEATS_PER_TIMEOUT
        ):
            return
        if self._checkpoint_in_flight is None or self._checkpoint_in_flight.done():
            self._checkpoint_in_flight = self._write_checkpoint(*self._published)

    def _write_checkpoint(
        self, seq: int, output: str, reasoning: str
    ) -> asyncio.Future[tuple[bool, bool]]:
        """The fold through `seq`, in the batcher's next statement: (still ours, cancel
        requested)."""
        self._last_checkpoint = self.clock()
        written = self._batcher.checkpoints.add(self._fold(seq, output, reasoning))
        written.add_done_callback(partial(self._checkpointed, seq=seq))
        return written

    def _checkpointed(self, future: asyncio.Future[tuple[bool, bool]], seq: int) -> None:
        """A checkpoint of the fold through `seq` landed: the next is due once it moves on."""
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            # A missed checkpoint costs only replay distance; the final write is retried.
            logger.warning(
                "generation %s: checkpoint failed (%s)", self.generation_id, type(error).__name__
            )
            return
        ours, cancel = future.result()
        self._checkpointed_seq = seq
        self._lost = self._lost or not ours
        self._cancel = self._cancel or cancel

    # -- publishing ------------------------------------------------------------------------

    async def _publish(self, event: dict[str, Any]) -> None:
        # Rides out a Redis restart or a dropped connection for REDIS_RETRY_S.
        backoff = Backoff(first_s=0.05, max_s=1.0, give_up_after_s=REDIS_RETRY_S, clock=self.clock)
        while True:
            try:
                if await self._batcher.publish(self.generation_id, self.attempt, event):
                    return
                log = event_log()
                if await asyncio.to_thread(log.fence_holder, self.generation_id) is not None:
                    raise LostOwnership(self.generation_id)
                # No fence at all: Redis lost its data (a restart) under us. The database
                # says whether this attempt still owns the generation; if it does, put the
                # fence back and go on: subscribers that saw events the restart erased see a
                # gap and take the row's snapshot, which this has just checkpointed.
                if not await self._still_ours(final=event["type"] == "done"):
                    raise LostOwnership(self.generation_id)
                await asyncio.to_thread(log.restore_fence, self.generation_id, self.attempt)
                logger.warning(
                    "generation %s: the event log's fence was lost; restored for attempt %d",
                    self.generation_id,
                    self.attempt,
                )
                continue
            except (redis.RedisError, DatabaseError) as error:
                logger.warning(
                    "generation %s: publishing seq %s failed (%s); retrying",
                    self.generation_id,
                    event["seq"],
                    type(error).__name__,
                )
                if not await backoff.asleep():
                    raise

    async def _still_ours(self, *, final: bool) -> bool:
        """Whether the row still belongs to this attempt, checkpointing the fold so far."""
        if final:
            # The final row is written before `done` is published; once terminal, no
            # other attempt can start.
            written = await self._engine.database(
                writer.generation_final_seq, self.generation_id, self.attempt
            )
            return written is not None and written >= self.seq
        return await self._checkpoint_now()

    async def _checkpoint_now(self) -> bool:
        """Checkpoint the fold so far at once: whether the row is still this attempt's."""
        ours, _ = await self._write_checkpoint(self.seq, self.text, self.reasoning)
        return ours

    def _fold(self, seq: int, output: str, reasoning: str) -> Checkpoint:
        """The fold through `seq`, with this generation's completion tokens so far (earlier
        runs' included), as a checkpoint or a re-queue writes it."""
        return Checkpoint(
            generation_id=self.generation_id,
            attempt=self.attempt,
            output=output,
            reasoning=reasoning,
            seq=seq,
            completion_tokens=self.claim.earlier_completion_tokens + self.completion_tokens,
        )

    async def _flush(self) -> None:
        """Send what waits, in the order it came: the texts set aside at a change of type,
        then the pending text."""
        self._send_now = False
        while self._set_aside:
            await self._send(*self._set_aside.popleft())
        if self._pending:
            await self._send(self._pending_kind, self._pending.take())

    async def _send(self, kind: str, text: str) -> None:
        self.seq += 1
        if kind == "reasoning":
            self.reasoning += text
            await self._publish(events.reasoning(self.generation_id, self.seq, text))
        else:
            self.text += text
            await self._publish(events.delta(self.generation_id, self.seq, text))
        self._published = (self.seq, self.text, self.reasoning)
        self.timer.delta_published()

    def _add_text(self, text: str, kind: str) -> None:
        """Queue the provider's `text` (in the reader's task); the attempt's task sends it
        when the coalescer says, woken for it."""
        if kind != self._pending_kind:
            if self._pending:
                self._set_aside.append((self._pending_kind, self._pending.take()))
                self._wake()
            self._pending_kind = kind
        was_empty = not self._pending
        interval_s = self._coalesce_interval_s()
        if self._pending.add(text, self.clock(), interval_s):
            self._send_now = True
            self._wake()
        elif was_empty:
            self._wake_by(self._pending.due_at(interval_s))

    def _coalesce_interval_s(self) -> float:
        """How long text may wait now: it widens with the generations this process runs."""
        return coalesce_interval_s(housekeeping.running_count())

    def _cancel_requested(self) -> bool:
        if self._cancel:
            return True
        log = event_log()
        # The process's own record of cancels (the cancel watcher's set) costs no I/O, so it
        # is read at every chunk. Only while the watcher has lost Redis is the flag read from
        # Redis itself, off the loop and at most once per IDLE_TICK_S.
        if log.cancel_seen(self.generation_id):
            self._cancel = True
            return True
        now = self.clock()
        if (
            log.cancel_needs_read()
            and now - self._cancel_checked_at >= IDLE_TICK_S
            and (self._cancel_read is None or self._cancel_read.done())
        ):
            self._cancel_checked_at = now
            self._cancel_read = self._loop.create_task(self._read_cancel())
        return False

    async def _read_cancel(self) -> None:
        with suppress(Exception):
            if await asyncio.to_thread(event_log().cancel_requested, self.generation_id):
                self._cancel = True

    # -- the provider's reader and the attempt's task ---------------------------------------
    #
    # The reader (a task of its own, so that the attempt's waits never cancel a read) takes
    # each chunk as it comes, in _take: the counts, the cap, the finish reason, and the text
    # into the coalescer. It wakes the attempt's task only when there is something to do:
    # text to send now, the end of the stream, an error. In a steady stream that is once per
    # delta, not once per chunk.

    async def _read(self, stream: AsyncGenerator[Chunk, None]) -> None:
        try:
            async for chunk in stream:
                if not self._take(chunk):
                    break
        except Exception as exc:
            self._read_error = exc
        finally:
            # Closes the provider's response (and its connection) before the task ends and
            # the attempt's goes on, which would cancel a close still under way.
            await stream.aclose()

    def _take(self, chunk: Chunk) -> bool:
        """One chunk of the provider's stream; whether to read on."""
        if self._cancel_requested() or self._stopping.is_set():
            return False
        if chunk.text or chunk.reasoning:
            if self.completion_tokens >= self.claim.max_tokens:
                # Past the cap (max_tokens, or the daily quota's room): a provider that does
                # not honour max_tokens is cut here, its extra text unused.
                self.finish_reason = "length"
                return False
            # Reasoning tokens are completion tokens too: providers bill them so.
            self.completion_tokens += 1
            self.timer.text()
            self._last_chunk_at = self.clock()
            if chunk.reasoning:
                self._add_text(chunk.reasoning, "reasoning")
            if chunk.text:
                self._add_text(chunk.text, "delta")
        if chunk.finish_reason and self.finish_reason is None:
            self.finish_reason = chunk.finish_reason
            self._finished_at = self.clock()
        if chunk.usage:
            self.usage = chunk.usage
        return True

    def _wake(self) -> None:
        """Have the attempt's task look at once at what the reader left."""
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_by(self, deadline: float) -> None:
        """Have the attempt's task look by `deadline` (text waits that must go by then)."""
        if self._waiter is None or self._waiter.done():
            return  # it is not waiting: it takes the pending text's deadline when it does
        timer = self._wait_timer
        if timer is not None and timer.when() <= deadline:
            return
        if timer is not None:
            timer.cancel()
        self._wait_timer = self._loop.call_at(deadline, self._wake)

    async def _wait(self) -> None:
        """Until the reader wakes this task, or until the pending text is due (IDLE_TICK_S
        when none waits: a silent provider, a cancel, a stop)."""
        if self._woken:
            self._woken = False
            return
        if self._pending:
            deadline = self._pending.due_at(self._coalesce_interval_s())
        else:
            deadline = self.clock() + IDLE_TICK_S
        waiter = self._waiter = self._loop.create_future()
        self._wait_timer = self._loop.call_at(deadline, self._wake)
        try:
            await waiter
        finally:
            self._waiter = None
            if self._wait_timer is not None:
                self._wait_timer.cancel()
                self._wait_timer = None
            self._woken = False

    # -- the attempt -----------------------------------------------------------------------

    async def run(self) -> None:
        self._batcher.attempts.add(self)
        try:
            await self._run()
        except LostOwnership:
            logger.warning(
                "generation %s: attempt %d superseded; stopping",
                self.generation_id,
                self.attempt,
            )
        except Exception:
            # Redis or the database stayed away past every retry. Hand the generation back
            # at once if the database lets us; if not, this process stops beating for it
            # and the reaper re-queues it (or fails it, on the last attempt).
            logger.exception(
                "generation %s: attempt %d could not go on", self.generation_id, self.attempt
            )
            if self.attempt < settings.MAX_ATTEMPTS:
                try:
                    if await self._give_back():
                        logger.warning("generation %s: re-queued", self.generation_id)
                except Exception:
                    logger.warning("generation %s: re-queue failed", self.generation_id)
        finally:
            self._batcher.attempts.discard(self)

    async def _quiesce(self) -> None:
        """Before a write that ends this attempt's hold on the row: no periodic checkpoint
        of it may land after that write (a hand-back keeps the attempt number, so a late
        checkpoint would match the row again)."""
        self._batcher.attempts.discard(self)
        if self._checkpoint_in_flight is not None:
            with suppress(Exception):
                await self._checkpoint_in_flight

    async def _give_back(self, **options: Any) -> bool:
        """Return the generation to the queue (writer.generation_requeue: as the next attempt,
        or handed back as this one) with the fold so far and the completion tokens paid for,
        once this attempt's writes in flight have landed."""
        await self._quiesce()
        given_back: bool = await self._engine.database(
            writer.generation_requeue,
            self.generation_id,
            self.attempt,
            fold=self._fold(self.seq, self.text, self.reasoning),
            **options,
        )
        return given_back

    async def _run(self) -> None:
        if self.attempt > 1 or self.claim.start_seq > 0:
            # Subscribers may have text of an earlier run (a failed attempt, or one handed
            # back on shutdown): they discard it.
            self.seq += 1
            await self._publish(events.reset(self.generation_id, self.seq, self.attempt))
            self._published = (self.seq, self.text, self.reasoning)
            with suppress(DatabaseError):  # logged by _checkpointed
                if not await self._checkpoint_now():
                    raise LostOwnership(self.generation_id)
        if self.claim.max_tokens <= 0:
            # The daily quota has no room left for it: it ends as one that reached its cap
            # does, and nothing reaches the provider.
            await self._finish(Status.COMPLETED, FinishReason.LENGTH)
            return
        # A conversation's turn carries its ancestors' prompts and answers, cut to the
        # model's context budget (api.conversations); counted in the usage's prompt tokens.
        if self.claim.parent_id is not None:
            self.history = await self._engine.database(history_for, self.generation_id)
        request = ProviderRequest(
            model=self.claim.model,
            prompt=self.claim.prompt,
            system=self.claim.system,
            max_tokens=self.claim.max_tokens,
            temperature=self.claim.temperature,
            history=self.history,
        )
        self.timer.provider_started()
        reader = self._loop.create_task(
            self._read(
                astream_with_retry(get_provider(), request, stop_requested=self._cancel_requested)
            )
        )
        reader.add_done_callback(lambda _: self._wake())
        try:
            while True:
                if self._lost:
                    raise LostOwnership(self.generation_id)
                await self._wait()
                if (
                    self._send_now
                    or self._set_aside
                    or self._pending.is_due(self.clock(), self._coalesce_interval_s())
                ):
                    await self._flush()
                if self._read_error is not None:
                    raise self._read_error
                if reader.done() or self._cancel_requested() or self._stopping.is_set():
                    break
                now = self.clock()
                if self._finished_at is not None:
                    if now - self._finished_at >= settings.PROVIDER_FINISH_GRACE_S:
                        # The answer is complete; a server that holds the connection open
                        # after it must not turn it into a timeout.
                        break
                elif (
                    self._last_chunk_at is not None
                    and now - self._last_chunk_at > settings.PROVIDER_READ_TIMEOUT_S
                ):
                    raise ProviderError(
                        f"no chunk for {settings.PROVIDER_READ_TIMEOUT_S:g} s mid-stream",
                        permanent=False,
                        kind="timeout",
                    )
        except ProviderError as error:
            await self._flush()
            if self._cancel_requested():
                # The retry loop gives up on a cancel; the user asked for a stop, and a
                # failure of a stream they no longer wanted is not the provider's error.
                await self._finish(Status.CANCELLED, FinishReason.CANCELLED)
            else:
                await self._provider_failed(error)
            return
        finally:
            # Cancelling the reader closes the provider's response, and its connection, at
            # once (no more tokens are paid for), also one blocked in a silent read.
            reader.cancel()
            with suppress(BaseException):
                await reader
        await self._flush()
        if self._lost:
            raise LostOwnership(self.generation_id)
        if self._cancel:
            await self._finish(Status.CANCELLED, FinishReason.CANCELLED)
            return
        finish_reason = self.finish_reason
        if self._stopping.is_set() and finish_reason is None:
            # Another worker runs it again from the start (a provider stream cannot be
            # resumed), with `reset` first. A stop is not a failure: the attempt number stays.
            if not await self._give_back(hand_back=True, delay_s=STOPPING_RESCHEDULE_S):
                raise LostOwnership(self.generation_id)
            logger.warning(
                "generation %s: attempt %d handed back to the queue",
                self.generation_id,
                self.attempt,
            )
            return
        # The provider's finish reason (PROTOCOL §8), else `stop`.
        if finish_reason not in FinishReason.values:
            finish_reason = FinishReason.STOP
        await self._finish(Status.COMPLETED, str(finish_reason), self.usage)

    def _counted_usage(self, usage: dict[str, int] | None) -> dict[str, int]:
        """The provider's figures when it reported them, else our own count; plus the
        completion tokens of earlier failed runs, which were paid for too."""
        if usage is None:
            sent = [self.claim.prompt, self.claim.system or "", *(c for _, c in self.history)]
            prompt_tokens = sum(count_tokens(text) for text in sent)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": prompt_tokens + self.completion_tokens,
            }
        earlier = self.claim.earlier_completion_tokens
        if earlier:
            usage = {
                **usage,
                "completion_tokens": usage["completion_tokens"] + earlier,
                "total_tokens": usage["total_tokens"] + earlier,
                "earlier_attempts_completion_tokens": earlier,
            }
        return usage

    async def _provider_failed(self, error: ProviderError) -> None:
        # The provider's own words go to the log (they carry no prompt), with the id.
        logger.warning(
            "generation %s: provider error %s (%s, permanent=%s) on attempt %d: %s",
            self.generation_id,
            error.code,
            error.kind,
            error.permanent,
            self.attempt,
            str(error)[:1000],
        )
        if (
            not error.permanent
            and (self.text or self.reasoning)
            and self.attempt < settings.MAX_ATTEMPTS
        ):
            # Text was streamed, so a silent retry would double it: start a new attempt,
            # which tells subscribers to discard the text so far (`reset`), after a back-off
            # (or the provider's Retry-After) so that a struggling provider is not hit again
            # at once.
            delay_s = max(backoff_s(self.attempt), error.retry_after_s or 0.0)
            # What this attempt used is paid for: the next one counts it (its claim reads
            # it from the row).
            if await self._give_back(delay_s=min(delay_s, RETRY_AFTER_MAX_S)):
                return
            raise LostOwnership(self.generation_id)
        await self._finish(Status.FAILED, FinishReason.ERROR, error=error.client_error())

    async def _finish(
        self,
        status: str,
        finish_reason: str,
        reported_usage: dict[str, int] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        """The final row, then `done`; with the provider's usage if it reported one."""
        usage = self._counted_usage(reported_usage)
        await self._quiesce()
        done_seq = self.seq + 1
        # Nothing is published as done until the row holds the full output: the final write
        # rides out a database outage of up to FINAL_WRITE_RETRY_S.
        backoff = Backoff(
            first_s=0.1, max_s=2.0, give_up_after_s=FINAL_WRITE_RETRY_S, clock=self.clock
        )
        while True:
            try:
                written = await self._engine.database(
                    writer.generation_finish,
                    self.generation_id,
                    self.attempt,
                    status=status,
                    output=self.text,
                    seq=done_seq,
                    finish_reason=finish_reason,
                    usage=usage,
                    error=error,
                    reasoning=self.reasoning,
                )
                break
            except DatabaseError:
                if not await backoff.asleep():
                    # The row still says running; the reaper will retry the generation.
                    logger.error("generation %s: final write failed", self.generation_id)
                    raise
                logger.warning("generation %s: final write failed; retrying", self.generation_id)
        if not written:
            raise LostOwnership(self.generation_id)
        self.timer.finished(status=status, finish_reason=finish_reason)
        self.seq = done_seq
        await self._publish(
            events.done(
                self.generation_id,
                done_seq,
                status=status,
                finish_reason=finish_reason,
                usage=usage,
                error=error,
            )
        )


class Engine:
    """The worker process's event loop (in a thread of its own) and its database threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._database = ThreadPoolExecutor(
            max_workers=DATABASE_THREADS, thread_name_prefix="engine-db"
        )
        self._batcher: Batcher | None = None

    @property
    def batcher(self) -> Batcher:
        assert self._batcher is not None
        return self._batcher

    def start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None:
                return self._loop

            async def begin() -> None:
                self._batcher = Batcher(self)
                if settings.DISTRIBUTED:
                    # Live sends go out from this loop, with the channel layer's pool on it;
                    # in the embedded default they go to the web server's loop instead.
                    await live_sender().bind_running_loop()

            self._loop = start_loop_thread("engine", begin)
            return self._loop

    def run_attempt(self, claim: Claim, *, stopping: threading.Event) -> None:
        """Run the claimed attempt on the loop; the calling thread waits for its end."""
        self.call(self._attempt(claim, stopping))

    async def _attempt(self, claim: Claim, stopping: threading.Event) -> None:
        await Attempt(claim, engine=self, stopping=stopping).run()

    def claim(self, generation_id: str) -> writer.Claim | None:
        """writer.generation_claim on one of the database threads, from the Huey thread: on a
        kept connection, and at most DATABASE_THREADS at once however many tasks arrive."""
        return self._database.submit(
            _on_own_connection, writer.generation_claim, generation_id
        ).result()

    def call(self, coroutine: Any) -> Any:
        """Run `coroutine` on the loop and wait for its result (tests, and the Huey thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.start()).result()

    async def database(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`function(*args, **kwargs)` on one of the engine's database threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._database, partial(_on_own_connection, function, *args, **kwargs)
        )


@cache
def engine() -> Engine:
    return Engine()
