"""What every event log (jobs.eventlog: MemoryEventLog, RedisEventLog) must do.

Each case runs against both backends (tests/contracts/conftest.py).

Not stated, because the two answer differently today and neither answer is wrong for its
mode: a buffer fenced but never appended to reads as missing from Redis (no stream key) and
as empty in memory; a fence taken twice by the same attempt on such a buffer returns None
from Redis (its own reply may have been lost) and 0 in memory; `restore_fence` after the
fence is gone puts it back in Redis and refuses in memory (lost only with the process).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from core.redis import sync_client
from jobs.eventlog import (
    CANCEL_FLAG_TTL_S,
    REPLAY_TTL_AFTER_DONE_S,
    REPLAY_TTL_WHILE_RUNNING_S,
    EventLog,
    MemoryEventLog,
    RedisEventLog,
    StoredEvent,
)
from tests.contracts.conftest import BACKENDS, close_async_redis

# How far a remaining lifetime may be below the one just set: the seconds this test takes.
TTL_SLACK_S = 60


@pytest.fixture(params=BACKENDS)
def log(request: pytest.FixtureRequest) -> Iterator[EventLog]:
    if request.param == "redis":
        request.getfixturevalue("project_redis_at")
        yield RedisEventLog()
    else:
        yield MemoryEventLog()


def new_id() -> str:
    return str(uuid.uuid4())


def data(seq: int, text: str = "x") -> str:
    return f'{{"seq": {seq}, "text": "{text}"}}'


def fenced_with(log: EventLog, attempt: int, seqs: list[int]) -> str:
    generation_id = new_id()
    log.take_fence(generation_id, attempt)
    for seq in seqs:
        assert log.append(generation_id, attempt, seq, "delta", data(seq))
    return generation_id


def stored(log: EventLog, generation_id: str, after: int = 0) -> list[StoredEvent]:
    events, _ = log.read_after_sync(generation_id, after)
    return events


def remaining_ttl_s(log: EventLog, generation_id: str) -> float:
    """Seconds until the generation's buffer expires, as each backend keeps it."""
    if isinstance(log, RedisEventLog):
        return float(sync_client().ttl(RedisEventLog._stream_key(generation_id)))  # type: ignore[arg-type]
    assert isinstance(log, MemoryEventLog)
    with log._lock:
        return log._logs[generation_id].expires_at - time.monotonic()


# --- Fencing --------------------------------------------------------------------------------


def test_first_fence_of_a_generation_reports_no_buffer(log: EventLog) -> None:
    generation_id = new_id()

    assert log.take_fence(generation_id, 1) is None
    assert log.fence_holder(generation_id) == 1


def test_fence_taken_again_reports_the_last_seq_appended(log: EventLog) -> None:
    generation_id = fenced_with(log, 1, [1, 2, 5])

    assert log.take_fence(generation_id, 2) == 5
    assert log.fence_holder(generation_id) == 2


def test_later_attempt_fencing_an_empty_buffer_is_told_zero(log: EventLog) -> None:
    # Attempt 1 was fenced in and published nothing: the buffer is known to be empty.
    generation_id = fenced_with(log, 1, [])

    assert log.take_fence(generation_id, 2) == 0


def test_stale_attempt_cannot_append_once_a_later_one_fenced(log: EventLog) -> None:
    generation_id = fenced_with(log, 1, [1])
    log.take_fence(generation_id, 2)

    assert not log.append(generation_id, 1, 2, "delta", data(2))
    assert log.append(generation_id, 2, 2, "delta", data(2, "new"))
    assert stored(log, generation_id) == [
        StoredEvent(1, "delta", data(1)),
        StoredEvent(2, "delta", data(2, "new")),
    ]


def test_append_without_any_fence_is_refused(log: EventLog) -> None:
    generation_id = new_id()

    assert not log.append(generation_id, 1, 1, "delta", data(1))
    assert stored(log, generation_id) == []


def test_restore_fence_never_takes_it_from_another_attempt(log: EventLog) -> None:
    generation_id = fenced_with(log, 2, [])

    assert not log.restore_fence(generation_id, 1)
    assert log.fence_holder(generation_id) == 2


# --- Appending ------------------------------------------------------------------------------


def test_seq_already_taken_is_refused_and_changes_nothing(log: EventLog) -> None:
    generation_id = fenced_with(log, 1, [1, 2])

    assert not log.append(generation_id, 1, 2, "delta", data(2, "other"))
    assert not log.append(generation_id, 1, 1, "delta", data(1, "other"))
    assert stored(log, generation_id) == [
        StoredEvent(1, "delta", data(1)),
        StoredEvent(2, "delta", data(2)),
    ]


