"""A WebSocket connection's messages reach their handlers without a database thread hop each.

channels runs ``close_old_connections`` on a thread before every handler; the consumer skips
it for every message, the client's frames and live events alike (its database work runs on
``realtime.db``'s threads, which keep and check their own connections). In process, on this
run's tier: the real database, buffer and channel layer; the hop is counted by wrapping the
real function.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels import consumer as channels_consumer
from channels.testing import WebsocketCommunicator

from realtime.consumers import StreamConsumer
from tests.harness import make_token
from tests.realtime.support import Worker, tier_sender
from tests.wire import decoded_frame

pytestmark = pytest.mark.django_db(transaction=True)


async def test_frames_and_live_events_reach_their_handlers_without_a_database_hop_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await tier_sender(monkeypatch)
    worker = await Worker.start()
    hops: list[dict[str, Any]] = []
    real = channels_consumer.aclose_old_connections

    async def counted() -> None:
        hops.append({})
        await real()

    monkeypatch.setattr(channels_consumer, "aclose_old_connections", counted)
    communicator = WebsocketCommunicator(StreamConsumer.as_asgi(), "/ws/v1")
    connected, _ = await communicator.connect()
    assert connected
    try:
        await communicator.send_to(
            text_data=json.dumps({"type": "auth", "token": make_token("alice")})
        )
        assert decoded_frame(await communicator.receive_from(timeout=30))["type"] == "auth.ok"
        subscribe = {"type": "subscribe", "id": worker.generation_id}
        await communicator.send_to(text_data=json.dumps(subscribe))
        received: list[dict[str, Any]] = []
        while not any(frame.get("type") == "snapshot" for frame in received):
            received.append(decoded_frame(await communicator.receive_from(timeout=30)))
        hops_before_live = len(hops)

        for index in range(20):
            worker.delta(f"t{index} ")
        text = ""
        while text != worker.text:
            frame = decoded_frame(await communicator.receive_from(timeout=30))
            if frame["type"] == "delta":
                text += frame["text"]

        assert text == "".join(f"t{index} " for index in range(20))
        # Neither the client's frames (connect, auth, subscribe) nor live events.
        assert hops_before_live == 0
        assert hops == []
    finally:
        await communicator.disconnect()
