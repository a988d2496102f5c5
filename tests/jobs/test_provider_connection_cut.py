"""A provider that holds its connection open after the answer (or falls silent mid-stream)
has the connection cut by the worker when it gives up on it, not left to the read timeout:
no thread and no connection stay behind for minutes per generation."""

from __future__ import annotations

import time

import pytest
from pytest_django.fixtures import Settings

from jobs.runner import run_generation_job
from tests.fake_openai import expected_text
from tests.harness import wait_until
from tests.jobs.conftest import InProcessFakeLLM
from tests.jobs.support import new_generation, unique

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("inproc_worker"),
]


def streams_being_sent(fake: InProcessFakeLLM) -> int:
    return fake.fake.streaming


def test_connection_held_open_after_the_answer_is_cut_once_the_grace_ends(
    inproc_worker: InProcessFakeLLM, settings: Settings
) -> None:
    settings.PROVIDER_FINISH_GRACE_S = 0.5
    # The read timeout alone would keep the connection for 5 minutes.
    settings.PROVIDER_FIRST_BYTE_TIMEOUT_S = 300.0
    generation = new_generation(unique("[fake tokens=20 after_finish=hang usage=none]"))

    started = time.monotonic()
    run_generation_job(generation.id)

    generation.refresh_from_db()
    assert generation.status == "completed"
    assert generation.finish_reason == "stop"
    assert generation.output == expected_text(20)
    assert time.monotonic() - started < 5
    # The fake sees its client go away: the worker cut the connection.
    wait_until(lambda: streams_being_sent(inproc_worker) == 0, timeout_s=3)
