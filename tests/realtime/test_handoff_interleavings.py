"""The handoff from stored output to live events (PROTOCOL §3), at every moment and step.

A subscriber merges three sources by seq: the database row, the replay buffer and the live
group, which it joins first. These tests subscribe at each moment of a generation's life, and
force an event to be published at each step of the handoff (between the join and the row
read, the row read and the buffer read, the buffer read and the live queue, and, as the SSE
view does, a row read before the join), and check what the client ends with: the row's final
output, with seqs that go up one by one, no duplicate, and one `done` at the end.

In process, on this run's tier (tests/tier_env.py): the real database, replay buffer and
channel layer. An interleaving is forced by wrapping the real read and publishing right before
or after it. See tests/realtime/support.py for the worker and the subscriber.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError
from django.utils import timezone

from jobs import events, reaper
from jobs.eventlog import event_log
from jobs.writer import publish_event
from realtime import db as realtime_db
from realtime import subscription as subscription_module
from realtime.subscription import IDLE_CHECK_S, QUIET_ROW_CHECK_S
from tests.realtime.support import (
    Harness,
    Subscriber,
    Worker,
    assert_folds_to_final_output,
    in_thread,
    install_manual_clock,
    read_row,
    tier_sender,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def harness(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    """A manual clock for the subscriptions and the tier's own live path."""
    clock = install_manual_clock(monkeypatch)
    harness = Harness(clock, await tier_sender(monkeypatch))
    yield harness
    await harness.close()


def received_seqs(sub: Subscriber) -> list[int]:
    return [message["seq"] for message in sub.messages() if message["type"] != "snapshot"]


def inject_after_first_call(
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    action: Callable[[], Awaitable[None]],
) -> list[tuple[Any, ...]]:
    """Wrap the real async `owner.name` so that `action` runs right after its first call
    returns, before the caller sees the result. Returns the list of the calls' arguments."""
    real = getattr(owner, name)
    calls: list[tuple[Any, ...]] = []

    async def wrapper(*args: Any) -> Any:
        result = await real(*args)
        calls.append(args)
        if len(calls) == 1:
            await action()
        return result

    monkeypatch.setattr(owner, name, wrapper)
    return calls


# -- subscribing at each moment ----------------------------------------------------------------

# Moments of one generation's life, in order, with the last seq published at each (the row's
# seq in brackets): before any event 0 [0]; mid-stream 4 [4]; with the row behind the buffer
# 8 [4]; between the last delta and `done` 10 [10]; after `done` 10 + done 11 [11].
MOMENTS = {
    "before_any_event": [0],
    "mid_stream": [0, 1, 3, 4],
    "row_behind_buffer": [0, 1, 4, 7, 8],
    "between_last_delta_and_done": [0, 1, 9, 10],
    "after_done": [0, 1, 9, 10],
}


