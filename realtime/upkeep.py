"""What a web process does for all its authenticated WebSocket connections at once: the account
re-check (the connections of a user deactivated or deleted close within
ACCOUNT_RECHECK_INTERVAL_S) and the refresh of their entries in the per-user connection
registry (realtime.connections).

One timer per duty and per process, one database statement per ACCOUNT_RECHECK_INTERVAL_S for
up to ACCOUNT_CHECK_CHUNK users, one pipelined Redis round trip per REFRESH_INTERVAL_S, where
every connection had two timers and a statement of its own every interval: a process holding
5,000 idle connections spent a third of a core on their account checks (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass

from django.conf import settings

from api.auth import active_user_ids
from core.errors import UNAVAILABLE_ERRORS
from realtime.connections import REFRESH_INTERVAL_S, connection_registry
from realtime.db import read

logger = logging.getLogger(__name__)

# Users per statement of the account check (the ids are its parameters).
ACCOUNT_CHECK_CHUNK = 500


@dataclass(frozen=True, slots=True)
class _Connection:
    user_id: int
    connection_id: str
    # Called once, when the account is found gone or inactive: the connection closes itself.
    on_deactivated: Callable[[], Coroutine[None, None, None]]


class ConnectionUpkeep:
    """The running loop's authenticated WebSocket connections, checked and refreshed together.
    Its timers run only while it holds a connection."""

    def __init__(self) -> None:
        self._connections: dict[int, _Connection] = {}
        self._keys = itertools.count()
        self._timers: list[asyncio.Task[None]] = []
        # The closes it started, held until they end.
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._connections)

    def add(
        self,
        user_id: int,
        connection_id: str,
        on_deactivated: Callable[[], Coroutine[None, None, None]],
    ) -> int:
        """Take a connection into the upkeep; return its key for `discard`."""
        key = next(self._keys)
        self._connections[key] = _Connection(user_id, connection_id, on_deactivated)
        if not self._timers:
            loop = asyncio.get_running_loop()
            self._timers = [
                loop.create_task(self._every(settings.ACCOUNT_RECHECK_INTERVAL_S, self.check)),
                loop.create_task(self._every(REFRESH_INTERVAL_S, self.refresh)),
            ]
        return key

    def discard(self, key: int) -> None:
        self._connections.pop(key, None)
        self._stop_if_idle()

    def _stop_if_idle(self) -> None:
        if not self._connections:
            for timer in self._timers:
                timer.cancel()
            self._timers = []

    async def _every(self, interval_s: float, duty: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await duty()
            except UNAVAILABLE_ERRORS as failure:
                logger.warning("connection upkeep deferred: %r", failure)
            except Exception:
                # The next interval tries again; one failure must not end the upkeep of
                # every connection of the process.
                logger.exception("connection upkeep failed")

    async def check(self) -> None:
        """Close the connections whose user is no longer active (or no longer exists)."""
        held = list(self._connections.items())
        user_ids = sorted({connection.user_id for _, connection in held})
        active: set[int] = set()
        for start in range(0, len(user_ids), ACCOUNT_CHECK_CHUNK):
            active |= await read(active_user_ids, user_ids[start : start + ACCOUNT_CHECK_CHUNK])
        loop = asyncio.get_running_loop()
        for key, connection in held:
            if connection.user_id in active or self._connections.get(key) is not connection:
                continue
            del self._connections[key]
            task = loop.create_task(connection.on_deactivated())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        self._stop_if_idle()

    async def refresh(self) -> None:
        """Keep each connection's registry entry from expiring (a crashed process's entries do
        expire, after CONNECTION_TTL_S)."""
        await connection_registry().refresh_many(
            [(c.user_id, c.connection_id) for c in self._connections.values()]
        )


_upkeeps: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ConnectionUpkeep] = (
    weakref.WeakKeyDictionary()
)


def connection_upkeep() -> ConnectionUpkeep:
    """The running loop's upkeep (Daphne has one loop; each in-process test has its own)."""
    loop = asyncio.get_running_loop()
    upkeep = _upkeeps.get(loop)
    if upkeep is None:
        upkeep = _upkeeps[loop] = ConnectionUpkeep()
    return upkeep
