"""A worker presumed dead: the reaper's decisions, and the fence against the old attempt.

In-process, on this run's tier: the services and the event log are called the way the runner
and the housekeeping thread call them, with the real database and buffer.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings

from core.models import FinishReason, Generation, Status
from jobs import events, reaper, writer
from jobs.runner import run_generation_job
from jobs.writer import publish_event
from tests.fake_openai import expected_text
from tests.jobs.support import checkpoint, logged_events, new_generation, run_attempt, unique

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("inproc_worker"),
]


def row(generation_id: str) -> dict[str, Any]:
    return dict(Generation.objects.values().get(pk=generation_id))


def stream_two_deltas_and_die(generation_id: str, attempt: int) -> None:
    """What a worker leaves behind when killed between two checkpoints: "Hello" is in the
    row, " world" only in the log."""
    assert publish_event(generation_id, attempt, events.delta(generation_id, 1, "Hello"))
    assert checkpoint(generation_id, attempt, output="Hello", seq=1, completion_tokens=1) == (
        True,
        False,
    )
    assert publish_event(generation_id, attempt, events.delta(generation_id, 2, " world"))


def test_writes_and_publishes_of_a_superseded_attempt_change_nothing() -> None:
    generation = new_generation(unique("fenced [fake tokens=30]"))
    gid = generation.id
    first = writer.generation_claim(gid)
    assert first is not None and first.attempt == 1
    stream_two_deltas_and_die(gid, 1)
    # The reaper presumed attempt 1 dead; attempt 2 takes over and starts over.
    assert writer.generation_requeue(gid, 1)
    second = writer.generation_claim(gid)
    assert second is not None and second.attempt == 2 and second.start_seq == 2
    assert publish_event(gid, 2, events.reset(gid, 3, 2))
    assert publish_event(gid, 2, events.delta(gid, 4, "new"))
    row_before, log_before = row(gid), logged_events(gid)

    # Attempt 1 was only slow: it wakes up and carries on, with seqs that are still free.
    assert checkpoint(gid, 1, output="Hello world!", seq=5, completion_tokens=3) == (False, False)
    assert not publish_event(gid, 1, events.delta(gid, 5, "!"))
    assert not writer.generation_finish(
        gid,
        1,
        status=Status.COMPLETED,
        output="Hello world!",
        seq=6,
        finish_reason=FinishReason.STOP,
        usage=None,
        error=None,
    )
    assert not publish_event(
        gid,
        1,
        events.done(gid, 6, status="completed", finish_reason="stop", usage=None, error=None),
    )
    assert not writer.generation_requeue(
        gid, 1, fold=writer.Checkpoint(gid, 1, "Hello world!", "", seq=5, completion_tokens=3)
    )

    assert row(gid) == row_before
    assert logged_events(gid) == log_before
    assert row_before["status"] == Status.RUNNING and row_before["attempt"] == 2


def test_superseded_runner_stops_at_its_first_write_and_the_new_attempt_completes() -> None:
    generation = new_generation(unique("two runners [fake tokens=50]"))
    gid = generation.id
    stale = writer.generation_claim(gid)
    assert stale is not None
    assert writer.generation_requeue(gid, stale.attempt)
    current = writer.generation_claim(gid)
    assert current is not None
    row_before, log_before = row(gid), logged_events(gid)

    run_attempt(stale)

    assert row(gid) == row_before
    assert logged_events(gid) == log_before == []
    run_attempt(current)
    final = row(gid)
    logged = logged_events(gid)
    assert final["status"] == Status.COMPLETED and final["attempt"] == 2
    assert final["output"] == expected_text(50)
    assert logged[0] == events.reset(gid, 1, 2)
    assert events.fold(logged) == final["output"]
    assert logged[-1]["type"] == "done" and logged[-1]["seq"] == final["seq"]


def test_reaper_requeues_a_stale_running_generation_as_the_next_attempt() -> None:
    generation = new_generation(unique("crash [fake tokens=40]"))
    gid = generation.id
    assert writer.generation_claim(gid) is not None
    stream_two_deltas_and_die(gid, 1)
    beat = row(gid)["heartbeat_at"]
    timeout_s = settings.HEARTBEAT_TIMEOUT_S

    # `now` is passed in, rather than heartbeats set in the past, so that no other reaper
    # (a housekeeping thread started before `inproc_worker` slowed it) reaps this row.
    def reap(seconds_since_beat: float) -> None:
        reaper.reap_stale(
            heartbeat_timeout_s=timeout_s,
            max_attempts=settings.MAX_ATTEMPTS,
            now=beat + timedelta(seconds=seconds_since_beat),
        )

    reap(timeout_s - 1)
    assert row(gid)["status"] == Status.RUNNING and row(gid)["attempt"] == 1

    reap(timeout_s + 1)

    requeued = row(gid)
    assert requeued["status"] == Status.QUEUED
    assert requeued["attempt"] == 2
    assert (requeued["output"], requeued["seq"]) == ("Hello", 1)
    # The next attempt continues the log after everything the lost one published.
    run_generation_job(gid)
    final = row(gid)
    logged = logged_events(gid)
    assert final["status"] == Status.COMPLETED and final["attempt"] == 2
    assert [event["type"] for event in logged[:3]] == ["delta", "delta", "reset"]
    assert [event["seq"] for event in logged] == list(range(1, len(logged) + 1))
    assert events.fold(logged) == final["output"] == expected_text(40)


def test_reaper_fails_a_generation_lost_on_its_last_attempt_with_log_matching_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generation = new_generation(unique("last crash"), attempt=settings.MAX_ATTEMPTS)
    gid = generation.id
    claim = writer.generation_claim(gid)
    assert claim is not None and claim.attempt == settings.MAX_ATTEMPTS
    stream_two_deltas_and_die(gid, claim.attempt)
    beat = row(gid)["heartbeat_at"]
    rows_at_done: list[dict[str, Any]] = []

    def publish_checking_row(generation_id: str, attempt: int, event: dict[str, Any]) -> bool:
        if event["type"] == "done":
            rows_at_done.append(row(generation_id))
        return publish_event(generation_id, attempt, event)

    monkeypatch.setattr(writer, "publish_event", publish_checking_row)

    reaper.reap_stale(
        heartbeat_timeout_s=settings.HEARTBEAT_TIMEOUT_S,
        max_attempts=settings.MAX_ATTEMPTS,
        now=beat + timedelta(seconds=settings.HEARTBEAT_TIMEOUT_S + 1),
    )

    final = row(gid)
    logged = logged_events(gid)
    assert final["status"] == Status.FAILED
    assert final["finish_reason"] == FinishReason.ERROR
    assert final["error"]["code"] == "worker_lost"
    assert final["attempt"] == settings.MAX_ATTEMPTS
    # " world" reached subscribers but not the row's last checkpoint: the final output
    # includes it, or subscribers and the row would disagree.
    assert final["output"] == events.fold(logged) == "Hello world"
    assert logged[-1] == events.done(
        gid, 3, status="failed", finish_reason="error", usage=None, error=final["error"]
    )
    assert final["seq"] == 3
    assert rows_at_done == [final]


def test_reaper_folds_the_reasoning_logged_after_the_checkpoint_as_well_as_the_text() -> None:
    generation = new_generation(unique("last crash, thinking"), attempt=settings.MAX_ATTEMPTS)
    gid = generation.id
    claim = writer.generation_claim(gid)
    assert claim is not None
    assert publish_event(gid, claim.attempt, events.reasoning(gid, 1, "Let me"))
    assert checkpoint(
        gid, claim.attempt, output="", reasoning="Let me", seq=1, completion_tokens=1
    ) == (True, False)
    # Past the row's last checkpoint: more reasoning, then text.
    assert publish_event(gid, claim.attempt, events.reasoning(gid, 2, " think"))
    assert publish_event(gid, claim.attempt, events.delta(gid, 3, "Hi"))
    beat = row(gid)["heartbeat_at"]

    reaper.reap_stale(
        heartbeat_timeout_s=settings.HEARTBEAT_TIMEOUT_S,
        max_attempts=settings.MAX_ATTEMPTS,
        now=beat + timedelta(seconds=settings.HEARTBEAT_TIMEOUT_S + 1),
    )

    final = row(gid)
    assert final["status"] == Status.FAILED
    assert (final["output"], final["reasoning"]) == ("Hi", "Let me think")
    assert events.fold_with_reasoning(logged_events(gid)) == ("Hi", "Let me think")


def test_worker_failed_as_lost_cannot_append_after_the_reapers_done() -> None:
    generation = new_generation(unique("presumed dead"), attempt=settings.MAX_ATTEMPTS)
    gid = generation.id
    claim = writer.generation_claim(gid)
    assert claim is not None
    stream_two_deltas_and_die(gid, claim.attempt)
    beat = row(gid)["heartbeat_at"]

    reaper.reap_stale(
        heartbeat_timeout_s=settings.HEARTBEAT_TIMEOUT_S,
        max_attempts=settings.MAX_ATTEMPTS,
        now=beat + timedelta(seconds=settings.HEARTBEAT_TIMEOUT_S + 1),
    )

    final = row(gid)
    assert final["status"] == Status.FAILED
    # The worker was not dead, only cut off from the database (its checkpoints fail and are
    # skipped): it still reaches the event log and streams on.
    assert not publish_event(gid, claim.attempt, events.delta(gid, final["seq"] + 1, "!"))
    logged = logged_events(gid)
    assert logged[-1]["type"] == "done" and logged[-1]["seq"] == final["seq"]
    assert events.fold(logged) == final["output"] == "Hello world"


def test_worker_that_wins_the_race_with_the_reaper_keeps_its_result_and_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generation = new_generation(unique("just in time"), attempt=settings.MAX_ATTEMPTS)
    gid = generation.id
    claim = writer.generation_claim(gid)
    assert claim is not None
    stream_two_deltas_and_die(gid, claim.attempt)
    beat = row(gid)["heartbeat_at"]
    usage = {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    done = events.done(gid, 3, status="completed", finish_reason="stop", usage=usage, error=None)
    fail_lost = reaper._fail_lost
    worker_published: list[bool] = []

    def worker_finishes_first(
        generation_id: str, attempt: int, *, output: str, reasoning: str, seq: int
    ) -> bool:
        # The reaper has picked the row as stale; the worker, alive after all, writes its
        # final row before the reaper does...
        assert writer.generation_finish(
            gid,
            attempt,
            status=Status.COMPLETED,
            output="Hello world",
            seq=3,
            finish_reason=FinishReason.STOP,
            usage=usage,
            error=None,
        )
        result = fail_lost(generation_id, attempt, output=output, reasoning=reasoning, seq=seq)
        # ...and publishes its `done` only after the reaper has been at the log.
        worker_published.append(publish_event(gid, attempt, done))
        return result

    monkeypatch.setattr(reaper, "_fail_lost", worker_finishes_first)

    reaper.reap_stale(
        heartbeat_timeout_s=settings.HEARTBEAT_TIMEOUT_S,
        max_attempts=settings.MAX_ATTEMPTS,
        now=beat + timedelta(seconds=settings.HEARTBEAT_TIMEOUT_S + 1),
    )

    final = row(gid)
    logged = logged_events(gid)
    assert final["status"] == Status.COMPLETED
    # The reaper's fence refused the worker's `done`, so the reaper published it from the row:
    # the log ends with the row's `done`, and agrees with the row.
    assert worker_published == [False]
    assert logged[-1] == done
    assert events.fold(logged) == final["output"] == "Hello world"