class Life:
    """One generation's life in four steps; the moments of MOMENTS lie between them."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.steps_done = 0

    async def _next_step(self) -> None:
        worker = self.worker
        step = self.steps_done
        self.steps_done += 1
        if step == 0:
            worker.deltas(4)
            await worker.checkpoint()  # the row at the head: 4
        elif step == 1:
            worker.deltas(4)  # the row stays at 4, the head goes to 8
        elif step == 2:
            worker.deltas(2)
            await worker.checkpoint()  # 10
        else:
            await worker.finish()  # done 11

    async def play_until(self, moment: str) -> None:
        while self.steps_done < list(MOMENTS).index(moment):
            await self._next_step()

    async def play_to_the_end(self, between_steps: Callable[[], Awaitable[None]]) -> None:
        while self.steps_done < len(MOMENTS) - 1:
            await self._next_step()
            await between_steps()


@pytest.mark.parametrize(
    ("moment", "after"),
    [(moment, after) for moment, positions in MOMENTS.items() for after in positions],
    ids=[f"{moment}-after{after}" for moment, positions in MOMENTS.items() for after in positions],
)
async def test_subscriber_at_any_moment_folds_to_the_final_output(
    harness: Harness, moment: str, after: int
) -> None:
    worker = await harness.worker()
    life = Life(worker)
    await life.play_until(moment)
    await harness.settle(worker)
    row_then = await read_row(worker.generation_id)
    head_then = worker.seq
    sub = harness.subscriber(worker.generation_id, after)

    await sub.join()
    await sub.start()
    started_at = sub.subscription.last_seq
    await life.play_to_the_end(sub.deliver_live)
    await sub.run_until_finished()

    await assert_folds_to_final_output(sub, worker)
    received = sub.messages()
    if after == 0:
        # The row's fold first: through its seq, or through the seq before `done`.
        assert received[0]["seq"] == (row_then.seq - 1 if row_then.terminal else row_then.seq)
        assert received[0]["text"] == row_then.output
    else:
        # The buffer holds the position: no snapshot, the next event first.
        assert all(message["type"] != "snapshot" for message in received)
        assert received[0]["seq"] == after + 1
    # At start it caught up to the head of the log; everything later came live, in time:
    # nothing had to be repaired and no idle check was needed.
    assert started_at == head_then
    assert set(range(head_then + 1, worker.seq + 1)) <= set(sub.live_seqs)
    assert sub.idle_checks == 0
    assert sub.repaired == 0


# -- forced interleavings ----------------------------------------------------------------------

# Before each interleaving: deltas 1..6 published, the row checkpointed at 3 (behind the buffer,
# as it usually is). The injected event is 7; then 8..10 and `done` 11.
POSITIONS = [0, 1, 5, 6]
INJECTED = 7


async def _before(worker: Worker, *, row_seq: int = 3) -> None:
    worker.deltas(3)
    if row_seq == 3:
        await worker.checkpoint()
    worker.deltas(3)
    if row_seq == 6:
        await worker.checkpoint()


async def _after(worker: Worker, sub: Subscriber) -> None:
    worker.deltas(2)
    await sub.deliver_live()
    worker.deltas(1)
    await worker.finish()
    await sub.run_until_finished()


def _assert_injected_once(sub: Subscriber) -> None:
    seqs = received_seqs(sub)
    covered_by_snapshot = any(
        message["type"] == "snapshot" and message["seq"] >= INJECTED for message in sub.messages()
    )
    assert seqs.count(INJECTED) == (0 if covered_by_snapshot else 1), seqs


@pytest.mark.parametrize("checkpointed", [False, True], ids=["row-behind", "row-has-it"])
@pytest.mark.parametrize("after", POSITIONS)
async def test_event_published_between_group_join_and_row_read(
    harness: Harness, after: int, checkpointed: bool
) -> None:
    """Published after the join: it waits on the live queue, and the row or the buffer has it
    too; the copy that comes second is dropped by seq."""
    worker = await harness.worker()
    await _before(worker)
    await harness.settle(worker)
    sub = harness.subscriber(worker.generation_id, after)
    await sub.join()

    worker.delta("injected ")
    if checkpointed:
        await worker.checkpoint()
    await sub.start()  # its first read is the row (after=0) or the buffer

    assert sub.subscription.last_seq == INJECTED
    await _after(worker, sub)
    await assert_folds_to_final_output(sub, worker)
    _assert_injected_once(sub)
    assert INJECTED in sub.live_seqs  # it did come live as well, and was discarded
    if after == 0:
        assert sub.messages()[0]["seq"] == (INJECTED if checkpointed else 3)
    assert sub.idle_checks == 0


@pytest.mark.parametrize("row_seq", [3, 6], ids=["row-behind", "row-at-head"])
async def test_event_published_between_row_read_and_buffer_read(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, row_seq: int
) -> None:
    """Only a fresh subscriber (after=0) reads the row when it starts; one with a position
    goes straight to the buffer (covered by the tests around this one). The event lands
    after the row was read: the snapshot lacks it, the buffer read right after has it."""
    worker = await harness.worker()
    await _before(worker, row_seq=row_seq)
    await harness.settle(worker)
    sub = harness.subscriber(worker.generation_id, 0)
    await sub.join()

    async def publish() -> None:
        worker.delta("injected ")

    reads = inject_after_first_call(monkeypatch, subscription_module, "read_row", publish)
    await sub.start()

    assert len(reads) == 1
    assert sub.messages()[0] == events.snapshot(
        worker.generation_id, row_seq, worker.text_through(row_seq), "running"
    )
    assert sub.subscription.last_seq == INJECTED
    await _after(worker, sub)
    await assert_folds_to_final_output(sub, worker)
    _assert_injected_once(sub)
    assert INJECTED in sub.live_seqs
    assert sub.idle_checks == 0


@pytest.mark.parametrize("after", POSITIONS)
async def test_event_published_between_buffer_read_and_live_queue_drain(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, after: int
) -> None:
    """The event lands after the buffer was read: only the live queue has it, and it is
    next in seq, so it goes out as soon as the transport drains the queue."""
    worker = await harness.worker()
    await _before(worker)
    await harness.settle(worker)
    sub = harness.subscriber(worker.generation_id, after)
    await sub.join()

    async def publish() -> None:
        worker.delta("injected ")

    reads = inject_after_first_call(monkeypatch, event_log(), "read_after", publish)
    await sub.start()

    assert len(reads) == 1
    assert sub.subscription.last_seq == INJECTED - 1  # not sent yet: it is on the live queue
    await sub.deliver_live()
    assert sub.subscription.last_seq == INJECTED
    assert sub.live_seqs == [INJECTED]
    await _after(worker, sub)
    await assert_folds_to_final_output(sub, worker)
    _assert_injected_once(sub)
    assert sub.idle_checks == 0
    assert sub.repaired == 0


@pytest.mark.parametrize("tail", ["one_event", "to_the_end"])
@pytest.mark.parametrize("after", POSITIONS)
async def test_row_read_before_join_then_events_published_before_join(
    harness: Harness, after: int, tail: str
) -> None:
    """The SSE view reads the row (to authorise, and to answer 204 after `done`) before it
    joins the group, then starts from that row. What is published in between never reaches
    the live queue; the buffer read after the stale row has it."""
    worker = await harness.worker()
    await _before(worker)
    await harness.settle(worker)
    sub = harness.subscriber(worker.generation_id, after)
    row = await read_row(worker.generation_id)

    worker.delta("injected ")
    if tail == "to_the_end":
        worker.deltas(3)
        await worker.finish()
    await harness.settle(worker)  # sent live while nobody listened
    await sub.join()
    await sub.start(row)

    if tail == "to_the_end":
        assert sub.finished  # everything, `done` included, from the buffer
    else:
        await _after(worker, sub)
    await assert_folds_to_final_output(sub, worker)
    _assert_injected_once(sub)
    assert INJECTED not in sub.live_seqs
    if after == 0:
        assert sub.messages()[0]["seq"] == row.seq == 3
    assert sub.idle_checks == 0


@pytest.mark.parametrize("after", POSITIONS)
async def test_final_row_without_done_in_the_buffer_still_ends_the_subscription(
    harness: Harness, after: int
) -> None:
    """The worker wrote the final row, then died (or lost Redis) before publishing `done`,
    so the buffer, which still exists, will never have it. The row is the authority: an
    idle subscriber looks at it now and then, and ends with the `done` the row describes."""
    worker = await harness.worker()
    await _before(worker)
    await harness.settle(worker)
    sub = harness.subscriber(worker.generation_id, after)
    await sub.join()
    await sub.start()

    worker.deltas(1)
    await worker.finish(publish_done=False)
    await sub.run_until_finished()

    await assert_folds_to_final_output(sub, worker)
    assert worker.seq not in sub.live_seqs
    # Within one quiet-row interval of idle time (each idle check is IDLE_CHECK_S later).
    assert sub.idle_checks <= QUIET_ROW_CHECK_S / IDLE_CHECK_S + 1


# -- a new attempt -----------------------------------------------------------------------------

# Attempt 1: deltas 1..4 (row at 2), fails; attempt 2 is claimed (a late delta from attempt 1 is
# refused), publishes `reset` 5, checkpoints, deltas 6..8, `done` 9.
RESET_MOMENTS = {
    "during_first_attempt": [0, 2, 4],
    "claimed_before_reset": [0, 4],
    "reset_before_checkpoint": [0, 4, 5],
    "during_second_attempt": [0, 5, 7],
}


@pytest.mark.parametrize(
    ("moment", "after"),
    [(moment, after) for moment, positions in RESET_MOMENTS.items() for after in positions],
    ids=[
        f"{moment}-after{after}"
        for moment, positions in RESET_MOMENTS.items()
        for after in positions
    ],
)
async def test_attempt_restart_folds_to_the_new_attempts_output(
    harness: Harness, moment: str, after: int
) -> None:
    worker = await harness.worker()
    sub = harness.subscriber(worker.generation_id, after)
    subscribed = False

    async def subscribe_if(now: str) -> None:
        nonlocal subscribed
        if now == moment:
            await harness.settle(worker)
            await sub.join()
            await sub.start()
            subscribed = True
        elif subscribed:
            await sub.deliver_live()

    worker.deltas(2, tag="old")
    await worker.checkpoint()
    worker.deltas(2, tag="old")
    await subscribe_if("during_first_attempt")
    await worker.requeue_and_claim()
    # The first attempt's worker, presumed dead, is still running: fenced off.
    late = events.delta(worker.generation_id, worker.seq + 1, "zombie ")
    assert not publish_event(worker.generation_id, worker.attempt - 1, late)
    await subscribe_if("claimed_before_reset")
    worker.reset()
    await subscribe_if("reset_before_checkpoint")
    await worker.checkpoint()
    worker.deltas(3, tag="new")
    await subscribe_if("during_second_attempt")
    await worker.finish()
    await sub.run_until_finished()

    await assert_folds_to_final_output(sub, worker)
    row = await read_row(worker.generation_id)
    assert row.output == "new6 new7 new8 "
    assert "zombie" not in "".join(message.data for message in sub.received)
    assert sub.idle_checks == 0


# -- the replay buffer is lost ---------------------------------------------------------------


@pytest.mark.parametrize("ending", ["checkpoint_then_finish", "finish_without_checkpoint"])
@pytest.mark.parametrize("lost", ["before_subscribing", "while_subscribed"])
@pytest.mark.parametrize("after", [0, 2, 5, 6])
async def test_replay_buffer_lost_subscriber_recovers_from_the_row(
    harness: Harness, after: int, lost: str, ending: str
) -> None:
    """Deltas 1..6, the row at 4; the buffer is lost (its attempt fence is not, so the worker
    goes on appending to a fresh buffer from 7). What neither the new buffer nor the live path
    has comes from the row: a snapshot once a checkpoint (or the final row) covers the gap."""
    worker = await harness.worker()
    worker.deltas(4)
    await worker.checkpoint()
    worker.deltas(2)
    sub = harness.subscriber(worker.generation_id, after)
    if lost == "before_subscribing":
        worker.drop_replay_buffer()
        await harness.settle(worker)
        await sub.join()
        await sub.start()
        worker.delta("seven ")
    else:
        await sub.join()
        await sub.start()
        assert sub.subscription.last_seq == 6
        # 7 is lost on the live path, then the buffer that could repair it is lost too.
        sub.drop_live = lambda event: event.seq == 7
        worker.delta("seven ")
        await sub.deliver_live()
        worker.drop_replay_buffer()
    worker.delta("eight ")
    await sub.deliver_live()
    if ending == "checkpoint_then_finish":
        await worker.checkpoint()
        worker.deltas(2)
    else:
        worker.deltas(1)
    await worker.finish()
    await sub.run_until_finished()

    await assert_folds_to_final_output(sub, worker)
    needed_the_row = lost == "while_subscribed" or after < 6
    snapshots = [message for message in sub.messages() if message["type"] == "snapshot"]
    assert bool(snapshots) == needed_the_row, snapshots


@pytest.mark.parametrize("after", [0, 1, 9, 10])
async def test_finished_generation_whose_buffer_expired_is_served_from_the_row_at_once(
    harness: Harness, after: int
) -> None:
    """Long after the end the buffer has expired; a client that reconnects with any position
    before `done` gets the row's fold and `done` when it starts, without waiting."""
    worker = await harness.worker()
    worker.deltas(10)
    await worker.finish()
    worker.drop_replay_buffer(expired=True)
    await harness.settle(worker)
    sub = harness.subscriber(worker.generation_id, after)

    await sub.join()
    await sub.start()

    assert sub.finished
    await assert_folds_to_final_output(sub, worker)
    kinds = [message["type"] for message in sub.messages()]
    assert kinds == (["done"] if after == 10 else ["snapshot", "done"])


