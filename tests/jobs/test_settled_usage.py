"""The daily quota's settled usage (core.models.SettledUsage): every way a generation ends adds
its tokens in the write that ends it, once; the quota's reads give what summing the day's
generations gave; and a read does not grow with the generations the user's day held.

In-process, on this run's tier: the writer, the reaper and the runner are called as the
worker and the API call them, with the real database and buffer.
"""

from __future__ import annotations

import importlib
import threading
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from core.models import FinishReason, Generation, SettledUsage, Status
from core.selectors import quota_left_today, start_of_day_utc, usage_now
from jobs import cancel, reaper, writer
from tests.fake_openai import expected_text
from tests.jobs.support import checkpoint, claimed, new_generation, run_attempt, unique

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("inproc_worker"),
]


def alice_id() -> int:
    return int(get_user_model().objects.get_or_create(username="alice")[0].pk)


def settled_today(user_id: int) -> int:
    row = SettledUsage.objects.filter(user_id=user_id, day=start_of_day_utc().date()).first()
    return row.completion_tokens if row is not None else 0


def summed_today(user_id: int) -> int:
    """What the quota counted before: the completion tokens of every generation of the user
    created today (the same while none of them is deleted)."""
    total = Generation.objects.filter(
        user_id=user_id, created_at__gte=start_of_day_utc()
    ).aggregate(total=Sum("completion_tokens"))["total"]
    return int(total or 0)


def finish(generation_id: str, attempt: int, tokens: int) -> bool:
    return writer.generation_finish(
        generation_id,
        attempt,
        status=Status.COMPLETED,
        output="x" * tokens,
        seq=tokens + 1,
        finish_reason=FinishReason.STOP,
        usage={"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1},
        error=None,
    )


def test_a_worker_finished_generation_is_settled_once_and_the_total_stays_the_sum() -> None:
    user = alice_id()
    before = usage_now(user).tokens_today
    claim = claimed("settle me [fake tokens=9]")

    run_attempt(claim)

    row = Generation.objects.get(pk=claim.generation_id)
    assert row.status == Status.COMPLETED and row.output == expected_text(9)
    assert row.completion_tokens == 9
    assert usage_now(user).tokens_today == before + 9 == summed_today(user)
    assert settled_today(user) == summed_today(user)
    # The attempt's finish again, fenced out by its own final row: nothing added twice.
    assert not finish(claim.generation_id, claim.attempt, 9)
    assert settled_today(user) == summed_today(user)


def test_active_tokens_count_until_the_final_write_moves_them_to_the_settled_usage() -> None:
    user = alice_id()
    claim = claimed("running")
    base = settled_today(user)
    assert checkpoint(
        claim.generation_id, claim.attempt, output="abc", seq=3, completion_tokens=3
    ) == (True, False)
    assert usage_now(user).tokens_today == summed_today(user)
    assert settled_today(user) == base  # still running: counted from its row

    assert finish(claim.generation_id, claim.attempt, 5)

    assert settled_today(user) == base + 5
    assert usage_now(user).tokens_today == summed_today(user)
    # A write of an attempt that no longer holds it adds nothing.
    assert not finish(claim.generation_id, claim.attempt + 1, 7)
    assert settled_today(user) == base + 5


@pytest.mark.skipif(
    connection.vendor != "mysql",
    reason="the in-process SQLite test database is shared-cache memory, whose table locks do "
    "not wait; the service's own file database queues writers (WAL, BEGIN IMMEDIATE, a 30 s "
    "timeout): tests/api/test_generations_rest.py ends generations together on both tiers",
)
def test_final_writes_of_one_users_generations_at_the_same_moment_settle_them_all() -> None:
    # The first of them inserts the day's row, the others add to it: none may be lost, and
    # none may fail (two inserts of one new key wait for each other, they do not deadlock).
    user = alice_id()
    claims = [claimed(f"together {index}") for index in range(8)]
    before = settled_today(user)
    start = threading.Barrier(len(claims))
    outcomes: list[object] = []

    def finish_now(claim: writer.Claim) -> None:
        try:
            start.wait()
            outcomes.append(finish(claim.generation_id, claim.attempt, 3))
        except Exception as error:  # reported by the assertion below
            outcomes.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=finish_now, args=(claim,)) for claim in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes == [True] * len(claims)
    assert settled_today(user) == before + 3 * len(claims)
    assert usage_now(user).tokens_today == summed_today(user)


def test_a_cancel_before_any_claim_settles_the_tokens_of_earlier_attempts() -> None:
    user = alice_id()
    claim = claimed("handed back, then cancelled")
    gid = claim.generation_id
    base = settled_today(user)
    # Its worker handed it back with 4 tokens paid for; no worker has it when it is cancelled.
    fold = writer.Checkpoint(gid, claim.attempt, "abcd", "", seq=4, completion_tokens=4)
    assert writer.generation_requeue(gid, claim.attempt, fold=fold, hand_back=True)
    queued = Generation.objects.get(pk=gid)

    assert cancel.cancel_queued(queued)

    assert Generation.objects.get(pk=gid).status == Status.CANCELLED
    assert settled_today(user) == base + 4
    assert usage_now(user).tokens_today == summed_today(user)
    # A second cancel finds nothing queued and adds nothing.
    assert not cancel.cancel_queued(queued)
    assert settled_today(user) == base + 4


