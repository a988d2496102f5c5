"""Live delivery loses messages; subscribers do not (PROTOCOL §3; DESIGN.md, pitfalls).

The layers here are real and configured to drop: a channels_redis core ``RedisChannelLayer``
(distributed tier) or an ``InMemoryChannelLayer`` (embedded tier) with ``capacity=1``, whose
``group_send`` silently skips a full channel. The subscriber stalls, its inbox no longer
reading the channel as when its process is not scheduled, while the worker publishes: the
channel fills and the layer drops the rest. The subscription must notice the gap by seq and
fill it from the replay buffer before it sends anything later, and a `done` lost on the way
must still arrive, from the buffer, at the next idle check.

The property-based test at the end runs the tier's own live path and chooses which live
messages the subscriber loses, so that every pattern of loss (the first event after the
join, `done`, runs of both) is reachable and a failure shrinks to a small case.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.layers import DEFAULT_CHANNEL_LAYER, InMemoryChannelLayer, channel_layers
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from jobs.eventlog import StoredEvent
from jobs.writer import LiveSender
from tests.realtime.support import (
    Harness,
    ManualClock,
    assert_folds_to_final_output,
    bound_sender,
    install_manual_clock,
    read_row,
    tier_sender,
)
from tests.tier_env import TIER

pytestmark = pytest.mark.django_db(transaction=True)

# Far above a local round trip; reaching it means the layer never took the messages.
SEND_TIMEOUT_S = 10.0


class Stall:
    """Holds every reader of `layer` before its next receive, like a subscriber's process that
    is not being scheduled: what is sent meanwhile fills its channel, and the layer drops the
    rest. The layer's own receive runs unchanged once released."""

    def __init__(self, layer: Any) -> None:
        self._running = asyncio.Event()
        self._running.set()
        real_receive = layer.receive

        async def receive(channel: str) -> dict[str, Any]:
            await self._running.wait()
            result: dict[str, Any] = await real_receive(channel)
            return result

        layer.receive = receive

    def hold(self) -> None:
        self._running.clear()

    def release(self) -> None:
        self._running.set()


class Lossy:
    """A capacity-1 layer, a way to stall its readers, and a count of what the sender sent."""

    def __init__(self, harness: Harness, sender: LiveSender, stall: Stall) -> None:
        self.harness = harness
        self.stall = stall
        self._sender = sender
        self._queued = 0
        self._handed_over_before = handed_over()

    def count_sends(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_send = self._sender.send

        def send(group: str, message: dict[str, Any]) -> None:
            self._queued += 1
            real_send(group, message)

        monkeypatch.setattr(self._sender, "send", send)

    async def until_all_handed_over(self) -> None:
        """Wait until the sender has given the layer everything queued so far (the layer
        keeping or dropping it): the point at which a stall has cost what it will cost."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SEND_TIMEOUT_S
        while handed_over() - self._handed_over_before < self._queued:
            assert loop.time() < deadline, (handed_over(), self._queued)
            await asyncio.sleep(0.001)


def handed_over() -> float:
    """Live messages the sender gave the layer (kept or dropped), from its exported counter."""
    return sum(
        REGISTRY.get_sample_value("llm_live_sends_total", {"result": result}) or 0.0
        for result in ("sent", "failed")
    )


def capacity_one_layer() -> Any:
    if settings.DISTRIBUTED:
        # A prefix of its own: flushed at the end without touching anything else in Redis.
        return RedisChannelLayer(
            hosts=[settings.REDIS_URL], prefix=f"lossytest{uuid.uuid4().hex[:8]}:", capacity=1
        )
    return InMemoryChannelLayer(capacity=1)


@pytest.fixture
async def lossy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Lossy]:
    """The tier's kind of layer with capacity 1, as the default layer for this test (the
    subscriber's inbox and the sender that publish_event uses both take it from there)."""
    layer = capacity_one_layer()
    stall = Stall(layer)
    replaced = channel_layers.set(DEFAULT_CHANNEL_LAYER, layer)
    try:
        sender = await bound_sender(monkeypatch)
        lossy = Lossy(Harness(install_manual_clock(monkeypatch), sender), sender, stall)
        lossy.count_sends(monkeypatch)
        yield lossy
        stall.release()
        await lossy.harness.close()
    finally:
        if replaced is None:
            channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)
        else:
            channel_layers.set(DEFAULT_CHANNEL_LAYER, replaced)
        if isinstance(layer, RedisChannelLayer):
            await layer.flush()


async def test_events_dropped_while_the_subscriber_stalls_are_repaired_before_anything_later(
    lossy: Lossy,
) -> None:
    worker = await lossy.harness.worker(observe=False)
    sub = lossy.harness.subscriber(worker.generation_id, 0)
    await sub.join()
    await sub.start()
    for _ in range(5):  # one at a time: a capacity of 1 drops a burst even with no stall
        worker.deltas(1)
        await sub.deliver_live()
    assert sub.live_seqs == [1, 2, 3, 4, 5]

    lossy.stall.hold()
    worker.deltas(200)  # 6..205
    await lossy.until_all_handed_over()
    lossy.stall.release()
    for _ in range(10):  # 206..215, live again, one by one
        worker.deltas(1)
        await sub.deliver_live()
    await worker.finish()
    await sub.deliver_live()

    lost = sorted(set(range(6, 206)) - set(sub.live_seqs))
    repaired = sub.repaired
    print(f"\n[{TIER}] stalled subscriber: {len(lost)} of 200 live messages dropped by the layer;")
    print(f"[{TIER}] {repaired} events filled in from the replay buffer")
    # The layer really dropped: at most the message being read and one waiting got through.
    assert len(lost) >= 198
    # The first live event after the stall showed the gap; the buffer filled all of it then,
    # before that event was sent, with no idle check needed.
    assert repaired == len(lost) > 0
    assert sub.finished
    assert sub.idle_checks == 0
    await assert_folds_to_final_output(sub, worker)


