"""One generation's event log and one subscriber to it, driven step by step in this process.

The worker side (``Worker``) publishes and checkpoints the way jobs/engine.py does, through
jobs/writer.py: every event through ``publish_event`` (replay buffer first, then the live
group), the row through the fenced writes. The subscriber side (``Subscriber``) runs
``realtime.subscription.Subscription`` over a ``LiveInbox`` (a channel of its own) the way
realtime/session.py does: join the generation's group first, then ``start``, then hand live
messages to ``on_live`` and call ``catch_up()`` when idle.

Nothing here is mocked: the database, the replay buffer and the channel layer are those of the
run's tier (tests/tier_env.py). Two things are made deterministic rather than left to timing:

- the live path: ``Subscriber.deliver_live`` sends a marker down the same ordered lane of the
  same ``LiveSender`` as the events and hands every message that arrives before it to
  ``on_live``; once the marker is in, every event published before it has arrived or was lost.
- time: the subscription throttles its repair reads and row reads by ``time.monotonic``;
  ``ManualClock`` stands in for that clock (and only that one), and an idle check moves it by
  ``next_check_in()``, which is what the transports wait in real time before checking.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from prometheus_client import REGISTRY

from core.models import Generation, Status
from core.redis import sync_client
from core.selectors import RowState, row_state
from jobs import events, writer
from jobs.eventlog import MemoryEventLog, RedisEventLog, StoredEvent, event_log
from jobs.writer import LiveSender, group_name, live_sender, publish_event
from realtime import subscription as subscription_module
from realtime.live import stored_event
from realtime.subscription import Subscription
from tests.jobs.support import checkpoint
from tests.wire import check_event

P = ParamSpec("P")
R = TypeVar("R")

SYNC_MARKER = "test.sync"
# On a layer that drops (capacity 1), a marker sent while the channel still holds a message is
# dropped like any other; it is sent again after this long. A marker that arrives proves that
# everything sent before it has been delivered or lost, whichever marker it is.
MARKER_RESEND_S = 0.2
# Far above a local round trip: reaching it means the live path is broken, not slow.
LIVE_PATH_TIMEOUT_S = 10.0
_marker_tokens = itertools.count(1)


def in_thread(fn: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Run a sync ORM call off the event loop, as the realtime code does, closing its
    connection afterwards (a thread pool thread would otherwise keep one per thread)."""

    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    return sync_to_async(call, thread_sensitive=False)


def repaired_total() -> float:
    """The process's llm_events_repaired_total (core.metrics)."""
    return REGISTRY.get_sample_value("llm_events_repaired_total") or 0.0


class ManualClock:
    """The subscription module's clock: moves only when a test says so."""

    def __init__(self) -> None:
        # Well past zero: Subscription starts its row-check throttle at 0.0.
        self.now = 1_000_000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def install_manual_clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """Give the subscription module a clock that moves only with idle checks."""
    clock = ManualClock()
    monkeypatch.setattr(subscription_module, "time", clock)
    return clock


async def bound_sender(monkeypatch: pytest.MonkeyPatch) -> LiveSender:
    """A LiveSender delivering on this test's event loop, used by publish_event in this test.

    A fresh one per test: the process-wide one binds to the first loop it sees, and each test
    has a loop of its own. Its lanes end with the loop (asyncio.Runner cancels their tasks).
    """
    sender = LiveSender()
    await sender.bind_running_loop()
    monkeypatch.setattr(writer, "live_sender", lambda: sender)
    return sender


async def tier_sender(monkeypatch: pytest.MonkeyPatch) -> LiveSender:
    """The live path of this run's tier, as the service sets it up.

    Embedded: the in-memory layer, delivered on the subscribers' loop (project/asgi.py binds
    the web server's). Distributed: the process-wide sender on its own loop thread,
    publishing through Redis pub/sub, as in a worker process.
    """
    if settings.DISTRIBUTED:
        return live_sender()
    return await bound_sender(monkeypatch)


def _create_running_row() -> str:
    user, _ = get_user_model().objects.get_or_create(username="alice")
    now = timezone.now()
    generation = Generation.objects.create(
        user=user,
        model="gpt-4o-mini",
        prompt="handoff",
        max_tokens=1024,
        status=Status.RUNNING,
        attempt=1,
        started_at=now,
        heartbeat_at=now,
    )
    return generation.id


