"""A worker process's side of running generations: the Huey task's claim and hand-over to the
event loop (jobs.engine, which also writes the heartbeats, by its checkpoints), and
housekeeping (the reaper, hand-back on shutdown)."""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection

from jobs import reaper, writer
from jobs.eventlog import event_log

logger = logging.getLogger(__name__)

# On shutdown, how long the housekeeping thread waits for runners to hand their generations
# back themselves (each sees the request within jobs.engine.IDLE_TICK_S) before it re-queues
# the rest from their last checkpoint.
HAND_BACK_WAIT_S = 3.0


# -- per-process housekeeping ---------------------------------------------------------------


class Housekeeping:
    """One thread per worker process: the reaper that re-queues generations whose worker
    stopped beating (Huey has no acks), and the record of the attempts running here.

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

    def hand_back_all(self) -> None:
        """On shutdown: every runner here stops and hands its generation back to the queue
        (as the same attempt); those that have not within HAND_BACK_WAIT_S are re-queued from
        their last checkpoint as the next attempt, which fences off any late write of theirs."""
        self.stopping.set()
        deadline = time.monotonic() + HAND_BACK_WAIT_S
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        for generation_id, attempt in self.running().items():
            try:
                if writer.generation_requeue(generation_id, attempt, delay_s=STOPPING_RESCHEDULE_S):
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
                # Reaching the database at all: the outage (and its end) is noticed here
                # even in the rounds that do not reap.
                connection.ensure_connection()
                now = time.monotonic()
                if self._database_down:
                    self._database_down = False
                    self._database_back_at = now
                if (
                    now >= next_reap
                    and now - self._database_back_at >= settings.HEARTBEAT_TIMEOUT_S
                ):
                    next_reap = now + interval_s
                    reaper.reap_stale(
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


def start_worker() -> None:
    """This process's worker machinery: the provider, the event loop running its generations
    (before anything publishes, so that live sends use its loop), the cancel watcher, and
    the housekeeping thread."""
    from jobs.engine import engine
    from jobs.providers.base import get_provider

    # The provider's module (the openai SDK: over a second of imports) is loaded here, not
    # on the event loop at the first generation, where it held up every other one.
    get_provider()
    engine().start()
    event_log().watch_cancels()
    housekeeping.start()


# What a process that is stopping gives back goes to the queue's schedule, not the queue, so
# that another worker's scheduler enqueues it this much later: on the queue, an idle thread of
# the stopping process could take it and exit with it (Huey has no acknowledgement: it would
# wait for the reaper). That holds for its own hand-backs, and for a task that reaches one of
# its worker threads (its idle threads still wait on the queue for a moment): claiming it
# here would only hand it back at once (and a hand-back re-reads the provider from the start).
STOPPING_RESCHEDULE_S = 1.0


def run_generation_job(generation_id: str) -> None:
    from jobs.engine import engine  # which imports this module's housekeeping

    if housekeeping.stopping.is_set():
        from jobs.tasks import run_generation

        run_generation.schedule((generation_id,), delay=STOPPING_RESCHEDULE_S)
        return
    start_worker()
    # On the engine's own few connections, as all of the attempt's database work: this
    # thread holds none for the whole of the wait, however many generations the process runs.
    claim = engine().claim(generation_id)
    if claim is None:
        logger.info(
            "generation %s: not claimed (cancelled, or taken by another worker)", generation_id
        )
        return
    logger.info("generation %s: attempt %d started", generation_id, claim.attempt)
    housekeeping.track(generation_id, claim.attempt)
    try:
        engine().run_attempt(claim, stopping=housekeeping.stopping)
    finally:
        housekeeping.untrack(generation_id)
