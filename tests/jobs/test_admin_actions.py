"""The admin's actions and change page with the real runner in this process (as the other
in-process tests here run it): cancel stops a running generation, retry makes one that runs,
the change page shows the event log of a real generation."""

from __future__ import annotations

import threading
import time

import pytest
from django.contrib.admin.utils import quote
from django.db import connection
from django.test import Client
from django.urls import reverse

from core.models import Generation
from jobs import writer
from jobs.runner import run_generation_job
from tests.api.admin_support import action, row
from tests.fake_openai import expected_text
from tests.harness import wait_until
from tests.jobs.support import logged_events, run_attempt, unique
from tests.tier_env import TIER

pytestmark = [pytest.mark.django_db(transaction=True)]


def run_in_thread(generation_id: str) -> threading.Thread:
    """The real runner, as a worker thread runs it, with its own database connection."""

    def run() -> None:
        try:
            run_generation_job(generation_id)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.usefixtures("inproc_worker")
def test_change_view_shows_the_output_and_the_event_log_read_only(admin_client: Client) -> None:
    generation = row("alice", prompt=unique("[fake tokens=7]"))
    run_generation_job(generation.pk)
    generation.refresh_from_db()
    logged = logged_events(generation.pk)

    response = admin_client.get(reverse("admin:api_generation_change", args=[quote(generation.pk)]))

    assert response.status_code == 200
    html = response.content.decode()
    assert generation.output == expected_text(7)
    assert "γάμμα" in html  # the output, as text
    assert f"{len(logged)} events, up to seq {generation.seq}" in html
    # Read-only: no input for any field of the row.
    for name in ("output", "status", "prompt", "seq", "attempt", "max_tokens"):
        assert f'name="{name}"' not in html, name


@pytest.mark.usefixtures("inproc_worker")
def test_cancel_action_on_a_claimed_generation_stops_its_runner_at_the_first_chunk(
    admin_client: Client,
) -> None:
    # A worker holds it (running, its fence taken) but has not read from the provider yet.
    generation = row("alice", prompt=unique("[fake tokens=200 rate=20]"), max_tokens=1000)
    claim = writer.generation_claim(generation.pk)
    assert claim is not None

    response = action(admin_client, "cancel_generations", generation.pk)

    assert "Asked the worker to stop 1" in response.content.decode()
    started = time.monotonic()
    run_attempt(claim)
    assert time.monotonic() - started < 5  # not the ten seconds of the whole answer
    generation.refresh_from_db()
    assert (generation.status, generation.finish_reason) == ("cancelled", "cancelled")
    logged = logged_events(generation.pk)
    assert logged[-1]["type"] == "done"
    assert (logged[-1]["status"], logged[-1]["seq"]) == ("cancelled", generation.seq)


@pytest.mark.skipif(TIER != "distributed", reason="SQLite's in-process test database locks")
@pytest.mark.usefixtures("inproc_worker")
def test_cancel_action_stops_a_streaming_generation_and_subscribers_get_done_cancelled(
    admin_client: Client,
) -> None:
    # 200 tokens at 20/s: ten seconds unless stopped.
    generation = row("alice", prompt=unique("[fake tokens=200 rate=20]"), max_tokens=1000)
    worker = run_in_thread(generation.pk)
    # Mid-stream: deltas are in the log.
    wait_until(lambda: len(logged_events(generation.pk)) >= 3, timeout_s=15)
    started = time.monotonic()

    response = action(admin_client, "cancel_generations", generation.pk)

    assert response.status_code == 200
    assert "Asked the worker to stop 1" in response.content.decode()
    worker.join(10)
    assert not worker.is_alive()
    assert time.monotonic() - started < 5
    generation.refresh_from_db()
    assert (generation.status, generation.finish_reason) == ("cancelled", "cancelled")
    assert 0 < generation.completion_tokens < 200
    assert generation.output == expected_text(generation.completion_tokens)
    logged = logged_events(generation.pk)
    assert logged[-1]["type"] == "done"
    assert (logged[-1]["status"], logged[-1]["seq"]) == ("cancelled", generation.seq)


@pytest.mark.usefixtures("inproc_worker")
def test_retry_action_makes_a_new_generation_with_the_same_request_and_leaves_the_failed_one(
    admin_client: Client,
) -> None:
    failed = row(
        "alice",
        prompt=unique("[fake tokens=4]"),
        system="be brief",
        temperature=0.5,
        max_tokens=40,
        status="failed",
        finish_reason="error",
        seq=5,
        error={"code": "provider_error", "message": "The model provider failed (http_503)."},
    )
    completed = row("alice", status="completed")

    response = action(admin_client, "retry_failed_generations", failed.pk, completed.pk)

    assert response.status_code == 200
    retry = Generation.objects.get(retry_of=failed)
    assert (retry.user_id, retry.prompt, retry.system) == (
        failed.user_id,
        failed.prompt,
        "be brief",
    )
    assert (retry.model, retry.max_tokens, retry.temperature) == ("gpt-4o-mini", 40, 0.5)
    assert (retry.status, retry.seq, retry.attempt) == ("queued", 0, 1)
    text = response.content.decode()
    assert retry.pk in text  # linked from the message
    assert "Left 1 alone" in text
    # The failed one is untouched: its clients saw its `done`, and nothing follows it.
    before = (failed.status, failed.seq, failed.attempt)
    failed.refresh_from_db()
    assert (failed.status, failed.seq, failed.attempt) == before
    assert not Generation.objects.filter(retry_of=completed).exists()
    # The retry runs like any generation.
    run_generation_job(retry.pk)
    retry.refresh_from_db()
    assert (retry.status, retry.output) == ("completed", expected_text(4))

    # Retrying the same failed generation again makes no second one.
    again = action(admin_client, "retry_failed_generations", failed.pk)
    assert f"already retried as {retry.pk}" in again.content.decode()
    assert Generation.objects.filter(retry_of=failed).count() == 1
