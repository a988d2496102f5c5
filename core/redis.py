"""Redis clients of this process: one sync pool for worker threads, one async client per loop."""

from __future__ import annotations

import asyncio
import threading
import types
import weakref
from contextlib import suppress
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

_lock = threading.Lock()
_sync_client: redis.Redis | None = None
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)

# A blocking command never runs on these clients, so a read that takes this long means the
# server or the network is gone; fail and let the caller's retry or repair path take over.
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
# A pooled connection that Redis dropped (a restart, CLIENT KILL, an idle timeout) is found
# out only by the next command sent on it, which would fail although Redis is back: such a
# command is sent again on a new connection, twice at most, 50 then 100 ms later (the new
# connection can be dropped too while a fault repeats). Appends to the event log are
# idempotent (jobs.eventlog.RedisEventLog.append), so a retried one is harmless.
RETRY_ON_ERROR: list[type[Exception]] = [redis.ConnectionError]
RETRIES = 2


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=0.5, base=0.05)


def _pool_options() -> dict[str, Any]:
    return {
        "max_connections": settings.REDIS_MAX_CONNECTIONS,
        # Wait for a free connection rather than fail with "Too many connections".
        "timeout": 10,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": 30,
        "retry_on_error": RETRY_ON_ERROR,
    }


def async_retry_options() -> dict[str, Any]:
    """Connection options for redis.asyncio pools, the channel layer's included."""
    return {"retry_on_error": RETRY_ON_ERROR, "retry": AsyncRetry(_backoff(), RETRIES)}


def sync_client() -> redis.Redis:
    global _sync_client
    with _lock:
        if _sync_client is None:
            pool = redis.BlockingConnectionPool.from_url(
                settings.REDIS_URL, **_pool_options(), retry=Retry(_backoff(), RETRIES)
            )
            _sync_client = redis.Redis(connection_pool=pool)
        return _sync_client


def async_client() -> aioredis.Redis:
    """The async client for the running loop: redis.asyncio connections belong to one loop."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, **{**_pool_options(), **async_retry_options()}
        )
        client = aioredis.Redis(connection_pool=pool)
        _async_clients[loop] = client
        _close_with(loop, client)
    return client


def _close_with(loop: asyncio.AbstractEventLoop, client: aioredis.Redis) -> None:
    """Close `client`'s connections when `loop` closes, while their transports can still be
    closed on it (as channels_redis does for its layer's): a loop that ends before the process
    (asyncio.run, async_to_sync, a test's) otherwise leaves them to the garbage collector,
    which can only warn that they were not closed. The service's own loops last as long as
    their processes."""
    original = loop.close

    def close(self: asyncio.AbstractEventLoop) -> None:
        self.close = original  # type: ignore[method-assign]
        if _async_clients.get(self) is client:
            del _async_clients[self]
            with suppress(Exception):
                self.run_until_complete(client.aclose(close_connection_pool=True))
        original()

    with suppress(AttributeError):
        loop.close = types.MethodType(close, loop)  # type: ignore[method-assign]
