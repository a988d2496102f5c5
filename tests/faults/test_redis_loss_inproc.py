"""Redis losing its data, or a reply, under a running attempt: in-process, on MySQL + Redis.

The runner's publishing is driven directly (no provider), and Redis "loses" a generation's
keys by having them deleted, as a restart without persistence would.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from core.models import Generation, Status
from core.redis import sync_client
from jobs import events, writer
from jobs.engine import Attempt, LostOwnership, engine
from jobs.eventlog import RedisEventLog, event_log
from tests.faults.conftest import distributed_only
from tests.jobs.support import checkpoint, logged_events, new_generation, unique

pytestmark = [distributed_only, pytest.mark.django_db(transaction=True)]


def lose_the_log(generation_id: str) -> None:
    sync_client().delete(
        RedisEventLog._stream_key(generation_id), RedisEventLog._fence_key(generation_id)
    )


def row(generation_id: str) -> dict[str, Any]:
    return dict(Generation.objects.values().get(pk=generation_id))


def runner_with_two_deltas() -> Attempt:
    """A claimed attempt on the worker's event loop (jobs.engine), with two deltas sent."""
    generation = new_generation(unique("redis loss"))
    claim = writer.generation_claim(generation.id)
    assert claim is not None

    async def start() -> Attempt:
        return Attempt(claim, engine=engine(), stopping=threading.Event())

    runner: Attempt = engine().call(start())
    for text in ("Hello", " world"):
        send(runner, text)
    return runner


def send(runner: Attempt, text: str) -> None:
    """`text` as the attempt's next delta, sent at once."""

    async def go() -> None:
        runner._add_text(text, "delta")
        await runner._flush()

    engine().call(go())


def test_runner_that_lost_its_fence_with_redis_restores_it_and_goes_on() -> None:
    runner = runner_with_two_deltas()
    gid = runner.generation_id
    lose_the_log(gid)

    send(runner, "!")

    # The row was checkpointed with everything sent so far, so that subscribers who saw
    # events the loss erased take its snapshot across the gap; the log goes on after it.
    assert (row(gid)["output"], row(gid)["seq"]) == ("Hello world!", 3)
    assert logged_events(gid) == [events.delta(gid, 3, "!")]
    assert event_log().fence_holder(gid) == runner.attempt


def test_runner_superseded_while_its_fence_was_lost_stops() -> None:
    runner = runner_with_two_deltas()
    gid = runner.generation_id
    lose_the_log(gid)
    # The reaper presumed it dead meanwhile and re-queued the generation.
    assert writer.generation_requeue(gid, runner.attempt)
    before = row(gid)

    with pytest.raises(LostOwnership):
        send(runner, "!")

    assert row(gid) == before
    assert logged_events(gid) == []
    assert event_log().fence_holder(gid) is None


def test_claim_after_the_log_was_lost_numbers_above_anything_seen() -> None:
    runner = runner_with_two_deltas()
    gid = runner.generation_id
    # Checkpointed at 1; a subscriber has seen 2. Then the worker dies and Redis loses all.
    assert checkpoint(gid, runner.attempt, output="Hello", seq=1, completion_tokens=1) == (
        True,
        False,
    )
    lose_the_log(gid)
    assert writer.generation_requeue(gid, runner.attempt)

    claim = writer.generation_claim(gid)

    assert claim is not None and claim.attempt == 2
    assert claim.start_seq > 2 + 1000


def test_claim_of_a_generation_that_never_published_starts_at_zero() -> None:
    generation = new_generation(unique("fresh"))

    claim = writer.generation_claim(generation.id)

    assert claim is not None and claim.start_seq == 0


def test_claim_with_redis_down_gives_the_generation_back_to_the_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import redis

    generation = new_generation(unique("no redis"))

    # The in-process tests share the machine's Redis, which must not be stopped: its client
    # fails here as it does when the server is gone (the black-box suite stops a Redis).
    def unreachable(*args: Any, **kwargs: Any) -> int | None:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(event_log(), "take_fence", unreachable)
    with pytest.raises(redis.ConnectionError):
        writer.generation_claim(generation.id)

    # Queued again, same attempt: the reaper enqueues it once the queue is back.
    assert row(generation.id)["status"] == Status.QUEUED
    assert row(generation.id)["attempt"] == 1
