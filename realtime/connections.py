"""Open WebSocket connections and SSE streams per user, for MAX_CONNECTIONS_PER_USER (close
code 4429) and MAX_SSE_STREAMS_PER_USER (PROTOCOL §8), each counted apart.

Distributed: a Redis sorted set per user, scored by when each entry expires, so that the
entries of a Daphne process that crashed (and never ran its disconnect handlers) stop
counting after CONNECTION_TTL_S. Each live stream refreshes its entry well before that, and
a process's WebSocket connections have theirs refreshed together (realtime.upkeep).
`remove_now` is synchronous because a stream that never started is released from Django's
response.close(), in a thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from functools import cache

from django.conf import settings

from core.redis import async_client, sync_client

CONNECTION_TTL_S = 90
REFRESH_INTERVAL_S = 30
# Entries refreshed per pipelined round trip (refresh_many).
REFRESH_PIPELINE_MAX = 1000

_ADD_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisConnectionRegistry:
    def __init__(self, prefix: str = "llm:conns") -> None:
        self._prefix = prefix

    def _key(self, user_id: int) -> str:
        return f"{self._prefix}:{user_id}"

    async def add(self, user_id: int, connection_id: str, limit: int) -> bool:
        now = time.time()
        script = async_client().register_script(_ADD_SCRIPT)
        added = await script(
            keys=[self._key(user_id)],
            args=[now, now + CONNECTION_TTL_S, limit, connection_id, CONNECTION_TTL_S],
        )
        return bool(added)

    async def refresh(self, user_id: int, connection_id: str) -> None:
        await async_client().zadd(
            self._key(user_id), {connection_id: time.time() + CONNECTION_TTL_S}, xx=True
        )

    async def refresh_many(self, entries: Sequence[tuple[int, str]]) -> None:
        """`refresh` for each (user id, connection id), in pipelined round trips."""
        expires = time.time() + CONNECTION_TTL_S
        for start in range(0, len(entries), REFRESH_PIPELINE_MAX):
            async with async_client().pipeline(transaction=False) as pipe:
                for user_id, connection_id in entries[start : start + REFRESH_PIPELINE_MAX]:
                    pipe.zadd(self._key(user_id), {connection_id: expires}, xx=True)
                await pipe.execute()

    async def remove(self, user_id: int, connection_id: str) -> None:
        await async_client().zrem(self._key(user_id), connection_id)

    def remove_now(self, user_id: int, connection_id: str) -> None:
        sync_client().zrem(self._key(user_id), connection_id)


class MemoryConnectionRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_user: dict[int, set[str]] = {}

    async def add(self, user_id: int, connection_id: str, limit: int) -> bool:
        with self._lock:
            current = self._by_user.setdefault(user_id, set())
            if len(current) >= limit:
                return False
            current.add(connection_id)
            return True

    async def refresh(self, user_id: int, connection_id: str) -> None:
        return None

    async def refresh_many(self, entries: Sequence[tuple[int, str]]) -> None:
        return None

    async def remove(self, user_id: int, connection_id: str) -> None:
        self.remove_now(user_id, connection_id)

    def remove_now(self, user_id: int, connection_id: str) -> None:
        with self._lock:
            current = self._by_user.get(user_id)
            if current is not None:
                current.discard(connection_id)
                if not current:
                    del self._by_user[user_id]


ConnectionRegistry = RedisConnectionRegistry | MemoryConnectionRegistry


@cache
def connection_registry() -> ConnectionRegistry:
    return RedisConnectionRegistry() if settings.DISTRIBUTED else MemoryConnectionRegistry()


@cache
def stream_registry() -> ConnectionRegistry:
    if settings.DISTRIBUTED:
        return RedisConnectionRegistry("llm:sse-streams")
    return MemoryConnectionRegistry()
