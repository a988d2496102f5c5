"""One live-group membership per generation per process, however many local subscribers.

Three WebSocket connections of one process follow one generation: the channel layer holds one
member of its group (the process's ``LiveHub`` channel), every connection still gets every
event, and the membership goes with the last subscriber. In process, on this run's tier: the
real database, buffer and channel layer (in memory, or Redis pub/sub), nothing mocked.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from jobs.writer import group_name
from realtime.consumers import StreamConsumer
from realtime.live import live_hub
from tests.harness import make_token
from tests.realtime.support import Worker, tier_sender

pytestmark = pytest.mark.django_db(transaction=True)

WATCHERS = 3
# Far above a local round trip: reaching it means the leave never happened, not slowness.
LEAVE_TIMEOUT_S = 10.0


def layer_members(group: str) -> set[str]:
    """The channels of this process that the layer holds in `group`."""
    layer: Any = get_channel_layer()
    if hasattr(layer, "_get_layer"):  # channels_redis pub/sub: one proxy per event loop
        loop_layer = layer._get_layer()
        return set(loop_layer.groups.get(loop_layer._get_group_channel_name(group), set()))
    return set(layer.groups.get(group, {}))


async def _connect(username: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(StreamConsumer.as_asgi(), "/ws/v1")
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_to(
        text_data=json.dumps({"type": "auth", "token": make_token(username)})
    )
    assert json.loads(await communicator.receive_from(timeout=30))["type"] == "auth.ok"
    return communicator


async def _frames_until(communicator: WebsocketCommunicator, done: Any) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while not frames or not done(frames[-1]):
        frames.append(json.loads(await communicator.receive_from(timeout=30)))
    return frames


async def test_local_subscribers_of_a_generation_share_one_group_membership(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await tier_sender(monkeypatch)
    worker = await Worker.start()
    group = group_name(worker.generation_id)
    communicators = [await _connect("alice") for _ in range(WATCHERS)]
    try:
        for communicator in communicators:
            await communicator.send_to(
                text_data=json.dumps({"type": "subscribe", "id": worker.generation_id})
            )
            await _frames_until(communicator, lambda frame: frame["type"] == "snapshot")

        assert layer_members(group) == {live_hub().channel}
        assert live_hub().watching(group) == WATCHERS

        for index in range(20):
            worker.delta(f"t{index} ")
        await worker.finish()
        for communicator in communicators:
            frames = await _frames_until(communicator, lambda frame: frame["type"] == "done")
            text = "".join(frame["text"] for frame in frames if frame["type"] == "delta")
            assert text == worker.text
            assert [frame["seq"] for frame in frames] == list(range(1, worker.seq + 1))

        # `done` ended every subscription: the process leaves the group (in a task of the
        # hub's; the layer's state has no event to wait on, so it is polled).
        async def left() -> None:
            while layer_members(group) or live_hub().watching(group):  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        await asyncio.wait_for(left(), LEAVE_TIMEOUT_S)
    finally:
        for communicator in communicators:
            await communicator.disconnect()


async def test_the_membership_stays_while_one_local_subscriber_remains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await tier_sender(monkeypatch)
    worker = await Worker.start()
    group = group_name(worker.generation_id)
    staying, leaving = await _connect("alice"), await _connect("alice")
    try:
        for communicator in (staying, leaving):
            await communicator.send_to(
                text_data=json.dumps({"type": "subscribe", "id": worker.generation_id})
            )
            await _frames_until(communicator, lambda frame: frame["type"] == "snapshot")
        await leaving.send_to(
            text_data=json.dumps({"type": "unsubscribe", "id": worker.generation_id})
        )
        await _frames_until(leaving, lambda frame: frame["type"] == "unsubscribed")

        worker.delta("after ")
        worker.delta("the leave")
        frames = await _frames_until(staying, lambda frame: frame.get("seq") == worker.seq)

        assert "".join(frame["text"] for frame in frames) == "after the leave"
        assert layer_members(group) == {live_hub().channel}
        assert live_hub().watching(group) == 1
    finally:
        await staying.disconnect()
        await leaving.disconnect()
