"""A create's and a claim's limit checks read the user's usage in the statement that takes
the user's row lock (core.selectors: `usage_now(lock=True)`, `quota_left_today(lock=True)`).
The reading must come once the lock is granted: a create that waited for another to commit
must count the generation that one made, or two creates race past a limit.

On MySQL (SQLite serialises whole transactions instead): one thread holds the lock and
creates a generation, the test's thread asks while it holds it, and the first commits later.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction

from core.models import Generation, Status
from core.selectors import lock_user, quota_left_today, usage_now
from tests.tier_env import TIER

pytestmark = [
    pytest.mark.skipif(TIER != "distributed", reason="MySQL's row locks"),
    pytest.mark.django_db(transaction=True),
]

T = TypeVar("T")
HOLD_S = 0.5


@pytest.fixture
def user() -> User:
    return User.objects.create(username="usage-lock")


@pytest.fixture
def holder(user: User) -> Iterator[Callable[[Status, int | None], threading.Event]]:
    """Start a thread that takes the user's lock, creates a generation of `status`, and
    commits HOLD_S later; the event is set once it holds the lock and has created it."""
    threads: list[threading.Thread] = []

    def start(status: Status, token_cap: int | None) -> threading.Event:
        holding = threading.Event()

        def run() -> None:
            try:
                with transaction.atomic():
                    lock_user(user.pk)
                    Generation.objects.create(
                        user=user,
                        model="gpt-4o-mini",
                        prompt="held",
                        max_tokens=100,
                        status=status,
                        token_cap=token_cap,
                    )
                    holding.set()
                    time.sleep(HOLD_S)
            finally:
                connection.close()

        thread = threading.Thread(target=run)
        thread.start()
        threads.append(thread)
        assert holding.wait(10)
        return holding

    yield start
    for thread in threads:
        thread.join(10)


def _timed(read: Callable[[], T]) -> tuple[T, float]:
    started = time.monotonic()
    with transaction.atomic():
        value = read()
    return value, time.monotonic() - started


def test_a_create_that_waits_for_the_lock_counts_what_the_holder_created(
    user: User, holder: Callable[[Status, int | None], threading.Event]
) -> None:
    holder(Status.QUEUED, None)
    # Without the lock the reading does not wait, and the holder's generation is not there
    # yet: what the locked reading must not see.
    assert usage_now(user.pk).active == 0
    usage, waited_s = _timed(lambda: usage_now(user.pk, lock=True))
    assert waited_s >= HOLD_S / 2
    assert usage.active == 1


def test_a_claim_that_waits_for_the_lock_counts_the_holders_reservation(
    user: User, holder: Callable[[Status, int | None], threading.Event]
) -> None:
    holder(Status.RUNNING, 60)
    assert quota_left_today(user.pk, excluding="none") == settings.TOKENS_PER_DAY
    left, waited_s = _timed(lambda: quota_left_today(user.pk, excluding="none", lock=True))
    assert waited_s >= HOLD_S / 2
    assert left == settings.TOKENS_PER_DAY - 60


def test_the_locked_reading_is_the_unlocked_one_when_nothing_holds_the_lock(
    user: User,
) -> None:
    Generation.objects.create(
        user=user, model="gpt-4o-mini", prompt="p", max_tokens=9, status=Status.RUNNING
    )
    with transaction.atomic():
        assert usage_now(user.pk, lock=True) == usage_now(user.pk)
        assert quota_left_today(user.pk, excluding="x", lock=True) == quota_left_today(
            user.pk, excluding="x"
        )
