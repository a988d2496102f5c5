"""What every registry of open connections (realtime.connections: the WebSocket connections
for MAX_CONNECTIONS_PER_USER, the SSE streams for MAX_SSE_STREAMS_PER_USER; Memory and Redis
backends of each) must do: count per user, refuse past the limit, free a slot on release.

Each case runs against the four (tests/contracts/conftest.py). Not stated here, because only
Redis has it: the entries of a crashed process expire after CONNECTION_TTL_S (the embedded
registry dies with its process).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from core.redis import async_client
from realtime import connections
from realtime.connections import (
    ConnectionRegistry,
    MemoryConnectionRegistry,
    RedisConnectionRegistry,
)
from tests.contracts.conftest import BACKENDS, close_async_redis


def redis_streams() -> RedisConnectionRegistry:
    # As realtime.connections.stream_registry() builds it.
    return RedisConnectionRegistry("llm:sse-streams")


KINDS: dict[tuple[str, str], Callable[[], ConnectionRegistry]] = {
    ("memory", "connections"): MemoryConnectionRegistry,
    ("redis", "connections"): RedisConnectionRegistry,
    ("memory", "streams"): MemoryConnectionRegistry,
    ("redis", "streams"): redis_streams,
}


@pytest.fixture(
    params=[(backend, kind) for backend in BACKENDS for kind in ("connections", "streams")],
    ids=lambda param: "-".join(param),
)
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[ConnectionRegistry]:
    backend, _ = request.param
    if backend == "redis":
        request.getfixturevalue("project_redis_at")
    yield KINDS[request.param]()
    await close_async_redis()


def new_user() -> int:
    # Users unique to the test: the reserved Redis database outlives one test.
    return uuid.uuid4().int % 2**31


def ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


async def test_adds_up_to_the_limit_then_refuses(registry: ConnectionRegistry) -> None:
    user = new_user()
    first, second, third = ids(3)

    assert await registry.add(user, first, 2)
    assert await registry.add(user, second, 2)
    assert not await registry.add(user, third, 2)


async def test_users_are_counted_apart(registry: ConnectionRegistry) -> None:
    alice, bob = new_user(), new_user()
    assert await registry.add(alice, ids(1)[0], 1)

    assert not await registry.add(alice, ids(1)[0], 1)
    assert await registry.add(bob, ids(1)[0], 1)


async def test_removing_frees_a_slot(registry: ConnectionRegistry) -> None:
    user = new_user()
    first, second = ids(2)
    assert await registry.add(user, first, 1)

    await registry.remove(user, first)

    assert await registry.add(user, second, 1)


async def test_refresh_keeps_an_entry_and_never_brings_back_a_removed_one(
    registry: ConnectionRegistry,
) -> None:
    user = new_user()
    first, second, third = ids(3)
    assert await registry.add(user, first, 2)
    await registry.refresh(user, first)
    assert await registry.add(user, second, 2)
    assert not await registry.add(user, third, 2)

    await registry.remove(user, second)
    await registry.refresh(user, second)

    assert await registry.add(user, third, 2)


async def test_refreshing_many_keeps_their_entries_and_never_brings_back_a_removed_one(
    registry: ConnectionRegistry,
) -> None:
    alice, bob = new_user(), new_user()
    first, second, third, fourth = ids(4)
    assert await registry.add(alice, first, 2)
    assert await registry.add(alice, second, 2)
    assert await registry.add(bob, third, 1)
    await registry.remove(alice, second)

    await registry.refresh_many([(alice, first), (alice, second), (bob, third)])

    assert await registry.add(alice, fourth, 2)
    assert not await registry.add(alice, ids(1)[0], 2)
    assert not await registry.add(bob, ids(1)[0], 1)


async def test_removing_what_is_not_there_is_harmless(registry: ConnectionRegistry) -> None:
    user = new_user()
    await registry.remove(user, ids(1)[0])

    assert await registry.add(user, ids(1)[0], 1)


@pytest.fixture(params=BACKENDS)
async def streams(
    request: pytest.FixtureRequest,
) -> AsyncIterator[ConnectionRegistry]:
    if request.param == "redis":
        request.getfixturevalue("project_redis_at")
        yield redis_streams()
    else:
        yield MemoryConnectionRegistry()
    await close_async_redis()


async def test_stream_released_synchronously_frees_its_slot(
    streams: ConnectionRegistry,
) -> None:
    # A stream that never started is released from Django's response.close(), in a thread.
    user = new_user()
    first, second = ids(2)
    assert await streams.add(user, first, 1)

    streams.remove_now(user, first)

    assert await streams.add(user, second, 1)


@pytest.mark.skipif("redis" not in BACKENDS, reason="only Redis entries expire")
async def test_refreshing_many_moves_each_redis_entrys_expiry_forward(
    project_redis_at: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = RedisConnectionRegistry()
    users = [new_user() for _ in range(3)]
    entries = [(user, ids(1)[0]) for user in users]
    for user, connection_id in entries:
        assert await registry.add(user, connection_id, 1)
    client = async_client()
    before = [await client.zscore(registry._key(u), c) for u, c in entries]
    # Three entries in two pipelines.
    monkeypatch.setattr(connections, "REFRESH_PIPELINE_MAX", 2)
    await asyncio.sleep(0.05)

    await registry.refresh_many(entries)

    after = [await client.zscore(registry._key(u), c) for u, c in entries]
    assert all(
        b is not None and a is not None and a > b for a, b in zip(after, before, strict=True)
    )
    await close_async_redis()
