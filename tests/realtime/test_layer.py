"""The distributed tier's channel layer (realtime.layer): channels_redis's pub/sub layer whose
receiver waits for each message with no timer of its own.

In process, against the real Redis of this run; the embedded default has the in-memory layer
and nothing of this to test.
"""

from __future__ import annotations

import asyncio
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