def _requeue(generation_id: str, attempt: int, output: str, seq: int) -> None:
    # writer.generation_requeue, without its on_commit enqueue: this test is the worker.
    updated = Generation.objects.filter(
        pk=generation_id, attempt=attempt, status=Status.RUNNING
    ).update(status=Status.QUEUED, attempt=attempt + 1, output=output, seq=seq)
    assert updated == 1


async def read_row(generation_id: str) -> RowState:
    row = await in_thread(row_state)(generation_id)
    assert row is not None
    return row


class Worker:
    """Plays jobs/engine.Attempt for one generation: deltas, checkpoints, restarts, the end."""

    def __init__(self, generation_id: str) -> None:
        self.generation_id = generation_id
        self.attempt = 1
        self.seq = 0
        self.text = ""
        self.log: list[dict[str, Any]] = []  # every event published, in order

    @classmethod
    async def start(cls) -> Worker:
        """A generation that a worker has claimed: row running attempt 1, log fenced."""
        generation_id = await in_thread(_create_running_row)()
        assert event_log().take_fence(generation_id, 1) is None
        return cls(generation_id)

    def _publish(self, event: dict[str, Any]) -> None:
        assert publish_event(self.generation_id, self.attempt, event), event
        self.log.append(event)

    def delta(self, text: str) -> int:
        self.seq += 1
        self.text += text
        self._publish(events.delta(self.generation_id, self.seq, text))
        return self.seq

    def deltas(self, count: int, tag: str = "t") -> None:
        for _ in range(count):
            self.delta(f"{tag}{self.seq + 1} ")

    async def checkpoint(self) -> None:
        """The row now holds the fold through the last published seq."""
        ours, _ = await in_thread(checkpoint)(
            self.generation_id,
            self.attempt,
            output=self.text,
            seq=self.seq,
            completion_tokens=len(self.log),
        )
        assert ours

    async def requeue_and_claim(self) -> None:
        """The attempt failed after streaming text: back to the queue, and claimed again.

        As writer.generation_requeue (without its enqueue: this test is the worker) and
        writer.generation_claim do: the row keeps the old attempt's fold, and the log is
        fenced for the new attempt, so the old one can append nothing more.
        """
        await in_thread(_requeue)(self.generation_id, self.attempt, self.text, self.seq)
        claim = await in_thread(writer.generation_claim)(self.generation_id)
        assert claim is not None
        assert claim.attempt == self.attempt + 1
        # Never below what was published; above it when the log was lost with what was in it.
        assert claim.start_seq >= self.seq
        self.attempt = claim.attempt
        self.seq = claim.start_seq

    async def requeue_from_the_row_and_claim(self) -> None:
        """What the reaper does for a worker that stopped beating: re-queue with the row's
        fold (the last checkpoint, not what was published), then a worker claims it."""
        row = await read_row(self.generation_id)
        await in_thread(_requeue)(self.generation_id, self.attempt, row.output, row.seq)
        claim = await in_thread(writer.generation_claim)(self.generation_id)
        assert claim is not None
        self.attempt = claim.attempt
        self.seq = claim.start_seq
        self.text = row.output

    def reset(self) -> int:
        """The new attempt's first event: discard the text so far."""
        self.seq += 1
        self.text = ""
        self._publish(events.reset(self.generation_id, self.seq, self.attempt))
        return self.seq

    async def restart(self) -> None:
        """A new attempt as the runner starts one: claim, `reset`, forced checkpoint."""
        await self.requeue_and_claim()
        self.reset()
        await self.checkpoint()

    async def finish(self, *, publish_done: bool = True) -> None:
        """The final row first (authoritative), then `done`, as the runner does.

        With `publish_done` False, the worker dies (or loses Redis) between the two.
        """
        done_seq = self.seq + 1
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        written = await in_thread(writer.generation_finish)(
            self.generation_id,
            self.attempt,
            status=Status.COMPLETED,
            output=self.text,
            seq=done_seq,
            finish_reason="stop",
            usage=usage,
            error=None,
        )
        assert written
        self.seq = done_seq
        if not publish_done:
            return
        self._publish(
            events.done(
                self.generation_id,
                done_seq,
                status=Status.COMPLETED,
                finish_reason="stop",
                usage=usage,
                error=None,
            )
        )

    def text_through(self, seq: int) -> str:
        """What a client that applied events 1..seq shows: its state when it asks for `after`."""
        return events.fold(event for event in self.log if event["seq"] <= seq)

    def drop_replay_buffer(self, *, expired: bool = False) -> None:
        """The replay buffer is gone: Redis lost the key, or the process lost its memory.

        By default the attempt fence survives, so the worker goes on appending to a fresh
        buffer. With `expired`, everything is gone, as when the buffer of a finished
        generation has outlived its TTL.
        """
        log = event_log()
        gid = self.generation_id
        if isinstance(log, RedisEventLog):
            keys = [RedisEventLog._stream_key(gid)]
            if expired:
                keys.append(RedisEventLog._fence_key(gid))
            sync_client().delete(*keys)
        else:
            assert isinstance(log, MemoryEventLog)
            with log._lock:
                log._logs.pop(gid, None)
            if not expired:
                log.take_fence(gid, self.attempt)


