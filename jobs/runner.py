"""Runs one attempt of one generation: provider stream -> coalesced deltas -> event log + row."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, close_old_connections

from api import services
from api.conversations import history_for
from api.models import FinishReason, Status
from jobs.providers import (
    Chunk,
    ProviderError,
    ProviderRequest,
    get_provider,
    stream_with_retry,
)
from jobs.providers.base import RETRY_AFTER_MAX_S, abort_hook, backoff_s
from jobs.providers.demo import tokenize
from project import metrics
from realtime import events
from realtime.eventlog import event_log
from realtime.publish import publish_event

logger = logging.getLogger(__name__)

# Coalescing: the first text goes out at once (time to first token); after that a delta at
# most every COALESCE_INTERVAL_S, or sooner when COALESCE_MAX_BYTES are waiting. Tokens per
# second stay the same; messages per second drop several-fold.
COALESCE_INTERVAL_S = 0.04
COALESCE_MAX_BYTES = 1024
# Under load the interval widens with the generations this process runs, from
# COALESCE_INTERVAL_S at COALESCE_WIDEN_FROM up to COALESCE_MAX_INTERVAL_S: every delta costs
# the same Redis round trips, channel-layer message and frame per subscriber whatever its
# size, so fewer, larger deltas are what keeps a busy process on time. The widest interval
# stays well inside the 150 ms latency budget.
COALESCE_WIDEN_FROM = 10
COALESCE_MAX_INTERVAL_S = 0.08


def coalesce_interval_s(running: int) -> float:
    """How long text may wait to be sent when this process runs `running` generations."""
    if running <= COALESCE_WIDEN_FROM:
        return COALESCE_INTERVAL_S
    return min(COALESCE_MAX_INTERVAL_S, COALESCE_INTERVAL_S * running / COALESCE_WIDEN_FROM)


# The final row write is retried this long through a database outage before giving up;
# nothing is published as done until the row holds the full output.
FINAL_WRITE_RETRY_S = 60.0
# An event that cannot reach Redis is retried this long (the provider's text waits in the
# pump's queue meanwhile), so that a Redis restart or a dropped connection costs a pause,
# not an attempt. Past it, the runner hands the generation back to the queue.
REDIS_RETRY_S = 30.0
# On shutdown, how long the housekeeping thread waits for runners to hand their generations
# back themselves (each sees the request within IDLE_TICK_S) before it re-queues the rest
# from their last checkpoint.
HAND_BACK_WAIT_S = 3.0


# With nothing waiting to be sent, the runner still wakes this often while the provider is
# silent (a long time to first token, a stall): to see a cancel and to checkpoint.
IDLE_TICK_S = 0.25

_TICK = object()  # the provider said nothing within the wait
_END = object()  # the provider's stream ended


class ChunkPump:
    """Reads the provider's stream in a thread of its own, so that the runner can act on
    time (flush coalesced text, see a cancel, beat) while the provider is silent.

    Only this thread touches the stream; `close` asks it to stop, and it closes the stream
    (and the provider's connection) as soon as its current read returns.
    """

    def __init__(self, stream: Iterator[Chunk]) -> None:
        self._stream = stream
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stop = threading.Event()
        # How to cut the provider's current connection (jobs.providers.base.abort_hook).
        self._cut_lock = threading.Lock()
        self._cut: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name="provider-stream", daemon=True)
        self._thread.start()

    def _register_cut(self, cut: Callable[[], None] | None) -> None:
        # Under the lock: an abort in progress finishes its cut before the provider may
        # release the connection (None), so a cut never lands on a pooled connection.
        with self._cut_lock:
            self._cut = cut
        if cut is not None and self._stop.is_set():
            self.abort()

    def _run(self) -> None:
        abort_hook.set(self._register_cut)
        try:
            for chunk in self._stream:
                if self._stop.is_set():
                    break
                self._queue.put(chunk)
            self._queue.put(_END)
        except BaseException as exc:
            self._queue.put(exc)
        finally:
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()

    def get(self, timeout_s: float) -> object:
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return _TICK

    def close(self) -> None:
        self._stop.set()

    def abort(self) -> None:
        """Stop, and cut the provider's connection now even if the thread is blocked in a
        read (a silent provider): the thread then ends instead of waiting out the timeout."""
        self._stop.set()
        with self._cut_lock:
            if self._cut is not None:
                self._cut()


def _finish_reason(reported: str | None) -> str:
    """The row's finish reason for a completed answer: the provider's (PROTOCOL §8)."""
    if reported in FinishReason.values:
        return str(reported)
    return FinishReason.STOP


class LostOwnership(Exception):
    """This attempt was superseded (re-queued by the reaper, or cancelled while queued)."""


class Runner:
    def __init__(
        self,
        claim: services.Claim,
        *,
        clock: Callable[[], float] = time.monotonic,
        stopping: threading.Event | None = None,
    ) -> None:
        self.claim = claim
        self.generation_id = claim.generation_id
        self.attempt = claim.attempt
        self.seq = claim.start_seq
        self.text = ""
        self.reasoning = ""
        self.completion_tokens = 0
        self.history: tuple[tuple[str, str], ...] = ()
        self.clock = clock
        # The pending text's event type: `delta`, or `reasoning` (PROTOCOL §8). Both share
        # the seq space, so a change of type flushes what waits first.
        self._pending_kind = "delta"
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._last_flush = float("-inf")
        self._last_checkpoint = clock()
        self._cancel = False
        self._stopping = stopping or threading.Event()
        self.timer = metrics.AttemptTimer(
            model=claim.model,
            created_at=claim.created_at,
            first_text_of_generation=claim.start_seq == 0,
            clock=clock,
        )

    # -- publishing ------------------------------------------------------------------------

    def _publish(self, event: dict[str, Any]) -> None:
        give_up_at: float | None = None
        delay_s = 0.05
        while True:
            try:
                if publish_event(self.generation_id, self.attempt, event):
                    return
                if event_log().fence_holder(self.generation_id) is not None:
                    raise LostOwnership(self.generation_id)
                # No fence at all: Redis lost its data (a restart) under us. The database
                # says whether this attempt still owns the generation; if it does, put the
                # fence back and go on: subscribers that saw events the restart erased see a
                # gap and take the row's snapshot, which this has just checkpointed.
                if not self._still_ours(final=event["type"] == "done"):
                    raise LostOwnership(self.generation_id)
                event_log().restore_fence(self.generation_id, self.attempt)
                logger.warning(
                    "generation %s: the event log's fence was lost; restored for attempt %d",
                    self.generation_id,
                    self.attempt,
                )
                continue
            except (redis.RedisError, DatabaseError) as error:
                now = self.clock()
                give_up_at = give_up_at or now + REDIS_RETRY_S
                if now > give_up_at:
                    raise
                logger.warning(
                    "generation %s: publishing seq %s failed (%s); retrying",
                    self.generation_id,
                    event["seq"],
                    type(error).__name__,
                )
                if isinstance(error, DatabaseError):
                    close_old_connections()
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 1.0)

    def _still_ours(self, *, final: bool) -> bool:
        """Whether the row still belongs to this attempt, checkpointing the fold so far."""
        if final:
            # The final row is written before `done` is published; once terminal, no
            # other attempt can start.
            written = services.generation_final_seq(self.generation_id, self.attempt)
            return written is not None and written >= self.seq
        ours, cancel = services.generation_checkpoint(
            self.generation_id,
            self.attempt,
            output=self.text,
            seq=self.seq,
            completion_tokens=self._tokens_paid(),
            reasoning=self.reasoning,
        )
        self._cancel = self._cancel or cancel
        self._last_checkpoint = self.clock()
        return ours

    def _tokens_paid(self) -> int:
        """This generation's completion tokens so far, earlier runs' included."""
        return self.claim.earlier_completion_tokens + self.completion_tokens

    def _flush(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        self.seq += 1
        if self._pending_kind == "reasoning":
            self.reasoning += text
            self._publish(events.reasoning(self.generation_id, self.seq, text))
        else:
            self.text += text
            self._publish(events.delta(self.generation_id, self.seq, text))
        self.timer.delta_published()
        self._last_flush = self.clock()

    def _add_text(self, text: str, kind: str = "delta") -> None:
        if kind != self._pending_kind:
            self._flush()
            self._pending_kind = kind
        self._pending.append(text)
        self._pending_bytes += len(text)
        now = self.clock()
        if (
            now - self._last_flush >= self._coalesce_s()
            or self._pending_bytes >= COALESCE_MAX_BYTES
        ):
            self._flush()

    def _checkpoint(self, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_checkpoint < settings.CHECKPOINT_INTERVAL_S:
            return
        self._last_checkpoint = now
        try:
            ours, cancel = services.generation_checkpoint(
                self.generation_id,
                self.attempt,
                output=self.text,
                seq=self.seq,
                completion_tokens=self._tokens_paid(),
                reasoning=self.reasoning,
            )
        except DatabaseError:
            # A missed checkpoint costs only replay distance; the final write is retried.
            logger.warning("generation %s: checkpoint failed", self.generation_id, exc_info=True)
            close_old_connections()
            return
        if not ours:
            raise LostOwnership(self.generation_id)
        self._cancel = self._cancel or cancel

    def _coalesce_s(self) -> float:
        return coalesce_interval_s(housekeeping.running_count())

    def _wait_s(self) -> float:
        """How long to wait for the provider before acting on our own."""
        if self._pending:
            return max(0.0, self._coalesce_s() - (self.clock() - self._last_flush))
        return IDLE_TICK_S

    def _cancel_requested(self) -> bool:
        if not self._cancel and event_log().cancel_requested(self.generation_id):
            self._cancel = True
        return self._cancel

    # -- the attempt -----------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
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
                    if services.generation_requeue(
                        self.generation_id,
                        self.attempt,
                        output=self.text,
                        seq=self.seq,
                        reasoning=self.reasoning,
                        completion_tokens=self._tokens_paid(),
                    ):
                        logger.warning("generation %s: re-queued", self.generation_id)
                except Exception:
                    logger.warning("generation %s: re-queue failed", self.generation_id)

    def _hand_back(self) -> None:
        """The process is stopping: give the generation back to the queue, to be run again
        from the start (a provider stream cannot be resumed) by another worker, with
        `reset` first. A stop is not a failure: the attempt number stays."""
        if not services.generation_hand_back(
            self.generation_id,
            self.attempt,
            output=self.text,
            seq=self.seq,
            reasoning=self.reasoning,
            completion_tokens=self._tokens_paid(),
        ):
            raise LostOwnership(self.generation_id)
        logger.warning(
            "generation %s: attempt %d handed back to the queue", self.generation_id, self.attempt
        )

    def _run(self) -> None:
        if self.attempt > 1 or self.claim.start_seq > 0:
            # Subscribers may have text of an earlier run (a failed attempt, or one handed
            # back on shutdown): they discard it.
            self.seq += 1
            self._publish(events.reset(self.generation_id, self.seq, self.attempt))
            self._checkpoint(force=True)
        if self.claim.max_tokens <= 0:
            # The daily quota has no room left for it: it ends as one that reached its cap
            # does, and nothing reaches the provider.
            self._finish(Status.COMPLETED, FinishReason.LENGTH, self._counted_usage(None), None)
            return
        # A conversation's turn carries its ancestors' prompts and answers, cut to the
        # model's context budget (api.conversations); counted in the usage's prompt tokens.
        self.history = history_for(self.generation_id)
        request = ProviderRequest(
            model=self.claim.model,
            prompt=self.claim.prompt,
            system=self.claim.system,
            max_tokens=self.claim.max_tokens,
            temperature=self.claim.temperature,
            history=self.history,
        )
        finish_reason: str | None = None
        usage: dict[str, int] | None = None
        # When the finish reason came (the grace for the usage chunk runs from it), and when
        # the last chunk came once text had (the between-chunk timeout runs from it).
        finished_at: float | None = None
        last_chunk_at: float | None = None
        self.timer.provider_started()
        pump = ChunkPump(
            stream_with_retry(get_provider(), request, stop_requested=self._cancel_requested)
        )
        try:
            while True:
                item = pump.get(self._wait_s())
                if item is _TICK:
                    # Nothing from the provider for a while: send what waits, notice a
                    # cancel, and keep the row (and the heartbeat) fresh.
                    if self._pending and self.clock() - self._last_flush >= self._coalesce_s():
                        self._flush()
                    if self._cancel_requested() or self._stopping.is_set():
                        break
                    now = self.clock()
                    if finished_at is not None:
                        if now - finished_at >= settings.PROVIDER_FINISH_GRACE_S:
                            # The answer is complete; a server that holds the connection
                            # open after it must not turn it into a timeout.
                            break
                    elif (
                        last_chunk_at is not None
                        and now - last_chunk_at > settings.PROVIDER_READ_TIMEOUT_S
                    ):
                        raise ProviderError(
                            f"no chunk for {settings.PROVIDER_READ_TIMEOUT_S:g} s mid-stream",
                            permanent=False,
                            kind="timeout",
                        )
                    self._checkpoint()
                    continue
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Chunk)
                if self._cancel_requested() or self._stopping.is_set():
                    break
                if item.text or item.reasoning:
                    if self.completion_tokens >= self.claim.max_tokens:
                        # Past the cap (max_tokens, or the daily quota's room): a provider
                        # that does not honour max_tokens is cut here, its extra text unused.
                        finish_reason = "length"
                        break
                    # Reasoning tokens are completion tokens too: providers bill them so.
                    self.completion_tokens += 1
                    self.timer.text()
                    last_chunk_at = self.clock()
                    if item.reasoning:
                        self._add_text(item.reasoning, "reasoning")
                    if item.text:
                        self._add_text(item.text)
                if item.finish_reason and finish_reason is None:
                    finish_reason = item.finish_reason
                    finished_at = self.clock()
                if item.usage:
                    usage = item.usage
                self._checkpoint()
        except ProviderError as error:
            self._flush()
            if self._cancel_requested():
                # The retry loop gives up on a cancel; the user asked for a stop, and a
                # failure of a stream they no longer wanted is not the provider's error.
                self._finish(
                    Status.CANCELLED,
                    FinishReason.CANCELLED,
                    self._counted_usage(None),
                    None,
                )
            else:
                self._provider_failed(error)
            return
        finally:
            # The pump cuts the provider's connection (no more tokens are paid for), also
            # one blocked in a read of a silent provider, and closes its stream.
            pump.abort()
        self._flush()
        if self._cancel:
            self._finish(
                Status.CANCELLED,
                FinishReason.CANCELLED,
                self._counted_usage(None),
                None,
            )
            return
        if self._stopping.is_set() and finish_reason is None:
            self._hand_back()
            return
        self._finish(
            Status.COMPLETED, _finish_reason(finish_reason), self._counted_usage(usage), None
        )

    def _counted_usage(self, usage: dict[str, int] | None) -> dict[str, int]:
        """The provider's figures when it reported them, else our own count; plus the
        completion tokens of earlier failed runs, which were paid for too."""
        if usage is None:
            prompt_tokens = len(tokenize(self.claim.prompt)) + len(
                tokenize(self.claim.system or "")
            )
            prompt_tokens += sum(len(tokenize(content)) for _, content in self.history)
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

    def _provider_failed(self, error: ProviderError) -> None:
        # The provider's own words go to the log (they carry no prompt), with the id.
        logger.warning(
            "generation %s: provider error %s (%s, permanent=%s) on attempt %d: %s",
            self.generation_id,
            error.code,
            error.kind,
            error.permanent,
            self.attempt,
            error.provider_message[:1000],
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
            if services.generation_requeue(
                self.generation_id,
                self.attempt,
                output=self.text,
                seq=self.seq,
                reasoning=self.reasoning,
                # What this attempt used is paid for: the next one counts it (its claim
                # reads it from the row).
                completion_tokens=self._tokens_paid(),
                delay_s=min(delay_s, RETRY_AFTER_MAX_S),
            ):
                return
            raise LostOwnership(self.generation_id)
        self._finish(
            Status.FAILED, FinishReason.ERROR, self._counted_usage(None), error.client_error()
        )

    def _finish(
        self,
        status: str,
        finish_reason: str,
        usage: dict[str, int] | None,
        error: dict[str, Any] | None,
    ) -> None:
        done_seq = self.seq + 1
        deadline = self.clock() + FINAL_WRITE_RETRY_S
        delay_s = 0.1
        while True:
            try:
                written = services.generation_finish(
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
                if self.clock() > deadline:
                    # The row still says running; the reaper will retry the generation.
                    logger.error("generation %s: final write failed", self.generation_id)
                    raise
                logger.warning("generation %s: final write failed; retrying", self.generation_id)
                close_old_connections()
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)
        if not written:
            raise LostOwnership(self.generation_id)
        self.timer.finished(status=status, finish_reason=finish_reason)
        self.seq = done_seq
        self._publish(
            events.done(
                self.generation_id,
                done_seq,
                status=status,
                finish_reason=finish_reason,
                usage=usage,
                error=error,
            )
        )


# -- per-process housekeeping ---------------------------------------------------------------


class Housekeeping:
    """One thread per worker process: heartbeats for the attempts running here, and the
    reaper that re-queues generations whose worker stopped beating (Huey has no acks).

    It also hands this process's generations back to the queue when the process stops
    (``hand_back_all``), so that another worker continues them within seconds instead of
    after HEARTBEAT_TIMEOUT_S."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self.stopping = threading.Event()
        # When the database last became reachable to this process after an outage. During
        # an outage no worker can beat, so every heartbeat goes stale: reaping the moment
        # the database is back would re-queue generations whose workers are alive and
        # well. Reaping waits until heartbeats have had a full timeout to be written again.
        self._database_back_at = float("-inf")
        self._database_down = False

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="housekeeping", daemon=True)
                self._thread.start()

    def track(self, generation_id: str, attempt: int) -> None:
        with self._lock:
            self._running[generation_id] = attempt

    def untrack(self, generation_id: str) -> None:
        with self._lock:
            self._running.pop(generation_id, None)

    def running_count(self) -> int:
        # Read without the lock: a count one off for a moment only shifts the coalescing.
        return len(self._running)

    def running(self) -> dict[str, int]:
        with self._lock:
            return dict(self._running)

    def hand_back_all(self, wait_s: float = HAND_BACK_WAIT_S) -> None:
        """On shutdown: every runner here stops and hands its generation back to the queue
        (as the same attempt); those that have not within `wait_s` are re-queued from their
        last checkpoint as the next attempt, which fences off any late write of theirs."""
        self.stopping.set()
        deadline = time.monotonic() + wait_s
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        for generation_id, attempt in self.running().items():
            try:
                if services.generation_requeue(generation_id, attempt):
                    logger.warning(
                        "generation %s: attempt %d re-queued on shutdown", generation_id, attempt
                    )
            except Exception:
                # The reaper of another worker re-queues it once its heartbeat is stale.
                logger.warning("generation %s: hand-back failed", generation_id, exc_info=True)
        close_old_connections()

    def _loop(self) -> None:
        interval_s = max(1.0, settings.HEARTBEAT_TIMEOUT_S / 4)
        next_reap = time.monotonic() + interval_s
        while True:
            time.sleep(interval_s)
            try:
                services.generation_heartbeat(self.running())
                now = time.monotonic()
                if self._database_down:
                    self._database_down = False
                    self._database_back_at = now
                if (
                    now >= next_reap
                    and now - self._database_back_at >= settings.HEARTBEAT_TIMEOUT_S
                ):
                    next_reap = now + interval_s
                    services.reap_stale(
                        heartbeat_timeout_s=settings.HEARTBEAT_TIMEOUT_S,
                        max_attempts=settings.MAX_ATTEMPTS,
                    )
            except DatabaseError:
                self._database_down = True
                logger.warning("housekeeping: database unreachable; will retry", exc_info=True)
            except Exception:
                logger.warning("housekeeping failed; will retry", exc_info=True)
            finally:
                close_old_connections()


housekeeping = Housekeeping()


# A task that reaches a worker thread of a process that is stopping (its idle threads are
# still waiting on the queue for a moment) goes to the queue's schedule instead, so that
# another worker's scheduler enqueues it this much later: claiming it here would only hand it
# back at once (and a hand-back re-reads the provider from the start).
STOPPING_RESCHEDULE_S = 1.0


def run_generation_job(generation_id: str) -> None:
    if housekeeping.stopping.is_set():
        from jobs.tasks import run_generation

        run_generation.schedule((generation_id,), delay=STOPPING_RESCHEDULE_S)
        return
    housekeeping.start()
    event_log().watch_cancels()
    claim = services.generation_claim(generation_id)
    if claim is None:
        logger.info(
            "generation %s: not claimed (cancelled, or taken by another worker)", generation_id
        )
        return
    logger.info("generation %s: attempt %d started", generation_id, claim.attempt)
    housekeeping.track(generation_id, claim.attempt)
    try:
        Runner(claim, stopping=housekeeping.stopping).run()
    finally:
        housekeeping.untrack(generation_id)