def test_the_reaper_failing_a_lost_generation_settles_what_it_had_used() -> None:
    user = alice_id()
    claim = claimed("lost")
    gid = claim.generation_id
    assert checkpoint(gid, claim.attempt, output="ab", seq=2, completion_tokens=2) == (True, False)
    Generation.objects.filter(pk=gid).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    base = settled_today(user)

    # Its attempt was the last one allowed: the reaper fails it instead of queueing it again.
    reaper.reap_stale(heartbeat_timeout_s=60, max_attempts=claim.attempt)

    assert Generation.objects.get(pk=gid).status == Status.FAILED
    assert settled_today(user) == base + 2
    assert usage_now(user).tokens_today == summed_today(user)


def test_the_quota_left_counts_settled_tokens_and_running_ones_at_their_cap() -> None:
    user = alice_id()
    finished = claimed("finished")
    assert finish(finished.generation_id, finished.attempt, 6)
    running = claimed("running at its cap")
    assert checkpoint(
        running.generation_id, running.attempt, output="a", seq=1, completion_tokens=1
    )
    waiting = new_generation(unique("waiting"))

    with transaction.atomic():
        left = quota_left_today(user, excluding=waiting.id, lock=True)

    others = Generation.objects.filter(user_id=user, created_at__gte=start_of_day_utc()).exclude(
        pk__in=[waiting.id, running.generation_id]
    )
    held = sum(others.values_list("completion_tokens", flat=True)) + running.max_tokens
    assert left == usage_now(user).limits.tokens_per_day - held


def test_deleting_a_finished_generation_does_not_give_its_tokens_back() -> None:
    user = alice_id()
    claim = claimed("deleted after use")
    assert finish(claim.generation_id, claim.attempt, 11)
    used = usage_now(user).tokens_today

    Generation.objects.filter(pk=claim.generation_id).delete()

    assert usage_now(user).tokens_today == used


def test_a_generation_created_yesterday_is_settled_on_yesterday() -> None:
    user = alice_id()
    claim = claimed("across midnight")
    yesterday = timezone.now() - timedelta(days=1)
    Generation.objects.filter(pk=claim.generation_id).update(created_at=yesterday)
    today = usage_now(user).tokens_today

    assert finish(claim.generation_id, claim.attempt, 13)

    assert usage_now(user).tokens_today == today
    settled = SettledUsage.objects.get(user_id=user, day=yesterday.date())
    assert settled.completion_tokens >= 13


@pytest.mark.skipif(
    connection.vendor != "mysql", reason="MariaDB's handler counters: the distributed tier"
)
def test_a_quota_read_reads_the_same_rows_however_many_generations_the_day_held() -> None:
    user = alice_id()

    def rows_read() -> int:
        """Rows the quota's two reads went through, by index or by scan (MariaDB's session
        counters), under the user's lock as a create and a claim take them."""
        with connection.cursor() as cursor:
            cursor.execute("FLUSH STATUS")
            with transaction.atomic():
                usage_now(user, lock=True)
                quota_left_today(user, excluding="gen_none", lock=True)
            cursor.execute("SHOW SESSION STATUS LIKE 'Handler_read_%'")
            counters = dict(cursor.fetchall())
        return sum(int(value) for value in counters.values())

    few = rows_read()
    Generation.objects.bulk_create(
        Generation(
            user_id=user,
            model="gpt-4o-mini",
            prompt=f"done {index}",
            max_tokens=10,
            status=Status.COMPLETED,
            completion_tokens=1,
        )
        for index in range(400)
    )
    for generation_id in Generation.objects.filter(
        user_id=user, prompt__startswith="done "
    ).values_list("id", flat=True):
        writer.settle_usage(generation_id)

    many = rows_read()

    assert usage_now(user).tokens_today == summed_today(user)
    # Summing the day's generations read each of the 400 in both reads.
    assert many <= few + 4, (few, many)


def test_the_migration_settles_the_finished_generations_of_each_day() -> None:
    user = alice_id()
    day_before = timezone.now() - timedelta(days=2)
    finished = [
        new_generation(unique(f"finished {index}"), status=Status.COMPLETED, completion_tokens=3)
        for index in range(3)
    ]
    Generation.objects.filter(pk=finished[0].pk).update(created_at=day_before)
    new_generation(unique("still running"), status=Status.RUNNING, completion_tokens=5)
    SettledUsage.objects.all().delete()
    migration = importlib.import_module("core.migrations.0005_settled_usage")

    migration.settle_finished(apps, SimpleNamespace(connection=connection))

    settled = {(row.user_id, row.day): row.completion_tokens for row in SettledUsage.objects.all()}
    assert settled[(user, day_before.date())] == 3
    assert settled[(user, start_of_day_utc().date())] == summed_today(user) - 5
    assert usage_now(user).tokens_today == summed_today(user)
