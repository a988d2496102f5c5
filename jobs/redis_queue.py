"""The distributed tier's queue: Huey's Redis queue, with a few of a worker's idle threads
asking Redis for a task at a time instead of all of them.

A worker process runs one Huey thread per generation it can hold (HUEY_WORKERS), and Huey
has every idle one wait in a BRPOP of its own. A worker of 260 threads with nothing to do
spent 14 CPU-ms a second on it, and Redis 2.4 more, for BRPOPs that time out unanswered
(bench/results/experiments/gated_dequeue_2026-12-06). Here at most DEQUEUE_POLLERS of a
process's threads are in a BRPOP; the others wait on a semaphore in the process, which costs
nothing, and the one that takes a task lets the next in at once.
"""

from __future__ import annotations

import threading
from typing import Any

from huey import RedisHuey
from huey.storage import RedisStorage

# How many of a process's idle threads ask Redis at once. One would do for the rate of tasks
# a process takes; the second keeps the queue read while the first reconnects.
DEQUEUE_POLLERS = 2


class GatedRedisStorage(RedisStorage):  # type: ignore[misc]
    """RedisStorage whose dequeue lets DEQUEUE_POLLERS threads at a time into the BRPOP.

    A thread that finds no place waits for one up to `read_timeout`, as it would have waited
    in the BRPOP, and then answers nothing: Huey's worker loop sees its stop flag as often as
    before."""

    def __init__(self, *args: Any, pollers: int = DEQUEUE_POLLERS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pollers = threading.BoundedSemaphore(pollers)

    def dequeue(self) -> bytes | None:
        if not self.blocking:
            data: bytes | None = super().dequeue()
            return data
        if not self._pollers.acquire(timeout=self.read_timeout):
            return None
        try:
            data = super().dequeue()
            return data
        finally:
            self._pollers.release()


class GatedRedisHuey(RedisHuey):  # type: ignore[misc]
    storage_class = GatedRedisStorage
