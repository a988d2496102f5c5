"""The live layer's receiver in a web process with no subscriber (realtime.live).

channels_redis's pub/sub receiver reads its socket only while its connection is subscribed to
something, and otherwise sleeps 100 ms at a time: the first subscriber after a quiet spell
got its first live events up to 100 ms late. The web process keeps a channel of its own
subscribed, so the receiver never drops into that sleep.
"""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import get_channel_layer
from django.conf import settings

from realtime import live


async def test_with_no_subscriber_the_pubsub_receiver_stays_subscribed_and_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(live, "_held", [])
    layer = get_channel_layer()
    held = live.keep_live_receivers_listening()
    try:
        if not settings.DISTRIBUTED:
            # The in-memory layer has no receiver loop: nothing to hold.
            assert held == []
            return
        shards = layer._shards  # type: ignore[union-attr]
        assert len(held) == len(shards)
        for _ in range(200):
            if all(shard._pubsub is not None and shard._pubsub.subscribed for shard in shards):
                break
            await asyncio.sleep(0.05)
        # Subscribed with no generation group joined and no consumer channel open: the
        # receiver task waits on the socket (get_message), not in its 100 ms sleep.
        assert all(shard._pubsub.subscribed for shard in shards)
        assert all(not task.done() for task in held)
        assert not any(name.startswith(f"{layer.prefix}__group__") for name in layer.groups)  # type: ignore[union-attr]
    finally:
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        if settings.DISTRIBUTED:
            await layer.flush()  # type: ignore[union-attr]


async def test_holding_is_idempotent_within_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "_held", [])
    first = list(live.keep_live_receivers_listening())
    try:
        assert live.keep_live_receivers_listening() == first
    finally:
        for task in first:
            task.cancel()
        await asyncio.gather(*first, return_exceptions=True)
        if settings.DISTRIBUTED:
            layer = get_channel_layer()
            await layer.flush()  # type: ignore[union-attr]
