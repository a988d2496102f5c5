"""The backends of each Memory/Redis twin, for the contract suites beside this file.

Each twin (the event log, the rate limiter, the connection and stream registries) has one
suite that states what any backend must do; its fixture is parametrized over the backends of
this run's tier. The in-process one always runs; the Redis one runs on the distributed tier
(where Redis is the tier's promise), against a real Redis database that this run reserves for
itself under the harness's file lock and empties first, so nothing else shares its keys.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import pytest
import redis
from pytest_django.fixtures import Settings

from core import redis as project_redis
from tests.harness import _reserve_redis_db
from tests.tier_env import REDIS_SERVER_URL, TIER

# The backends each suite runs against on this tier.
BACKENDS = ["memory", "redis"] if TIER == "distributed" else ["memory"]


@pytest.fixture(scope="session")
def contract_redis_url() -> Iterator[str]:
    db, lock = _reserve_redis_db()
    url = f"{REDIS_SERVER_URL}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url
    lock.close()


@pytest.fixture
def project_redis_at(
    request: pytest.FixtureRequest,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[None]:
    """The process's Redis clients (core.redis) connected to the reserved database."""
    settings.REDIS_URL = request.getfixturevalue("contract_redis_url")
    monkeypatch.setattr(project_redis, "_sync_client", None)
    monkeypatch.setattr(project_redis, "_async_clients", weakref.WeakKeyDictionary())
    yield
    client = project_redis._sync_client
    if client is not None:
        client.close()
        client.connection_pool.disconnect()


async def close_async_redis() -> None:
    """Close the running loop's Redis connections before pytest closes the loop."""
    import asyncio

    client = project_redis._async_clients.get(asyncio.get_running_loop())
    if client is not None:
        await client.connection_pool.disconnect()
