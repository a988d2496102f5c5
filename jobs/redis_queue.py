"""The distributed tier's queue: Huey's Redis queue, with a few of a worker's idle threads
asking Redis for a task at a time instead of all of them.

A worker process runs one Huey thread per generation it can hold (HUEY_WORKERS), and Huey
has every idle one wait in a BRPOP of its own. A worker of 260 threads with nothing to do
spent 14 CPU-ms a second on it, and Redis 2.4 more, for BRPOPs that time out unanswered
(bench/results/experiments/gated_dequeue_2026-12-06). Here at most DEQUEUE_POLLERS of a
process's threads are in a BRPOP; the others wait on a semaphore in the process, which costs
nothing, and the one that takes a task lets the next in at once.

While Redis is unreachable the threads in the BRPOP ask again every UNREACHABLE_RETRY_S, and
the others keep waiting for their turn. Huey's own worker loop would have each thread that
met the error sleep, a little longer after every error (up to 10 s): after an outage of
a minute, a task could wait 10 s for a thread to wake although the process had idle ones.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from huey import RedisHuey
from huey.storage import RedisStorage

logger = logging.getLogger(__name__)

# How many of a process's idle threads ask Redis at once. One would do for the rate of tasks
# a process takes; the second keeps the queue read while the first reconnects.
DEQUEUE_POLLERS = 2
# While Redis cannot be reached, a thread in the BRPOP asks again this often.
UNREACHABLE_RETRY_S = 0.5


class GatedRedisStorage(RedisStorage):  # type: ignore[misc]
    """RedisStorage whose dequeue lets DEQUEUE_POLLERS threads at a time into the BRPOP.

    A thread that finds no place waits for one up to `read_timeout`, as it would have waited
    in the BRPOP, and then answers nothing: Huey's worker loop sees its stop flag as often as
    before."""

    def __init__(self, *args: Any, pollers: int = DEQUEUE_POLLERS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pollers = threading.BoundedSemaphore(pollers)
        self._unreachable = False  # the last BRPOP of this process met a connection error

    def dequeue(self) -> bytes | None:
        if not self.blocking:
            data: bytes | None = super().dequeue()
            return data
        if not self._pollers.acquire(timeout=self.read_timeout):
            return None
        try:
            data = super().dequeue()
        except redis.ConnectionError as error:
            if not self._unreachable:
                self._unreachable = True
                logger.warning("queue: Redis unreachable (%s); asking again", error)
            # In its turn, so that the threads waiting for one keep waiting.
            time.sleep(UNREACHABLE_RETRY_S)
            return None
        finally:
            self._pollers.release()
        if self._unreachable:
            self._unreachable = False
            logger.warning("queue: Redis reachable again")
        return data


class GatedRedisHuey(RedisHuey):  # type: ignore[misc]
    storage_class = GatedRedisStorage

    def is_revoked(self, *args: Any, **kwargs: Any) -> bool:
        """No: nothing revokes a task here (a generation is stopped by its cancel,
        jobs.cancel), so a task starts without Huey's look in Redis for a revocation, a round
        trip on the way to every generation's first token."""
        return False

    def revoke(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("tasks are not revoked here: cancel the generation")

    revoke_all = revoke_by_id = revoke
