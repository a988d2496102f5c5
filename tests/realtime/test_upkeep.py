"""The process-wide upkeep of authenticated WebSocket connections (realtime.upkeep): one account
check for all of them per interval, which closes exactly the connections of users deactivated
or deleted since, and timers that run only while the process holds a connection.

In process, on this run's tier: the real database, read on the realtime path's threads. The
end-to-end case (a deactivated user's open connection closed with 4401 within the interval)
is tests/test_security.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from pytest_django.fixtures import Settings

from realtime import db as realtime_db
from realtime import upkeep as upkeep_module
from realtime.upkeep import ACCOUNT_CHECK_CHUNK, ConnectionUpkeep

pytestmark = pytest.mark.django_db(transaction=True)


@sync_to_async
def user(username: str, **fields: Any) -> int:
    created = get_user_model().objects.create(username=username, **fields)
    return int(created.pk)


@sync_to_async
def deactivate(user_id: int) -> None:
    get_user_model().objects.filter(pk=user_id).update(is_active=False)


@sync_to_async
def delete(user_id: int) -> None:
    get_user_model().objects.filter(pk=user_id).delete()


def recorder(
    closed: list[str], name: str, event: asyncio.Event | None = None
) -> Callable[[], Coroutine[None, None, None]]:
    async def on_deactivated() -> None:
        closed.append(name)
        if event is not None:
            event.set()

    return on_deactivated


async def settle() -> None:
    """Let the closes the check started run."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_one_check_closes_the_connections_of_deactivated_and_deleted_users_only() -> None:
    upkeep = ConnectionUpkeep()
    alice, bob, carol = await user("up-alice"), await user("up-bob"), await user("up-carol")
    closed: list[str] = []
    keys = {
        "alice-1": upkeep.add(alice, "a1", recorder(closed, "alice-1")),
        "alice-2": upkeep.add(alice, "a2", recorder(closed, "alice-2")),
        "bob": upkeep.add(bob, "b1", recorder(closed, "bob")),
        "carol": upkeep.add(carol, "c1", recorder(closed, "carol")),
    }
    await upkeep.check()
    await settle()
    assert closed == []

    await deactivate(bob)
    await delete(carol)
    await upkeep.check()
    await settle()

    assert sorted(closed) == ["bob", "carol"]
    assert len(upkeep) == 2
    # Each is closed once: the next check does not call them again.
    await upkeep.check()
    await settle()
    assert sorted(closed) == ["bob", "carol"]
    for key in keys.values():
        upkeep.discard(key)


async def test_a_check_reads_its_users_in_one_statement_per_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    active = [await user(f"up-many-{n}") for n in range(3)]
    # Ids no account has: closed like deleted users.
    missing = [10**9 + n for n in range(2 * ACCOUNT_CHECK_CHUNK)]
    reads: list[int] = []
    real_read = realtime_db.read

    async def counted(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        reads.append(len(args[0]))
        return await real_read(fn, *args, **kwargs)

    monkeypatch.setattr(upkeep_module, "read", counted)
    upkeep = ConnectionUpkeep()
    closed: list[str] = []
    for user_id in active + missing:
        upkeep.add(user_id, f"c{user_id}", recorder(closed, str(user_id)))

    await upkeep.check()
    await settle()

    assert reads == [ACCOUNT_CHECK_CHUNK, ACCOUNT_CHECK_CHUNK, 3]
    assert sorted(closed) == sorted(str(user_id) for user_id in missing)
    assert len(upkeep) == len(active)


async def test_timers_run_while_connections_are_held_and_stop_with_the_last(
    settings: Settings,
) -> None:
    settings.ACCOUNT_RECHECK_INTERVAL_S = 0.05
    upkeep = ConnectionUpkeep()
    dave, erin = await user("up-dave"), await user("up-erin")
    closed: list[str] = []
    erin_closed = asyncio.Event()
    kept = upkeep.add(dave, "d1", recorder(closed, "dave"))
    upkeep.add(erin, "e1", recorder(closed, "erin", erin_closed))
    timers = list(upkeep._timers)
    assert len(timers) == 2 and not any(timer.done() for timer in timers)

    await deactivate(erin)
    await asyncio.wait_for(erin_closed.wait(), 5)
    assert closed == ["erin"]
    assert not any(timer.done() for timer in timers)

    upkeep.discard(kept)
    await settle()
    assert all(timer.cancelled() for timer in timers)
    assert upkeep._timers == []


async def test_the_last_connection_closed_by_a_check_stops_the_timers(
    settings: Settings,
) -> None:
    settings.ACCOUNT_RECHECK_INTERVAL_S = 0.05
    upkeep = ConnectionUpkeep()
    frank = await user("up-frank", is_active=False)
    closed: list[str] = []
    upkeep.add(frank, "f1", recorder(closed, "frank"))
    timers = list(upkeep._timers)

    await asyncio.wait(timers, timeout=5)

    assert closed == ["frank"]
    assert len(upkeep) == 0
