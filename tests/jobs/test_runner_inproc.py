"""The runner in this process: database writes, coalescing, and the order of the last writes.

Each test creates a Generation row and runs ``run_generation_job`` synchronously against the
in-process fake provider, on this run's tier (SQLite + in-memory buffer, or MySQL + Redis).
"""

from __future__ import annotations

import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from core.models import Generation
from jobs import engine, events, writer
from jobs.coalescing import COALESCE_INTERVAL_S, GAP_MARGIN
from jobs.eventlog import event_log
from jobs.events import fold
from jobs.runner import STOPPING_RESCHEDULE_S, run_generation_job
from tests.fake_openai import expected_text, token_text
from tests.jobs.support import all_statements, logged_events, new_generation, run_attempt, unique

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("inproc_worker"),
]

# An UPDATE or INSERT of the generations table, as SQLite ("...") or MySQL (`...`) quote it.
GENERATION_WRITE = re.compile(r"^\s*(UPDATE|INSERT\s+INTO)\s+[`\"]?api_generation[`\"]?\s", re.I)


def test_database_writes_per_generation_are_bounded_by_the_checkpoint_interval(
    settings: SettingsWrapper,
) -> None:
    settings.CHECKPOINT_INTERVAL_S = 0.5
    # 500 tokens at 250 tokens/s: a two-second stream.
    generation = new_generation(unique("[fake tokens=500 rate=250]"))

    started = time.monotonic()
    with all_statements() as statements:
        run_generation_job(generation.id)
    elapsed_s = time.monotonic() - started

    writes = [sql for sql in statements if GENERATION_WRITE.match(sql)]
    print(f"\n{len(writes)} writes to api_generation for 500 tokens in {elapsed_s:.2f} s")
    generation.refresh_from_db()
    assert generation.status == "completed"
    assert generation.output == expected_text(500)
    # Two writes happen once: the claim (queued -> running, with its start and token cap in
    # the same UPDATE) and the final row. Checkpoints are at least CHECKPOINT_INTERVAL_S
    # apart, measured from the attempt's start, so there are at most floor(elapsed /
    # interval) of them; a two-second stream has at least one. They are counted on every
    # connection of the process: the worker's engine writes them from its own database
    # threads. (A heartbeat alone is written after HEARTBEAT_TIMEOUT_S / 4 without one.)
    interval_s = settings.CHECKPOINT_INTERVAL_S
    assert 2 + 1 <= len(writes) <= 2 + math.floor(elapsed_s / interval_s), writes
    assert len(writes) * 50 < 500


def test_deltas_are_coalesced_contiguous_and_end_with_done_at_the_row_seq() -> None:
    generation = new_generation(unique("[fake tokens=500 rate=250]"))

    started = time.monotonic()
    run_generation_job(generation.id)
    elapsed_s = time.monotonic() - started

    generation.refresh_from_db()
    logged = logged_events(generation.id)
    deltas = [event for event in logged if event["type"] == "delta"]
    print(f"\n{len(deltas)} deltas for 500 tokens in {elapsed_s:.2f} s")
    assert [event["seq"] for event in logged] == list(range(1, len(logged) + 1))
    assert [event["type"] for event in logged] == ["delta"] * len(deltas) + ["done"]
    assert logged[-1]["seq"] == generation.seq
    assert logged[-1]["status"] == "completed"
    # The first token goes out alone and at once: that is the time to first token.
    assert deltas[0]["text"] == token_text(0)
    assert "".join(event["text"] for event in deltas) == generation.output == expected_text(500)
    # A later delta goes out when its oldest text has waited about COALESCE_INTERVAL_S, less
    # the 1.5 gaps (4 ms here) by which the next token would be too late (+1 for the first,
    # +1 for the flush at the end): ~50 messages instead of 500.
    assert len(deltas) <= elapsed_s / (COALESCE_INTERVAL_S - GAP_MARGIN * 0.004) + 2
    assert len(deltas) * 4 < 500


