"""A subscriber's membership of live groups on the channel layer."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from channels.layers import get_channel_layer

from realtime.eventlog import StoredEvent
from realtime.publish import group_name


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
