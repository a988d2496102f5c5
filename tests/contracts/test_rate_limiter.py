"""What every rate limiter (api.ratelimit: MemoryRateLimiter, RedisRateLimiter) must do:
a fixed one-minute window per key, in which refused requests do not count (PROTOCOL §2),
and the failure counting of sign-in throttling built on it.

Each case runs against both backends (tests/contracts/conftest.py). The clock is moved by
replacing api.ratelimit's `time` (the window a request falls in); Redis stays real.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from api import ratelimit
from api.ratelimit import (
    WINDOW_S,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
)
from tests.contracts.conftest import BACKENDS


class Clock:
    """api.ratelimit's wall clock, from the start of a window on."""

    def __init__(self) -> None:
        self.now = (1_900_000_000 // WINDOW_S) * WINDOW_S + 0.5

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fixed = Clock()
    # The module's own `time` only: Redis's client keeps the real clock.
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=fixed.time))
    return fixed


@pytest.fixture(params=BACKENDS)
def limiter(request: pytest.FixtureRequest, clock: Clock) -> Iterator[RateLimiter]:
    chosen: RateLimiter
    if request.param == "redis":
        request.getfixturevalue("project_redis_at")
        chosen = RedisRateLimiter()
    else:
        chosen = MemoryRateLimiter()
    yield chosen


def new_key() -> str:
    return f"contract:{uuid.uuid4()}"


def test_allows_the_limit_then_refuses_until_the_window_ends(limiter: RateLimiter) -> None:
    key = new_key()

    assert [limiter.take(key, 3) for _ in range(3)] == [None, None, None]
    wait_s = limiter.take(key, 3)

    assert wait_s is not None
    assert 1.0 <= wait_s <= WINDOW_S


def test_wait_is_what_is_left_of_the_window(limiter: RateLimiter, clock: Clock) -> None:
    # The window is fixed, whenever its first request came: a client refused near its end
    # may try again as soon as it ends.
    key = new_key()
    assert limiter.take(key, 1) is None
    clock.now += WINDOW_S - 10.5

    assert limiter.take(key, 1) == 10.0
    limiter.count_failure(key)
    assert limiter.retry_after_if_blocked(key, 1) == 10.0


def test_keys_are_counted_apart(limiter: RateLimiter) -> None:
    first, second = new_key(), new_key()
    assert limiter.take(first, 1) is None

    assert limiter.take(first, 1) is not None
    assert limiter.take(second, 1) is None


def test_refused_requests_do_not_count(limiter: RateLimiter) -> None:
    key = new_key()
    assert limiter.take(key, 2) is None
    assert limiter.take(key, 2) is None
    for _ in range(5):
        assert limiter.take(key, 2) is not None

    # Two counted, not seven: a third is allowed under a limit of three.
    assert limiter.take(key, 3) is None
    assert limiter.take(key, 3) is not None


def test_next_window_starts_from_zero(limiter: RateLimiter, clock: Clock) -> None:
    key = new_key()
    assert limiter.take(key, 1) is None
    assert limiter.take(key, 1) is not None

    clock.now += WINDOW_S

    assert limiter.take(key, 1) is None
    assert limiter.take(key, 1) is not None


def test_failures_block_only_once_they_reach_the_limit(limiter: RateLimiter) -> None:
    key = new_key()
    for _ in range(2):
        limiter.count_failure(key)
    assert limiter.retry_after_if_blocked(key, 3) is None

    limiter.count_failure(key)

    wait_s = limiter.retry_after_if_blocked(key, 3)
    assert wait_s is not None
    assert 1.0 <= wait_s <= WINDOW_S
    # Asking does not count.
    assert limiter.retry_after_if_blocked(key, 4) is None


def test_failures_of_a_past_window_block_nothing(limiter: RateLimiter, clock: Clock) -> None:
    key = new_key()
    limiter.count_failure(key)
    assert limiter.retry_after_if_blocked(key, 1) is not None

    clock.now += WINDOW_S

    assert limiter.retry_after_if_blocked(key, 1) is None
