"""Live delivery in a web process: the process's membership of live groups on the channel layer
(``LiveHub``), fanned out to the subscribers it holds."""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import get_channel_layer

from core.retry import Backoff
from jobs.eventlog import StoredEvent
from jobs.writer import group_name

logger = logging.getLogger(__name__)
# The worker's live message type (jobs/writer.py sends it to the group `gen.<id>`).
GENERATION_EVENT = "gen.event"
# After the layer failed a receive (Redis unreachable), wait before the next.
READ_RETRY_FIRST_S = 0.1
READ_RETRY_MAX_S = 1.0
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
    # Nothing is ever sent to these channels: each receive waits, subscribed, forever.
    _held.extend(loop.create_task(_receive_forever(layer, name)) for name in names.values())
    return _held


async def _receive_forever(
    layer: Any,
    channel: str,
    handle: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None,
) -> None:
    """Hand each message of `channel` to `handle`; while the layer fails (Redis unreachable),
    retry after READ_RETRY_FIRST_S, doubling up to READ_RETRY_MAX_S."""
    backoff = Backoff(first_s=READ_RETRY_FIRST_S, max_s=READ_RETRY_MAX_S)
    while True:
        try:
            message = await layer.receive(channel)
        except Exception:
            logger.warning("receiving on %s failed; retrying", channel, exc_info=True)
            await backoff.asleep()
            continue
        backoff.reset()
        if handle is not None:
            pending = handle(message)
            if pending is not None:
                await pending


def stored_event(message: dict[str, Any]) -> StoredEvent:
    return StoredEvent(int(message["seq"]), str(message["kind"]), str(message["data"]))


def group_of(message: dict[str, Any]) -> str | None:
    """The group a live message was sent to: the worker's `gen.event` names its generation,
    a conversation notice (`conv.*`) its conversation."""
    if message.get("type") == GENERATION_EVENT:
        return group_name(str(message["id"]))
    conversation_id = message.get("conversation_id")
    if isinstance(conversation_id, str):
        return f"conv.{conversation_id}"
    return None


# A watcher of a group: called, in arrival order, with each message sent to it; for a
# generation's group with the message already decoded (a StoredEvent), once for all watchers.
# It returns None when it has dealt with the message then and there (a live event sent on
# at once), or what remains to be awaited (the next message waits for it).
Watcher = Callable[[Any], Awaitable[None] | None]


class _Group:
    __slots__ = ("joined", "lock", "watchers")

    def __init__(self) -> None:
        self.watchers: dict[int, Watcher] = {}
        self.joined = False
        # Serialises this group's joins and leaves: a leave still on its way to Redis when a
        # new watcher comes must be followed by a fresh join, not overtaken by it.
        self.lock = asyncio.Lock()


class LiveHub:
    """The process's one channel on the layer, a member of each group that has a local
    watcher, read by one task (docs/design.md, "One group membership per process")."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.channel = ""
        self._groups: dict[str, _Group] = {}
        self._keys = itertools.count()
        self._opening: asyncio.Lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    async def _open(self) -> None:
        if self._reader is not None:
            return
        async with self._opening:
            if self._reader is None:
                self.channel = await self.layer.new_channel()
                # The distributed tier's layer hands the channel's messages to dispatch as it
                # reads them (realtime/layer.py); the receive below then only holds the
                # subscription.
                deliver_to = getattr(self.layer, "deliver_to", None)
                if deliver_to is not None:
                    deliver_to(self.channel, self.dispatch)
                # Runs for the life of the loop: the pub/sub layer unsubscribes a channel when
                # a receive on it is cancelled.
                self._reader = asyncio.get_running_loop().create_task(
                    _receive_forever(self.layer, self.channel, self.dispatch)
                )

    async def watch(self, group: str, watcher: Watcher) -> int:
        """Hand `watcher` every message of `group` from now on; return (its key for
        `unwatch`) once the process's membership is in effect, so that whatever is
        published after this returns reaches it (or is lost by the layer, as any live
        message may be). Messages may reach it before this returns."""
        key = next(self._keys)
        entry = self._groups.get(group)
        if entry is None:
            entry = self._groups[group] = _Group()
        entry.watchers[key] = watcher
        try:
            if not entry.joined:
                await self._open()
                async with entry.lock:
                    if not entry.joined:
                        await self.layer.group_add(group, self.channel)
                        entry.joined = True
        except BaseException:
            self.unwatch(group, key)
            raise
        return key

    def unwatch(self, group: str, key: int) -> None:
        entry = self._groups.get(group)
        if entry is None or entry.watchers.pop(key, None) is None or entry.watchers:
            return
        asyncio.get_running_loop().create_task(self._leave(group, entry))

    async def _leave(self, group: str, entry: _Group) -> None:
        async with entry.lock:
            if entry.watchers:
                return  # watched again meanwhile: stay
            if self._groups.get(group) is entry:
                del self._groups[group]
            if not entry.joined:
                return
            entry.joined = False
            try:
                await self.layer.group_discard(group, self.channel)
            except Exception as failure:
                # Nothing of it reaches anyone any more (no watchers); the pub/sub layer
                # drops the stale membership when it reconnects.
                logger.warning("leaving %s failed: %r", group, failure)

    def watching(self, group: str) -> int:
        """How many local watchers `group` has (for tests and metrics)."""
        entry = self._groups.get(group)
        return len(entry.watchers) if entry is not None else 0

    def dispatch(self, message: dict[str, Any]) -> Awaitable[None] | None:
        """Hand `message` to its group's watchers, in the order they came; None when each
        has dealt with it at once (no coroutine per watcher on the hot path), otherwise what
        remains to be awaited before the next message."""
        group = group_of(message)
        entry = self._groups.get(group) if group is not None else None
        if entry is None or not entry.watchers:
            return None
        payload: Any = stored_event(message) if message.get("type") == GENERATION_EVENT else message
        watchers = list(entry.watchers.values())
        for index, watcher in enumerate(watchers):
            try:
                pending = watcher(payload)
            except Exception:
                # One watcher's failure is its own: the others still get the message.
                logger.exception("a live watcher of %s failed", group)
                continue
            if pending is not None:
                return self._dispatch_rest(group, payload, pending, watchers[index + 1 :])
        return None

    @staticmethod
    async def _dispatch_rest(
        group: str | None, payload: Any, pending: Awaitable[None], watchers: list[Watcher]
    ) -> None:
        try:
            await pending
        except Exception:
            logger.exception("a live watcher of %s failed", group)
        for watcher in watchers:
            try:
                result = watcher(payload)
                if result is not None:
                    await result
            except Exception:
                logger.exception("a live watcher of %s failed", group)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LiveHub] = weakref.WeakKeyDictionary()


def live_hub() -> LiveHub:
    """The running loop's hub (Daphne has one loop; each in-process test has its own, and
    the in-memory layer may only be used from the loop its receivers wait on)."""
    loop = asyncio.get_running_loop()
    layer = get_channel_layer()
    hub = _hubs.get(loop)
    if hub is None or hub.layer is not layer:
        hub = _hubs[loop] = LiveHub(layer)
    return hub