class LiveInbox:
    """A channel of our own, joined to generation groups, read by one background task.

    The pub/sub layer unsubscribes a channel when a ``receive`` on it is cancelled, so the
    channel is read by a task that runs until ``close``; callers wait on a local queue with
    whatever timeout they like.
    """

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.channel = ""
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        assert self.layer is not None
        self.channel = await self.layer.new_channel()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.layer is not None
        while True:
            message = await self.layer.receive(self.channel)
            self.queue.put_nowait(message)

    async def join(self, generation_id: str) -> None:
        assert self.layer is not None
        await self.layer.group_add(group_name(generation_id), self.channel)

    async def leave(self, generation_id: str) -> None:
        assert self.layer is not None
        await self.layer.group_discard(group_name(generation_id), self.channel)

    async def close(self, generation_ids: list[str]) -> None:
        for generation_id in generation_ids:
            with contextlib.suppress(Exception):
                await self.leave(generation_id)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader


# --- The process's live hub: one membership per group, fanned out in process ----------------


async def sync_live(
    inbox: LiveInbox, sender: LiveSender, generation_id: str
) -> list[dict[str, Any]]:
    """Every live message of the generation sent before now that reached `inbox` (lost ones
    aside), in order: a marker goes down the same ordered lane, and this waits for it."""
    group = group_name(generation_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LIVE_PATH_TIMEOUT_S
    first_token = next(_marker_tokens)
    sender.send(group, {"type": SYNC_MARKER, "token": first_token})
    arrived: list[dict[str, Any]] = []
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError("the live path did not deliver the sync marker")
        try:
            message = await asyncio.wait_for(
                inbox.queue.get(), timeout=min(MARKER_RESEND_S, remaining)
            )
        except TimeoutError:
            sender.send(group, {"type": SYNC_MARKER, "token": next(_marker_tokens)})
            continue
        if message["type"] != SYNC_MARKER:
            arrived.append(message)
        elif message["token"] >= first_token:
            return arrived
        # else: a marker resent by an earlier call


class Subscriber:
    """One client subscribed at position `after`, run the way realtime/sse.py runs it."""

    def __init__(
        self,
        generation_id: str,
        after: int,
        *,
        clock: ManualClock,
        sender: LiveSender,
        drop_live: Callable[[StoredEvent], bool] | None = None,
    ) -> None:
        self.generation_id = generation_id
        self.after = after
        self.clock = clock
        self.sender = sender
        self.drop_live = drop_live
        self.inbox = LiveInbox()
        self.subscription = Subscription(generation_id, after, self._emit)
        self.received: list[StoredEvent] = []
        self.live_seqs: list[int] = []  # events handed to on_live
        self.dropped_seqs: list[int] = []  # live events this test chose to lose
        self.idle_checks = 0
        # llm_events_repaired_total when this subscriber was made: one subscriber per test.
        self._repaired_before = repaired_total()
        self._waiting: list[dict[str, Any]] = []  # arrived before start
        self._opened = False

    async def _emit(self, event: StoredEvent) -> None:
        self.received.append(event)

    @property
    def finished(self) -> bool:
        return self.subscription.finished

    @property
    def repaired(self) -> int:
        """Events this subscriber took from the buffer to fill gaps in live delivery (the
        process's llm_events_repaired_total since it was made)."""
        return int(repaired_total() - self._repaired_before)

    def messages(self) -> list[dict[str, Any]]:
        """What the subscription sent, each event checked against its model."""
        decoded = [event.decoded() for event in self.received]
        for message in decoded:
            check_event(message)
        return decoded

    async def join(self) -> None:
        """Join the live group; return once it is in effect (a marker came back through it).

        Live messages that come in meanwhile wait, as they do in the transport's inbox, until
        `deliver_live` hands them over after `start`.
        """
        await self.inbox.open()
        self._opened = True
        await self.inbox.join(self.generation_id)
        self._waiting.extend(await sync_live(self.inbox, self.sender, self.generation_id))

    async def start(self, row: RowState | None = None) -> None:
        """As the session does: a fresh subscriber's snapshot from a row read before the join
        (when given), then the catch-up to the present."""
        if row is not None:
            await self.subscription.start_from(row)
        await self.subscription.catch_up()

    async def _hand_over(self, message: dict[str, Any]) -> None:
        event = stored_event(message)
        if self.drop_live is not None and self.drop_live(event):
            self.dropped_seqs.append(event.seq)
            return
        self.live_seqs.append(event.seq)
        await self.subscription.on_live(event)

    async def deliver_live(self) -> None:
        """Hand to on_live every live message published before now, as the transport would."""
        waiting, self._waiting = self._waiting, []
        for message in waiting + await sync_live(self.inbox, self.sender, self.generation_id):
            await self._hand_over(message)

    async def idle_check(self) -> None:
        """What the transport does after next_check_in() seconds without live traffic."""
        self.clock.advance(self.subscription.next_check_in())
        self.idle_checks += 1
        await self.subscription.catch_up()

    async def run_until_finished(self, *, max_idle_checks: int = 20) -> None:
        """The transport's loop: live messages as they come, the idle check when none do."""
        for _ in range(max_idle_checks + 1):
            await self.deliver_live()
            if self.finished:
                return
            await self.idle_check()
            if self.finished:
                return
        raise AssertionError(f"not finished after {max_idle_checks} idle checks")

    async def close(self) -> None:
        if self._opened:
            await self.inbox.close([self.generation_id])


class Harness:
    """The generations and subscribers of one test, on one manual clock and one live path."""

    def __init__(self, clock: ManualClock, sender: LiveSender) -> None:
        self.clock = clock
        self.sender = sender
        self._observers: dict[str, LiveInbox] = {}
        self._subscribers: list[Subscriber] = []

    async def worker(self, *, observe: bool = True) -> Worker:
        """A running generation, with an observer in its live group from the start (for
        `settle`; none with `observe` False, where the observer's reads would get in the way)."""
        worker = await Worker.start()
        if not observe:
            return worker
        observer = LiveInbox()
        await observer.open()
        self._observers[worker.generation_id] = observer
        await observer.join(worker.generation_id)
        await self.settle(worker)
        return worker

    async def settle(self, worker: Worker) -> None:
        """Return once every live message published so far has gone through the layer.

        The live send is asynchronous (a lane of the LiveSender): an event published just
        before a subscriber joins may still reach it live. After this, it cannot: a test that
        means "published before the join" settles first, so only the buffer has the event.
        """
        gid = worker.generation_id
        await sync_live(self._observers[gid], self.sender, gid)

    def subscriber(
        self,
        generation_id: str,
        after: int,
        *,
        drop_live: Callable[[StoredEvent], bool] | None = None,
    ) -> Subscriber:
        sub = Subscriber(
            generation_id, after, clock=self.clock, sender=self.sender, drop_live=drop_live
        )
        self._subscribers.append(sub)
        return sub

    async def close(self) -> None:
        for sub in self._subscribers:
            await sub.close()
        for generation_id, observer in self._observers.items():
            await observer.close([generation_id])


def assert_gap_free(messages: list[dict[str, Any]], *, after: int) -> None:
    """PROTOCOL §3 as one subscriber sees it: a snapshot first when subscribing from 0; seqs
    strictly increasing; every event exactly the one after the previous message (a snapshot
    may only jump forward); exactly one `done`, last."""
    assert messages, "nothing received"
    if after == 0:
        assert messages[0]["type"] == "snapshot", messages
    previous = after
    for index, message in enumerate(messages):
        seq = message["seq"]
        if message["type"] == "snapshot":
            assert seq > previous or (index == 0 and seq == previous == 0), (index, message)
        else:
            assert seq == previous + 1, (index, previous, message)
        previous = seq
    kinds = [message["type"] for message in messages]
    assert kinds.count("done") == 1, kinds
    assert kinds[-1] == "done", kinds


async def assert_folds_to_final_output(subscriber: Subscriber, worker: Worker) -> None:
    """The guarantee: what the client showed at `after`, plus everything it received, is
    exactly the final output of the row, and its last seq is the row's."""
    row = await read_row(worker.generation_id)
    assert row.terminal
    received = subscriber.messages()
    assert_gap_free(received, after=subscriber.after)
    assert received[-1]["seq"] == row.seq == worker.seq
    assert received[-1]["status"] == row.status
    start_text = worker.text_through(subscriber.after)
    assert events.fold(received, start_text) == row.output == worker.text
