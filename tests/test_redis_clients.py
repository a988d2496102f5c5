"""core.redis: a loop's async client closes its connections when the loop closes, on the real
Redis (each connection named, and looked for in CLIENT LIST)."""

from __future__ import annotations

import asyncio
import gc
import uuid
import warnings
from collections.abc import Callable

import pytest
import uvloop

from core import redis as core_redis
from tests.tier_env import TIER

pytestmark = pytest.mark.skipif(TIER != "distributed", reason="the embedded tier has no Redis")


def _names_in_client_list() -> set[str]:
    entries: list[dict[str, str]] = core_redis.sync_client().client_list()  # type: ignore[assignment]
    return {entry["name"] for entry in entries if entry.get("name")}


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_closing_a_loop_closes_its_clients_connections(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    name = f"loop-close-{uuid.uuid4().hex[:12]}"

    async def use() -> object:
        client = core_redis.async_client()
        await client.client_setname(name)  # names the connection the pool lent, kept after
        return client

    loop = new_loop()
    client = loop.run_until_complete(use())
    assert core_redis._async_clients.get(loop) is client
    assert name in _names_in_client_list()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop.close()
        del client
        gc.collect()

    assert name not in _names_in_client_list()
    assert loop not in core_redis._async_clients
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [
        str(w.message) for w in caught
    ]
    loop.close()  # a second close is the loop's own again: a no-op
