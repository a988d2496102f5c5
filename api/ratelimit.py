"""Per-user rate limit on creating generations: a fixed one-minute window.

Atomic in Redis (shared by every web process) in the distributed mode, in this process in the
embedded default. A refused request does not count toward the limit (PROTOCOL §2).
"""

from __future__ import annotations

import threading
import time
from functools import cache

from django.conf import settings

from core.redis import sync_client

WINDOW_S = 60

# Count only below ARGV[1], so refusals never extend the wait; return the count before. The
# key is the window's own, so its expiry only frees memory: the wait is what is left of it.
_COUNT_SCRIPT = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used < tonumber(ARGV[1]) and redis.call('INCR', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return used
"""


class RateLimiter:
    """A count per key and window; the backends differ only in where the counts live."""

    def take(self, key: str, limit: int) -> int | None:
        """Count one request; None if allowed, else the whole seconds until the window ends."""
        return self._wait(key, limit, count_below=limit)

    # `take` counts before the work is done, which suits creating generations. Password
    # sign-in counts failures only, and must refuse before it checks the password: otherwise,
    # once over the limit, a right guess (200) would still be told apart from the wrong ones.

    def retry_after_if_blocked(self, key: str, limit: int) -> int | None:
        """Seconds until `key`'s window ends when it already counted `limit`, else None."""
        return self._wait(key, limit, count_below=0)

    def count_failure(self, key: str) -> None:
        """Count one failure toward `key` (the limit is enforced by retry_after_if_blocked)."""
        self._wait(key, 2**31, count_below=2**31)

    def _wait(self, key: str, limit: int, *, count_below: int) -> int | None:
        now = time.time()
        used = self._count(key, int(now // WINDOW_S), count_below)
        if used < limit:
            return None
        # Retry-After's whole seconds, at least one.
        return max(1, int((int(now // WINDOW_S) + 1) * WINDOW_S - now + 0.999))

    def _count(self, key: str, window: int, below: int) -> int:
        """`key`'s count in `window`, counting one more if that is below `below`."""
        raise NotImplementedError


class RedisRateLimiter(RateLimiter):
    def __init__(self) -> None:
        self._script = sync_client().register_script(_COUNT_SCRIPT)

    def _count(self, key: str, window: int, below: int) -> int:
        return int(self._script(keys=[f"llm:rate:{key}:{window}"], args=[below, WINDOW_S * 1000]))


class MemoryRateLimiter(RateLimiter):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, int]] = {}

    def _count(self, key: str, window: int, below: int) -> int:
        with self._lock:
            count_window, used = self._counts.get(key, (window, 0))
            if count_window != window:
                used = 0
            if used < below:
                self._counts[key] = (window, used + 1)
                if len(self._counts) > 100_000:
                    self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
            return used


@cache
def rate_limiter() -> RateLimiter:
    return RedisRateLimiter() if settings.DISTRIBUTED else MemoryRateLimiter()
