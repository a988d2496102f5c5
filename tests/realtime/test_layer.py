"""The distributed tier's channel layer (realtime.layer): channels_redis's pub/sub layer whose
receiver waits for each message with no timer of its own.

In process, against the real Redis of this run; the embedded default has the in-memory layer
and nothing of this to test.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from channels.layers import get_channel_layer
from django.conf import settings

from realtime.layer import PubSubChannelLayer

pytestmark = pytest.mark.skipif(
    not settings.DISTRIBUTED, reason="the embedded default has the in-memory layer"
)


@pytest.fixture
async def layer() -> AsyncIterator[Any]:
    instance = get_channel_layer()
    yield instance
    await instance.flush()


async def joined_channel(layer: Any) -> tuple[str, str]:
    group = f"test-layer-{uuid.uuid4().hex}"
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    return group, channel


async def test_the_distributed_tier_uses_it(layer: Any) -> None:
    assert isinstance(layer, PubSubChannelLayer)


async def test_group_messages_arrive_in_order_with_no_timer_armed_per_message(
    layer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    group, channel = await joined_channel(layer)
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    real_call_at = loop.call_at

    def counting_call_at(when: float, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        timers.append(when)
        return real_call_at(when, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    count = 300
    # Sent from another connection, as a worker's script publishes.
    for n in range(count):
        await layer.group_send(group, {"type": "gen.event", "n": n})
    received = [(await layer.receive(channel))["n"] for _ in range(count)]

    assert received == list(range(count))
    # channels_redis's own receiver arms a timeout for every read: at least one per message.
    assert len(timers) < count // 10


async def test_after_redis_drops_the_connection_it_resubscribes_and_delivers(
    layer: Any,
) -> None:
    group, channel = await joined_channel(layer)
    await layer.group_send(group, {"type": "gen.event", "n": 0})
    assert (await asyncio.wait_for(layer.receive(channel), 5))["n"] == 0

    admin = redis.Redis.from_url(settings.REDIS_URL)
    try:
        killed = admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub", "SKIPME", "yes")  # type: ignore[no-untyped-call]
        assert int(killed) >= 1
    finally:
        admin.close()

    # Messages published while it reconnects are lost (pub/sub keeps nothing; the replay
    # buffer repairs that); once it has re-subscribed, they arrive again. One receive waits
    # throughout: the pub/sub layer unsubscribes a channel whose receive is cancelled.
    receiving = asyncio.ensure_future(layer.receive(channel))
    sent = 0
    async with asyncio.timeout(10):
        while not receiving.done():
            sent += 1
            await layer.group_send(group, {"type": "gen.event", "n": sent})
            await asyncio.wait({receiving}, timeout=0.2)

    assert 1 <= receiving.result()["n"] <= sent


async def test_a_channel_with_a_handler_gets_its_messages_from_the_read_loop_in_order(
    layer: Any,
) -> None:
    group, channel = await joined_channel(layer)
    handled: list[int] = []
    tasks: set[asyncio.Task[Any] | None] = set()
    all_in = asyncio.Event()
    count = 200

    async def handler(message: dict[str, Any]) -> None:
        handled.append(message["n"])
        tasks.add(asyncio.current_task())
        if len(handled) == count:
            all_in.set()

    layer.deliver_to(channel, handler)
    # The receive holds the subscription; with a handler it is handed nothing.
    holding = asyncio.ensure_future(layer.receive(channel))
    try:
        for n in range(count):
            await layer.group_send(group, {"type": "gen.event", "n": n})
        await asyncio.wait_for(all_in.wait(), 10)
        assert handled == list(range(count))
        assert not holding.done()
        # Every message was handled by the shard's read loop itself, not by a task of ours.
        assert len(tasks) == 1 and holding not in tasks
        (reader,) = tasks
        assert reader is not None and "_do_receiving" in repr(reader.get_coro())
    finally:
        holding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holding


async def test_a_failing_handler_does_not_stop_the_read_loop(layer: Any) -> None:
    group, channel = await joined_channel(layer)
    handled: list[int] = []
    both = asyncio.Event()

    async def handler(message: dict[str, Any]) -> None:
        handled.append(message["n"])
        if len(handled) == 2:
            both.set()
        if message["n"] == 0:
            raise RuntimeError("this one fails")

    layer.deliver_to(channel, handler)
    holding = asyncio.ensure_future(layer.receive(channel))
    try:
        await layer.group_send(group, {"type": "gen.event", "n": 0})
        await layer.group_send(group, {"type": "gen.event", "n": 1})
        await asyncio.wait_for(both.wait(), 10)
        assert handled == [0, 1]
    finally:
        holding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holding


async def test_messages_that_arrive_in_one_read_are_handed_on_without_a_read_each(
    layer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker publishes a tick's events in one round trip: they reach the web process in
    one socket read, and the read loop hands each on from the parser at once rather than
    entering redis-py's read (get_message) once per message."""
    group, channel = await joined_channel(layer)
    handled: list[int] = []
    subscribed = asyncio.Event()
    all_in = asyncio.Event()
    count = 200

    def handler(message: dict[str, Any]) -> None:  # dealt with at once: returns None
        if message["n"] < 0:
            subscribed.set()
            return
        handled.append(message["n"])
        if len(handled) == count:
            all_in.set()

    layer.deliver_to(channel, handler)
    holding = asyncio.ensure_future(layer.receive(channel))
    try:
        await layer.group_send(group, {"type": "gen.event", "n": -1})
        await asyncio.wait_for(subscribed.wait(), 10)
        loop_layer = layer._get_layer()
        pubsub = loop_layer._get_shard(channel)._pubsub
        reads = 0
        get_message = pubsub.get_message

        async def counting_get_message(*args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            reads += 1
            return await get_message(*args, **kwargs)

        monkeypatch.setattr(pubsub, "get_message", counting_get_message)
        # From another connection, in one round trip, as a worker's tick publishes.
        publisher = redis.Redis.from_url(settings.REDIS_URL)
        try:
            pipe = publisher.pipeline(transaction=False)
            name = loop_layer._get_group_channel_name(group)
            for n in range(count):
                pipe.publish(name, layer.serialize({"type": "gen.event", "n": n}))
            pipe.execute()
        finally:
            publisher.close()
        await asyncio.wait_for(all_in.wait(), 10)
        assert handled == list(range(count))
        # The read already waiting when they were sent, plus one per socket read after it
        # (about 64 KiB each); without taking parsed replies at once, one per message.
        assert reads < count // 4
    finally:
        holding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holding
