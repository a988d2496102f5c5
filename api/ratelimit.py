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

# Count only when under the limit, so refusals never extend the wait. The key is the
# window's own, so its expiry only frees memory: the wait is what is left of the window.
_TAKE_SCRIPT = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then return 0 end
used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return used
"""


def _seconds_left(now: float) -> float:
    """Until the fixed window that `now` falls in ends (at least a second, for Retry-After)."""
    return max(1.0, (int(now // WINDOW_S) + 1) * WINDOW_S - now)


class RateLimiter:
    def take(self, key: str, limit: int) -> float | None:
        """Count one request; None if allowed, else the seconds until the window ends."""
        raise NotImplementedError


class RedisRateLimiter(RateLimiter):
    def __init__(self) -> None:
        self._script = sync_client().register_script(_TAKE_SCRIPT)

    def take(self, key: str, limit: int) -> float | None:
        now = time.time()
        window = int(now // WINDOW_S)
        used = int(self._script(keys=[f"llm:rate:{key}:{window}"], args=[limit, WINDOW_S * 1000]))
        return None if used > 0 else _seconds_left(now)


class MemoryRateLimiter(RateLimiter):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, int]] = {}

    def take(self, key: str, limit: int) -> float | None:
        now = time.time()
        window = int(now // WINDOW_S)
        with self._lock:
            count_window, count = self._counts.get(key, (window, 0))
            if count_window != window:
                count = 0
            if count >= limit:
                return _seconds_left(now)
            self._counts[key] = (window, count + 1)
            if len(self._counts) > 100_000:
                self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
            return None


@cache
def rate_limiter() -> RateLimiter:
    return RedisRateLimiter() if settings.DISTRIBUTED else MemoryRateLimiter()


# --- Failure counting (login throttling) -----------------------------------------------------
#
# `take` counts before the work is done, which suits creating generations. Password sign-in
# counts failures only, and must refuse before it checks the password: otherwise, once over
# the limit, a right guess (200) would still be told apart from the wrong ones (429).


def retry_after_if_blocked(key: str, limit: int) -> float | None:
    """Seconds until `key`'s window ends when it already counted `limit`, else None."""
    now = time.time()
    window = int(now // WINDOW_S)
    limiter = rate_limiter()
    if isinstance(limiter, RedisRateLimiter):
        used = int(sync_client().get(f"llm:rate:{key}:{window}") or 0)  # type: ignore[arg-type]
    else:
        assert isinstance(limiter, MemoryRateLimiter)
        with limiter._lock:
            count_window, count = limiter._counts.get(key, (window, 0))
        used = count if count_window == window else 0
    return None if used < limit else _seconds_left(now)


def count_failure(key: str) -> None:
    """Count one failure toward `key` (the limit is enforced by retry_after_if_blocked)."""
    # A limit no count reaches: take() then always counts and never refuses.
    rate_limiter().take(key, 2**31)