@pytest.mark.parametrize("end", ["next_attempt", "reaper_fails_it"])
async def test_after_the_log_is_lost_seqs_a_client_has_seen_are_never_reused(
    harness: Harness, end: str
) -> None:
    """The log is lost with everything in it, fence included (a Redis restart; in the
    embedded default, a process restart), while the row is checkpointed at 4 and a client
    has seen up to 6. The worker, cut off from the log, stops; the generation goes on as a
    new attempt, or the reaper ends it. The client resumes after 6: whatever the server
    numbers next must not reuse 5 and 6, or the client skips what it needs and keeps text
    that is not the row's."""
    worker = await harness.worker()
    worker.deltas(4)
    await worker.checkpoint()
    worker.deltas(2)
    seen_text = worker.text_through(6)
    worker.drop_replay_buffer(expired=True)
    late = events.delta(worker.generation_id, 7, "unfenced ")
    assert not publish_event(worker.generation_id, worker.attempt, late)

    if end == "next_attempt":
        await worker.requeue_from_the_row_and_claim()
        worker.reset()
        await worker.checkpoint()
        worker.deltas(3, tag="new")
        await worker.finish()
    else:
        touched = await in_thread(reaper.reap_stale)(
            heartbeat_timeout_s=0, max_attempts=1, now=timezone.now() + timedelta(hours=1)
        )
        assert touched == 1
    row = await read_row(worker.generation_id)
    assert row.terminal
    await harness.settle(worker)
    sub = harness.subscriber(worker.generation_id, 6)
    if row.seq > 6:  # else the transports answer "nothing more" (SSE 204)
        await sub.join()
        await sub.start()
        await sub.run_until_finished()

    assert events.fold(sub.messages(), seen_text) == row.output


async def test_a_start_that_storage_interrupted_is_finished_before_any_live_event(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh subscriber whose start failed (the database could not be read) and that then
    gets live events: the start is finished first, so the snapshot still comes first, and
    no event is sent twice or out of order."""
    worker = await harness.worker()
    worker.deltas(3)
    await worker.checkpoint()
    await harness.settle(worker)
    sub = harness.subscriber(worker.generation_id, 0)
    await sub.join()
    outage = [OperationalError(2013, "Lost connection to server during query")]

    async def unreachable_once(generation_id: str) -> Any:
        if outage:
            raise outage.pop()
        return await realtime_db.read_row(generation_id)

    monkeypatch.setattr(subscription_module, "read_row", unreachable_once)
    with pytest.raises(OperationalError):
        await sub.start()
    assert sub.messages() == []

    worker.deltas(2)
    await harness.settle(worker)
    await sub.deliver_live()
    assert sub.messages()[0]["type"] == "snapshot"
    await worker.finish()
    await sub.run_until_finished()
    await assert_folds_to_final_output(sub, worker)
