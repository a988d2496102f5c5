"""The one way an event leaves the service: the replay buffer first, then the live group.

Every caller (the worker, and the cancel service for a generation that never started) goes
through ``publish_event``. The buffer write is synchronous and fenced by attempt, so the log
is the truth; the live send is fire-and-forget, ordered per generation, and may be lost
(a channel layer drops by design), which subscribers repair from the buffer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import zlib
from concurrent.futures import Future
from functools import cache
from typing import Any

from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer

from project import metrics
from realtime.eventlog import event_log
from realtime.events import dumps

logger = logging.getLogger(__name__)

# Live sends run on this many ordered lanes; a generation always uses the same lane, so
# its events reach the layer in seq order while other generations go on in parallel.
_LANES = 8


def group_name(generation_id: str) -> str:
    return f"gen.{generation_id}"


class LiveSender:
    """Forwards live events to the channel layer from any thread, on one long-lived loop.

    A loop per call (``async_to_sync`` in a worker thread) would give channels_redis a new
    connection pool per message (channels_redis issues 125 and 266); one loop keeps one.
    In the embedded default the loop is the web server's own, because the in-memory layer
    may only be touched from the loop its subscribers wait on.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: list[asyncio.Queue[tuple[str, dict[str, Any]]]] = []
        self._batches: list[list[tuple[str, dict[str, Any]]]] = []
        self._batch_sender: asyncio.Task[None] | None = None

    async def bind_running_loop(self) -> None:
        """Deliver on the calling loop from now on (the embedded web server's)."""
        with self._lock:
            if self._loop is not None:
                return
            self._loop = asyncio.get_running_loop()
        await self._start_lanes()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop | None:
        with self._lock:
            if self._loop is not None:
                return self._loop
            from django.conf import settings

            if not settings.DISTRIBUTED:
                # The in-memory layer lives on the web loop; until the web server has bound
                # it there is nobody to deliver to. The buffer has the event regardless.
                return None
            loop = asyncio.new_event_loop()
            started: Future[None] = Future()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.run_until_complete(self._start_lanes())
                started.set_result(None)
                loop.run_forever()

            threading.Thread(target=run, name="live-sender", daemon=True).start()
            started.result()
            self._loop = loop
            return loop

    async def _start_lanes(self) -> None:
        self._queues = [asyncio.Queue() for _ in range(_LANES)]
        for queue in self._queues:
            asyncio.get_running_loop().create_task(self._drain(queue))

    async def _drain(self, queue: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
        layer = get_channel_layer()
        assert layer is not None
        while True:
            group, message = await queue.get()
            try:
                await layer.group_send(group, message)
                metrics.LIVE_SENDS.labels(result="sent").inc()
            except Exception:
                # Lost live messages are repaired from the buffer by every subscriber.
                metrics.LIVE_SENDS.labels(result="failed").inc()
                logger.warning("live send to %s failed", group, exc_info=True)

    def send(self, group: str, message: dict[str, Any]) -> None:
        loop = self._ensure_loop()
        if loop is None or not self._queues:
            return
        lane = self._queues[zlib.crc32(group.encode()) % _LANES]
        loop.call_soon_threadsafe(lane.put_nowait, (group, message))

    def send_many(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """`send` for a batch (the worker's per-tick writer, jobs.engine): one hop to the
        sending loop for all of them, none when called on that loop.

        On the sending loop itself with the Redis pub/sub layer, the batch goes out as one
        pipeline of PUBLISHes (what the layer's group_send sends, one round trip each, under
        one lock for the whole process); batches keep their order, so every generation's
        events reach the layer in seq order."""
        loop = self._ensure_loop()
        if loop is None or not self._queues:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop:
            loop.call_soon_threadsafe(self._enqueue, messages)
        elif isinstance(get_channel_layer(), RedisPubSubChannelLayer):
            self._batches.append(messages)
            if self._batch_sender is None or self._batch_sender.done():
                self._batch_sender = loop.create_task(self._send_batches())
        else:
            self._enqueue(messages)

    def _enqueue(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        for group, message in messages:
            self._queues[zlib.crc32(group.encode()) % _LANES].put_nowait((group, message))

    async def _send_batches(self) -> None:
        while self._batches:
            messages = [message for batch in self._batches for message in batch]
            self._batches.clear()
            try:
                await _publish_pipelined(messages)
                metrics.LIVE_SENDS.labels(result="sent").inc(len(messages))
            except Exception:
                # Lost live messages are repaired from the buffer by every subscriber.
                metrics.LIVE_SENDS.labels(result="failed").inc(len(messages))
                logger.warning("live send of %d events failed", len(messages), exc_info=True)


async def _publish_pipelined(messages: list[tuple[str, dict[str, Any]]]) -> None:
    """What RedisPubSubChannelLayer.group_send does for each message (the same channel name,
    serializer and shard: channels-redis is pinned to 4.3.0), as one pipeline per shard."""
    layer = get_channel_layer()
    assert isinstance(layer, RedisPubSubChannelLayer)
    loop_layer = layer._get_layer()
    by_shard: dict[Any, list[tuple[str, bytes]]] = {}
    for group, message in messages:
        channel = loop_layer._get_group_channel_name(group)
        by_shard.setdefault(loop_layer._get_shard(channel), []).append(
            (channel, layer.serialize(message))
        )
    for shard, publishes in by_shard.items():
        # The shard's lock, as its own publish takes it: its connection is set up under it.
        async with shard._lock:
            shard._ensure_redis()
            pipe = shard._redis.pipeline(transaction=False)
            for channel, payload in publishes:
                pipe.publish(channel, payload)
            await pipe.execute()


@cache
def live_sender() -> LiveSender:
    return LiveSender()


def publish_event(generation_id: str, attempt: int, event: dict[str, Any]) -> bool:
    """Append `event` to the generation's log and send it live.

    Returns False, and sends nothing, when `attempt` has been superseded or the seq was
    already written: the caller has lost ownership of the generation and must stop.
    """
    data = dumps(event)
    kind, seq = event["type"], event["seq"]
    if not event_log().append(generation_id, attempt, seq, kind, data):
        return False
    metrics.EVENTS_PUBLISHED.labels(type=kind).inc()
    live_sender().send(
        group_name(generation_id),
        {
            "type": "gen.event",
            "id": generation_id,
            "seq": seq,
            "kind": kind,
            "data": data,
        },
    )
    return True
