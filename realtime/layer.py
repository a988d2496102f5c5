"""The distributed tier's channel layer: channels_redis's Redis pub/sub layer (pinned, 4.3.0),
whose shard connections read the pub/sub socket without a timer per message.

channels_redis reads each message with ``get_message(timeout=0.1)``, and redis-py arms an
``asyncio.timeout`` for every such read: a timer pushed onto the event loop's heap and
cancelled again for every live event a web process receives, a twelfth of a Daphne process's
profile under 50 streams (docs/design.md, "The channel layer"). Here a subscribed connection
waits for its next message with no timeout; everything else (subscribing, reconnecting and
re-subscribing after Redis dropped the connection, the retry after an error) is
channels_redis's and redis-py's own.

A channel may also be given a handler (``PubSubChannelLayer.deliver_to``): its messages are
then handed to it by the read loop itself, as they are read, instead of through the channel's
queue to a task waiting in ``receive``: one wake-up of the event loop less per live message,
which a web process pays for every event of every generation it follows (the process's live
hub, realtime/live.py, is that channel). The handler must not wait on anything slow: the
connection is not read while it runs.

One socket read often brings many messages (a worker publishes each tick's events in one
round trip). redis-py parses the first and leaves the rest in its hiredis reader; each
``get_message`` then went through the client's read machinery again (the connection checks,
the retry wrapper, the parser's read) for a reply already parsed. The replies that are
already complete in the reader are taken from it here at once, and each goes through
redis-py's own ``handle_message`` as ``get_message`` would hand it on; a read from the
socket, and whatever it meets (a dropped connection: the reconnect and re-subscribe), stays
redis-py's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels_redis.pubsub import (
    RedisPubSubChannelLayer,
    RedisPubSubLoopLayer,
    RedisSingleShardConnection,
)
from channels_redis.utils import _wrap_close
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.exceptions import ConnectionError as RedisConnectionError

logger = logging.getLogger(__name__)

# While the connection is subscribed to nothing, look again this often (channels_redis's own).
UNSUBSCRIBED_POLL_S = 0.1
# After an unexpected error in the read loop, wait this long before reading again.
ERROR_PAUSE_S = 1.0


class _ShardConnection(RedisSingleShardConnection):  # type: ignore[misc]
    async def _do_receiving(self) -> None:
        while True:
            try:
                if self._pubsub and self._pubsub.subscribed:
                    # No timeout: the read waits for the next message (or the connection's
                    # end, which redis-py's retry turns into a reconnect and re-subscribe).
                    message = await self._pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=None
                    )
                    if message is not None:
                        await self._deliver(message)
                    await self._deliver_parsed()
                else:
                    await asyncio.sleep(UNSUBSCRIBED_POLL_S)
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception:
                logger.exception("the channel layer's receiver failed; reading again shortly")
                await asyncio.sleep(ERROR_PAUSE_S)

    async def _deliver_parsed(self) -> None:
        """Deliver the replies that the last socket read left complete in the parser, as
        ``get_message(ignore_subscribe_messages=True)`` would return them, without reading
        the socket."""
        pubsub = self._pubsub
        connection = pubsub.connection if pubsub is not None else None
        parser = getattr(connection, "_parser", None)
        if (
            connection is None
            or not isinstance(parser, _AsyncHiredisParser)
            # Health-check replies are for get_message to filter out.
            or connection.health_check_interval
        ):
            return
        reader = parser._reader
        while reader is not None and self._pubsub is pubsub and parser._connected:
            reply = reader.gets()
            if reply is NOT_ENOUGH_DATA:
                return
            if isinstance(reply, RedisConnectionError):
                # What redis-py's read does with it: drop the connection; the next
                # get_message connects again and re-subscribes.
                await connection.disconnect()
                return
            if isinstance(reply, Exception):
                raise reply  # get_message fails on it too (the loop logs it and reads again)
            message = await pubsub.handle_message(reply, ignore_subscribe_messages=True)
            if message is not None:
                await self._deliver(message)

    async def _deliver(self, message: dict[str, Any]) -> None:
        """channels_redis's ``_receive_message``, with the channels that have a handler
        served by it here."""
        layer: _LoopLayer = self.channel_layer
        name = message["channel"]
        if isinstance(name, bytes):
            name = name.decode()
        # A copy: a handler may wait, and a join or leave meanwhile changes the group's set.
        members = tuple(layer.groups.get(name, ())) if name not in layer.channels else (name,)
        for channel in members:
            queue = layer.channels.get(channel)
            if queue is None:
                continue
            handler = layer.handlers.get(channel)
            if handler is None:
                queue.put_nowait(message["data"])
                continue
            try:
                pending = handler(layer.channel_layer.deserialize(message["data"]))
                if pending is not None:
                    await pending
            except Exception:
                logger.exception("the handler of %s failed", channel)


# Returns None when it has dealt with the message at once, or what remains to be awaited.
Handler = Callable[[dict[str, Any]], Awaitable[None] | None]


class _LoopLayer(RedisPubSubLoopLayer):  # type: ignore[misc]
    _shards: list[RedisSingleShardConnection]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shards = [_ShardConnection(shard.host, self) for shard in self._shards]
        self.handlers: dict[str, Handler] = {}


class PubSubChannelLayer(RedisPubSubChannelLayer):  # type: ignore[misc]
    """``channels_redis.pubsub.RedisPubSubChannelLayer`` with the read loop above."""

    def deliver_to(self, channel: str, handler: Handler) -> None:
        """Hand `channel`'s messages to `handler` from the read loop, on the running loop,
        while the channel is subscribed (a ``receive`` on it is waiting: it then gets
        nothing)."""
        self._get_layer().handlers[channel] = handler

    def _get_layer(self) -> _LoopLayer:
        loop = asyncio.get_running_loop()
        layer: _LoopLayer | None = self._layers.get(loop)
        if layer is None:
            layer = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
        return layer
