"""A running generation read over REST: the row's last checkpoint with the events logged after
it folded in (jobs.eventlog.generation_now), on the tier's real database and log."""

from __future__ import annotations

import pytest

from core.models import Generation
from jobs import events, writer
from jobs.eventlog import event_log, generation_now
from tests.jobs.support import new_generation, unique

pytestmark = [pytest.mark.django_db(transaction=True)]


def _running() -> tuple[str, int]:
    generation = new_generation(unique("[fake tokens=5]"))
    claim = writer.generation_claim(generation.id)
    assert claim is not None
    return generation.id, claim.attempt


def test_a_running_generation_reads_with_the_text_logged_after_its_checkpoint() -> None:
    gid, attempt = _running()
    Generation.objects.filter(pk=gid).update(output="Hel", reasoning="hm", seq=2)
    for event in (
        events.delta(gid, 1, "He"),
        events.delta(gid, 2, "l"),
        events.delta(gid, 3, "lo"),
        events.reasoning(gid, 4, "mm"),
        events.delta(gid, 5, " world"),
    ):
        assert writer.publish_event(gid, attempt, event)

    body = generation_now(Generation.objects.get(pk=gid))

    assert (body["output"], body["reasoning"], body["seq"]) == ("Hello world", "hmmm", 5)
    assert body["status"] == "running"


def test_a_reset_in_the_log_clears_the_text_and_done_is_left_to_the_row() -> None:
    gid, attempt = _running()
    Generation.objects.filter(pk=gid).update(output="old", seq=1)
    assert writer.publish_event(gid, attempt, events.delta(gid, 1, "old"))
    assert writer.publish_event(gid, attempt, events.reset(gid, 2, attempt))
    assert writer.publish_event(gid, attempt, events.delta(gid, 3, "new"))
    assert writer.publish_event(
        gid,
        attempt,
        events.done(gid, 4, status="completed", finish_reason="stop", usage=None, error=None),
    )

    body = generation_now(Generation.objects.get(pk=gid))

    # `done` belongs to the final row, which is written before it is published.
    assert (body["output"], body["seq"]) == ("new", 3)


def test_the_row_as_it_is_when_the_log_does_not_follow_on_from_its_checkpoint() -> None:
    gid, attempt = _running()
    Generation.objects.filter(pk=gid).update(output="abc", seq=3)
    # The log holds only seqs above a gap (it was trimmed, or lost and written again).
    assert writer.publish_event(gid, attempt, events.delta(gid, 5, "e"))

    body = generation_now(Generation.objects.get(pk=gid))
    assert (body["output"], body["seq"]) == ("abc", 3)

    event_log().discard(gid)
    assert generation_now(Generation.objects.get(pk=gid))["output"] == "abc"


def test_a_finished_generation_reads_as_its_row() -> None:
    gid, attempt = _running()
    assert writer.publish_event(gid, attempt, events.delta(gid, 1, "logged, not final"))
    Generation.objects.filter(pk=gid).update(status="completed", output="final", seq=2)

    body = generation_now(Generation.objects.get(pk=gid))
    assert (body["output"], body["seq"]) == ("final", 2)