@pytest.mark.parametrize(
    ("directive", "status", "finish_reason"),
    [
        ("[fake tokens=50]", "completed", "stop"),
        ("[fake tokens=50 fail=400x1]", "failed", "error"),
    ],
)
def test_row_holds_the_final_output_before_done_is_published(
    monkeypatch: pytest.MonkeyPatch, directive: str, status: str, finish_reason: str
) -> None:
    generation = new_generation(unique(directive))
    rows_at_done: list[dict[str, Any]] = []

    original_publish = engine.Batcher.publish

    def publish_checking_row(
        batcher: engine.Batcher, generation_id: str, attempt: int, event: dict[str, Any]
    ) -> Any:
        # Read the row the moment the worker is about to publish `done`: a subscriber that
        # sees `done` and then GETs the generation must find it complete. (From a thread:
        # the worker's event loop runs no database work itself.)
        if event["type"] == "done":
            with ThreadPoolExecutor(1) as reader:
                rows_at_done.append(
                    reader.submit(
                        lambda: dict(
                            Generation.objects.values(
                                "status", "output", "seq", "finish_reason", "usage"
                            )
                            .filter(pk=generation_id)
                            .get()
                        )
                    ).result()
                )
        return original_publish(batcher, generation_id, attempt, event)

    monkeypatch.setattr(engine.Batcher, "publish", publish_checking_row)

    run_generation_job(generation.id)

    logged = logged_events(generation.id)
    done = logged[-1]
    assert done["type"] == "done"
    assert rows_at_done == [
        {
            "status": status,
            "output": fold(logged),
            "seq": done["seq"],
            "finish_reason": finish_reason,
            "usage": done["usage"],
        }
    ]
    generation.refresh_from_db()
    assert generation.status == status
    assert generation.output == (expected_text(50) if status == "completed" else "")


def test_cancel_while_the_provider_fails_before_any_text_ends_cancelled() -> None:
    # The provider refuses the first request (a retryable 503); the user cancels while the
    # worker waits for its answer. The retry loop gives up because of the cancel, and the
    # generation must end as the user asked, not as a provider failure.
    generation = new_generation(unique("[fake tokens=50 fail=503x1]"))
    claim = writer.generation_claim(generation.id)
    assert claim is not None
    # What POST /cancel does to a running generation.
    Generation.objects.filter(pk=generation.id).update(cancel_requested=True)
    event_log().request_cancel(generation.id)

    run_attempt(claim)

    generation.refresh_from_db()
    logged = logged_events(generation.id)
    assert generation.status == "cancelled"
    assert generation.finish_reason == "cancelled"
    assert generation.error is None
    assert generation.output == ""
    assert logged == [
        events.done(
            generation.id,
            1,
            status="cancelled",
            finish_reason="cancelled",
            usage=generation.usage,
            error=None,
        )
    ]


def test_a_stopping_worker_hands_back_on_the_schedule_not_the_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a stopping process gives back waits on Huey's schedule, where only a scheduler
    moves it to the queue: on the queue, one of the stopping process's own idle threads could
    take it and exit with it (Huey has no acknowledgement)."""
    enqueued: list[tuple[str, float]] = []
    monkeypatch.setattr(
        writer,
        "enqueue",
        lambda generation_id, delay_s=0.0: enqueued.append((generation_id, delay_s)),
    )
    generation = new_generation(unique("[fake tokens=400 rate=100]"))
    claim = writer.generation_claim(generation.id)
    assert claim is not None
    stopping = threading.Event()
    threading.Timer(0.5, stopping.set).start()

    engine.engine().run_attempt(claim, stopping=stopping)

    generation.refresh_from_db()
    assert generation.status == "queued"
    assert generation.attempt == claim.attempt  # a stop is not a failure
    assert enqueued == [(generation.id, STOPPING_RESCHEDULE_S)]
    assert STOPPING_RESCHEDULE_S > 0
