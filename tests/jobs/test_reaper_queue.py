"""Queued generations whose task may have been lost are enqueued again, once per timeout."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from core.models import Generation, Status
from jobs import reaper
from tests.jobs.support import new_generation, unique

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("inproc_worker"),
]


def test_a_long_queued_generation_is_enqueued_again_once_per_heartbeat_timeout() -> None:
    generation = new_generation(unique("lost task"))
    timeout_s = settings.HEARTBEAT_TIMEOUT_S
    later = timezone.now() + timedelta(seconds=timeout_s + 1)

    first = reaper.reap_stale(heartbeat_timeout_s=timeout_s, max_attempts=3, now=later)
    again = reaper.reap_stale(heartbeat_timeout_s=timeout_s, max_attempts=3, now=later)
    much_later = later + timedelta(seconds=timeout_s + 1)
    third = reaper.reap_stale(heartbeat_timeout_s=timeout_s, max_attempts=3, now=much_later)

    assert (first, again, third) == (1, 0, 1)
    row = Generation.objects.get(pk=generation.pk)
    assert row.status == Status.QUEUED
    assert row.heartbeat_at == much_later