async def test_done_lost_on_the_live_path_arrives_from_the_buffer_at_the_idle_check(
    lossy: Lossy,
) -> None:
    worker = await lossy.harness.worker(observe=False)
    sub = lossy.harness.subscriber(worker.generation_id, 0)
    await sub.join()
    await sub.start()
    for _ in range(3):
        worker.deltas(1)
        await sub.deliver_live()
    assert sub.live_seqs == [1, 2, 3]

    lossy.stall.hold()
    worker.deltas(3)  # 4..6
    await worker.finish()  # done 7
    await lossy.until_all_handed_over()
    lossy.stall.release()
    await sub.deliver_live()

    # Live, nothing more comes: the end was lost, and only the buffer has it.
    assert worker.seq not in sub.live_seqs
    assert not sub.finished
    await sub.idle_check()

    repaired = sub.repaired
    print(f"\n[{TIER}] lost `done`: {repaired} events filled in from the replay buffer")
    assert sub.finished
    assert sub.idle_checks == 1
    assert sub.messages()[-1]["type"] == "done"
    assert repaired >= 1
    await assert_folds_to_final_output(sub, worker)


# -- property: any history, any subscribe position, any live loss -----------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    return install_manual_clock(monkeypatch)


@pytest.fixture
async def sender(monkeypatch: pytest.MonkeyPatch) -> LiveSender:
    return await tier_sender(monkeypatch)


TEXT = st.text(alphabet="ab é漢🙂\n", min_size=1, max_size=4)
STEP = st.sampled_from(["delta", "delta", "delta", "checkpoint", "restart", "lose_buffer"])
# One live message in three is lost.
LOSE = st.sampled_from([False, False, True])


@hypothesis_settings(
    max_examples=50,
    deadline=None,
    derandomize=True,  # the same 50 cases on every run
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_any_history_any_position_any_live_loss_folds_to_the_final_output(
    clock: ManualClock, sender: LiveSender, data: st.DataObject
) -> None:
    """Random deltas, checkpoints, restarts (a new attempt's `reset`) and losses of the
    replay buffer, then the end; the client's position, and the moments it reads the row
    (before the join, as SSE does, or at start), joins and starts, before or after the end;
    which live messages it loses; and when the transport drains the live queue or checks
    when idle."""
    # Hypothesis seeds the global `random` alike for every example, and the in-memory layer
    # names channels with it: without this, each example's inboxes would get the previous
    # example's channel names, and whatever was still queued in those channels.
    random.seed(os.urandom(16))
    harness = Harness(clock, sender)
    try:
        worker = await harness.worker()
        steps = [*data.draw(st.lists(STEP, min_size=3, max_size=12), label="steps"), "finish"]
        # Moment i is before step i; moment len(steps) is after the end.
        # A few steps at most between the three: the windows the handoff has to close.
        row_read_at = data.draw(st.integers(0, len(steps)), label="row read at")
        join_at = min(len(steps), row_read_at + data.draw(st.integers(0, 2), label="then join"))
        start_at = min(len(steps), join_at + data.draw(st.integers(0, 2), label="then start"))
        start_with_row = data.draw(st.booleans(), label="start with the row read before")

        def lose(event: StoredEvent) -> bool:
            return data.draw(LOSE, label=f"lose live {event.seq}")

        sub = None
        row = None
        for index in range(len(steps) + 1):
            if index == row_read_at:
                row = await read_row(worker.generation_id)
                # Any seq the client may have seen; at or after `done` it would not be
                # streamed to (SSE answers 204).
                seen = [0, *(e["seq"] for e in worker.log if e["type"] != "done")]
                after = data.draw(st.sampled_from(seen), label="after")
                sub = harness.subscriber(worker.generation_id, after, drop_live=lose)
            if sub is not None and index == join_at:
                await harness.settle(worker)  # what came before reaches it by the buffer only
                await sub.join()
            if sub is not None and index == start_at:
                await sub.start(row if start_with_row else None)
            if sub is not None and index >= start_at:
                if data.draw(st.booleans(), label="drain live"):
                    await sub.deliver_live()
                if data.draw(st.booleans(), label="idle check"):
                    await sub.idle_check()
            if index == len(steps):
                break
            step = steps[index]
            if step == "delta":
                worker.delta(data.draw(TEXT, label="text"))
            elif step == "checkpoint":
                await worker.checkpoint()
            elif step == "restart":
                await worker.restart()
            elif step == "lose_buffer":
                worker.drop_replay_buffer()
            else:
                await worker.finish()
        assert sub is not None
        await sub.run_until_finished()

        await assert_folds_to_final_output(sub, worker)
        # What the cases covered (pytest --hypothesis-show-statistics).
        event(f"restarts: {['none', 'one', 'several'][min(steps.count('restart'), 2)]}")
        event(f"buffer lost: {'lose_buffer' in steps}")
        event(f"subscribed after the end: {join_at == len(steps)}")
        event(f"position: {'from 0' if sub.after == 0 else 'after a seq'}")
        event(f"live messages lost: {'none' if not sub.dropped_seqs else 'some'}")
        event(f"`done` lost live: {worker.seq in sub.dropped_seqs}")
        event(f"repaired from the buffer: {'none' if not sub.repaired else 'some'}")
    finally:
        await harness.close()
