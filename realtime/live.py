"""A subscriber's membership of live groups on the channel layer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from channels.layers import get_channel_layer

from realtime.eventlog import StoredEvent
from realtime.publish import group_name

logger = logging.getLogger(__name__)
# Tasks that hold the pub/sub layer's receivers subscribed for the life of the process.
_held: list[asyncio.Task[None]] = []


def keep_live_receivers_listening() -> list[asyncio.Task[None]]:
    """Keep each shard of the Redis pub/sub layer subscribed to a channel of its own, on the
    running loop, for the life of the process.

    channels_redis's receiver reads the socket only while its connection is subscribed to
    something; otherwise it sleeps 100 ms at a time. A Daphne process with no subscriber
    left (between two streams, or on a quiet service) was asleep when the next one joined,
    so that one's first live events came up to 100 ms late: the bulk of the distributed
    tier's time to first token. A channel nobody sends to keeps it reading.
    """
    layer = get_channel_layer()
    # The pub/sub layer's shards (one per Redis host); other layers need nothing.
    shards: list[Any] | None = getattr(layer, "_shards", None)
    if layer is None or not shards or _held:
        return _held
    names: dict[int, str] = {}
    while len(names) < len(shards):
        name = f"{layer.prefix}keepalive.{uuid.uuid4().hex}"
        names.setdefault(shards.index(layer._get_shard(name)), name)
    loop = asyncio.get_running_loop()
    _held.extend(loop.create_task(_hold(layer, name)) for name in names.values())
    return _held


async def _hold(layer: Any, channel: str) -> None:
    while True:
        try:
            # Nothing is ever sent to this channel: the receive waits, subscribed, forever.
            await layer.receive(channel)
        except Exception:
            logger.warning("keeping the live receiver subscribed failed; retrying", exc_info=True)
            await asyncio.sleep(1.0)


def stored_event(message: dict[str, Any]) -> StoredEvent:
    return StoredEvent(int(message["seq"]), str(message["kind"]), str(message["data"]))


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