def test_seqs_may_skip_but_never_go_back(log: EventLog) -> None:
    generation_id = fenced_with(log, 1, [1, 100_005])

    assert not log.append(generation_id, 1, 50, "delta", data(50))
    assert [event.seq for event in stored(log, generation_id)] == [1, 100_005]


def test_repeating_the_last_append_exactly_counts_as_done(log: EventLog) -> None:
    # A client that never saw the reply (a dropped connection) sends the same append again
    # (core.redis retries a command on a new connection): that is a success, stored once.
    generation_id = fenced_with(log, 1, [1])

    assert log.append(generation_id, 1, 1, "delta", data(1))
    assert stored(log, generation_id) == [StoredEvent(1, "delta", data(1))]


# --- Reading --------------------------------------------------------------------------------


def test_read_after_gives_later_events_in_order_with_their_text(log: EventLog) -> None:
    generation_id = fenced_with(log, 1, [1, 2, 3])
    assert log.append(generation_id, 1, 4, "done", '{"type": "done", "é": "🙂"}')

    events, exists = log.read_after_sync(generation_id, 2)

    assert exists
    assert events == [
        StoredEvent(3, "delta", data(3)),
        StoredEvent(4, "done", '{"type": "done", "é": "🙂"}'),
    ]
    assert events[1].decoded() == {"type": "done", "é": "🙂"}
    assert log.read_after_sync(generation_id, 4) == ([], True)


async def test_async_read_after_gives_what_the_sync_one_does(log: EventLog) -> None:
    generation_id = fenced_with(log, 1, [1, 2, 3])
    try:
        assert await log.read_after(generation_id, 1) == log.read_after_sync(generation_id, 1)
        assert await log.read_after(new_id(), 0) == ([], False)
    finally:
        await close_async_redis()


def test_unknown_generation_has_no_buffer(log: EventLog) -> None:
    generation_id = new_id()

    assert log.read_after_sync(generation_id, 0) == ([], False)
    assert log.fence_holder(generation_id) is None


# --- Discarding -----------------------------------------------------------------------------


def test_discard_removes_buffer_and_fence(log: EventLog) -> None:
    generation_id = fenced_with(log, 1, [1, 2])

    log.discard(generation_id)

    assert log.read_after_sync(generation_id, 0) == ([], False)
    assert log.fence_holder(generation_id) is None
    # The worker still running it can append nothing more.
    assert not log.append(generation_id, 1, 3, "delta", data(3))


def test_discard_keeps_the_cancel_request(log: EventLog) -> None:
    generation_id = fenced_with(log, 1, [1])
    log.request_cancel(generation_id)

    log.discard(generation_id)

    assert log.cancel_requested(generation_id)


# --- Cancel flags ---------------------------------------------------------------------------


def test_cancel_is_seen_for_that_generation_only(log: EventLog) -> None:
    cancelled, other = new_id(), new_id()
    assert not log.cancel_requested(cancelled)

    log.request_cancel(cancelled)

    assert log.cancel_requested(cancelled)
    assert not log.cancel_requested(other)


# --- Lifetimes ------------------------------------------------------------------------------


def test_buffer_lives_a_day_while_running_and_minutes_after_done(log: EventLog) -> None:
    generation_id = fenced_with(log, 1, [1])
    assert remaining_ttl_s(log, generation_id) > REPLAY_TTL_WHILE_RUNNING_S - TTL_SLACK_S
    assert remaining_ttl_s(log, generation_id) <= REPLAY_TTL_WHILE_RUNNING_S

    assert log.append(generation_id, 1, 2, "done", data(2))

    assert remaining_ttl_s(log, generation_id) > REPLAY_TTL_AFTER_DONE_S - TTL_SLACK_S
    assert remaining_ttl_s(log, generation_id) <= REPLAY_TTL_AFTER_DONE_S


def test_cancel_flag_outlives_any_running_generation(log: EventLog) -> None:
    generation_id = new_id()
    log.request_cancel(generation_id)

    if isinstance(log, RedisEventLog):
        ttl_s = float(sync_client().ttl(RedisEventLog._cancel_key(generation_id)))  # type: ignore[arg-type]
    else:
        assert isinstance(log, MemoryEventLog)
        with log._lock:
            ttl_s = log._cancelled[generation_id] - time.monotonic()
    assert CANCEL_FLAG_TTL_S - TTL_SLACK_S < ttl_s <= CANCEL_FLAG_TTL_S
