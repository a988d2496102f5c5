"""The worker's per-second costs: checkpoints of every running generation as one statement,
written only when their fold moved on (or as a heartbeat), and coalescing that widens with
the generations a process runs."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pytest_django.fixtures import Settings as SettingsWrapper

from core.models import Generation
from jobs import engine, runner, writer
from jobs.coalescing import (
    COALESCE_INTERVAL_S,
    COALESCE_MAX_INTERVAL_S,
    GAP_MARGIN,
    coalesce_interval_s,
)
from jobs.runner import run_generation_job
from tests.fake_openai import expected_text, token_text
from tests.jobs.support import (
    all_statements,
    checkpoint,
    claimed,
    logged_events,
    new_generation,
    run_attempt,
    unique,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("inproc_worker"),
]


def _claimed(prompt: str) -> tuple[str, int]:
    claim = claimed(prompt)
    return claim.generation_id, claim.attempt


def test_a_checkpoint_of_an_uncancelled_generation_is_one_statement() -> None:
    gid, attempt = _claimed("[fake tokens=5]")

    with CaptureQueriesContext(connection) as queries:
        result = checkpoint(
            gid, attempt, output="Hello", seq=3, completion_tokens=2, reasoning="hm"
        )

    assert result == (True, False)
    assert len(queries.captured_queries) == 1, queries.captured_queries
    row = Generation.objects.get(pk=gid)
    assert (row.output, row.reasoning, row.seq, row.completion_tokens) == ("Hello", "hm", 3, 2)


def test_a_checkpoint_after_a_cancel_still_stores_the_fold_and_reports_the_cancel() -> None:
    gid, attempt = _claimed("[fake tokens=5]")
    Generation.objects.filter(pk=gid).update(cancel_requested=True)

    assert checkpoint(gid, attempt, output="Hel", seq=2, completion_tokens=1) == (True, True)
    row = Generation.objects.get(pk=gid)
    assert (row.output, row.seq) == ("Hel", 2)
    # A superseded attempt neither writes nor hears of the cancel.
    assert checkpoint(gid, attempt + 1, output="other", seq=9, completion_tokens=9) == (
        False,
        False,
    )
    assert Generation.objects.get(pk=gid).output == "Hel"


def test_a_row_is_written_when_its_fold_moved_on_or_as_a_heartbeat_while_silent(
    settings: SettingsWrapper,
) -> None:
    # The housekeeping thread reads its interval once, at its start: with the fixture's hour.
    runner.start_worker()
    settings.CHECKPOINT_INTERVAL_S = 0.1
    settings.HEARTBEAT_TIMEOUT_S = 2.0  # a heartbeat at least every 0.5 s
    # 1.6 s of silence before the first token, then 300 tokens over 2 s.
    generation = new_generation(unique("[fake tokens=300 rate=150 ttft=1600]"))
    written: list[tuple[float, str]] = []  # (when, the output written) of each checkpoint
    original = writer.generation_checkpoint_many

    def recording(checkpoints: list[writer.Checkpoint]) -> dict[str, tuple[bool, bool]]:
        written.extend(
            (time.monotonic(), c.output) for c in checkpoints if c.generation_id == generation.id
        )
        return original(checkpoints)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writer, "generation_checkpoint_many", recording)
        run_generation_job(generation.id)

    generation.refresh_from_db()
    assert generation.output == expected_text(300)
    silent = [when for when, output in written if not output]
    streaming = [when for when, output in written if output]
    print(f"\n{len(silent)} writes in the silence, {len(streaming)} while streaming")
    # Silent for 1.6 s: a heartbeat every 0.5 s (three), not a write every 0.1 s (sixteen).
    assert 2 <= len(silent) <= 4, written
    assert all(b - a >= 0.45 for a, b in itertools.pairwise(silent)), written
    # Streaming for 2 s: its fold moves on, and it is written about every 0.1 s.
    assert len(streaming) >= 8, written


def test_coalescing_interval_widens_with_running_generations_up_to_its_ceiling() -> None:
    assert coalesce_interval_s(1) == COALESCE_INTERVAL_S
    assert coalesce_interval_s(10) == COALESCE_INTERVAL_S
    assert COALESCE_INTERVAL_S < coalesce_interval_s(15) < COALESCE_MAX_INTERVAL_S
    assert coalesce_interval_s(500) == COALESCE_MAX_INTERVAL_S <= 0.1


def test_a_busy_process_sends_fewer_larger_deltas_and_still_the_first_token_at_once() -> None:
    # 40 other generations running in this process, as the coalescing counts them.
    others = [f"gen_busy_{i}" for i in range(40)]
    for other in others:
        runner.housekeeping.track(other, 1)
    try:
        generation = new_generation(unique("[fake tokens=500 rate=250]"))
        started = time.monotonic()
        run_generation_job(generation.id)
        elapsed_s = time.monotonic() - started
    finally:
        for other in others:
            runner.housekeeping.untrack(other)

    generation.refresh_from_db()
    deltas = [event for event in logged_events(generation.id) if event["type"] == "delta"]
    print(f"\n{len(deltas)} deltas for 500 tokens in {elapsed_s:.2f} s under load")
    assert deltas[0]["text"] == token_text(0)
    assert "".join(event["text"] for event in deltas) == generation.output == expected_text(500)
    # About one delta per widest interval (less the 1.5 gaps of 4 ms by which the next token
    # would be too late; +1 for the first, +1 for the final flush): half as many as an idle
    # process sends.
    assert len(deltas) <= elapsed_s / (COALESCE_MAX_INTERVAL_S - GAP_MARGIN * 0.004) + 2


def _checkpoint(gid: str, attempt: int, text: str) -> writer.Checkpoint:
    return writer.Checkpoint(
        generation_id=gid,
        attempt=attempt,
        output=text,
        reasoning="",
        seq=len(text),
        completion_tokens=len(text),
    )


def test_checkpoints_of_every_running_generation_are_one_statement_fenced_by_attempt() -> None:
    running = [_claimed("[fake tokens=5]") for _ in range(5)]

    with CaptureQueriesContext(connection) as queries:
        results = writer.generation_checkpoint_many(
            [_checkpoint(gid, attempt, f"text of {gid}") for gid, attempt in running]
        )

    assert len(queries.captured_queries) == 1, queries.captured_queries
    assert results == {gid: (True, False) for gid, _ in running}
    rows = dict(
        Generation.objects.filter(pk__in=[g for g, _ in running]).values_list("id", "output")
    )
    assert rows == {gid: f"text of {gid}" for gid, _ in running}


def test_a_checkpoint_statement_tells_superseded_and_cancelled_rows_from_the_others() -> None:
    (ours_id, ours), (cancelled_id, cancelled), (old_id, old) = (
        _claimed("[fake tokens=5]") for _ in range(3)
    )
    Generation.objects.filter(pk=cancelled_id).update(cancel_requested=True)
    assert writer.generation_requeue(old_id, old)  # superseded: attempt + 1 is next

    results = writer.generation_checkpoint_many(
        [
            _checkpoint(ours_id, ours, "mine"),
            _checkpoint(cancelled_id, cancelled, "cancelled fold"),
            _checkpoint(old_id, old, "late write"),
        ]
    )

    assert results == {
        ours_id: (True, False),
        cancelled_id: (True, True),
        old_id: (False, False),
    }
    outputs = dict(
        Generation.objects.filter(pk__in=[ours_id, cancelled_id, old_id]).values_list(
            "id", "output"
        )
    )
    # The cancelled one's fold is stored (its runner ends it from there); the superseded
    # attempt's write changes nothing.
    assert outputs == {ours_id: "mine", cancelled_id: "cancelled fold", old_id: ""}


def test_generations_running_together_share_checkpoint_statements_and_connections(
    settings: SettingsWrapper,
) -> None:
    settings.CHECKPOINT_INTERVAL_S = 0.5  # several checkpoints in a two-second stream
    generations = [new_generation(unique("[fake tokens=300 rate=150]")) for _ in range(6)]
    idents: dict[str, set[int]] = {}
    # Claimed one after another (SQLite's shared-cache test database refuses concurrent
    # writers), then run together on the engine, as a worker's Huey threads would.
    claims = [writer.generation_claim(generation.id) for generation in generations]

    def run(claim: writer.Claim | None) -> None:
        assert claim is not None
        run_attempt(claim)

    with all_statements(threads=idents) as statements, ThreadPoolExecutor(len(claims)) as pool:
        list(pool.map(run, claims))

    for generation in generations:
        generation.refresh_from_db()
        assert generation.status == "completed"
        assert generation.output == expected_text(300)
    checkpoints = [sql for sql in statements if "CASE id WHEN" in sql]
    print(f"\n{len(checkpoints)} checkpoint statements for {len(generations)} generations")
    # Each generation is checkpointed several times in a two-second stream; one statement
    # carries several of them.
    assert max(sql.count("WHEN") // 4 for sql in checkpoints) >= 2
    assert len(checkpoints) < len(generations)
    # Everything after the claims ran on the engine's few connections.
    writers = {ident for sql in checkpoints for ident in idents[sql]}
    assert 1 <= len(writers) <= engine.DATABASE_THREADS


def test_the_huey_thread_holds_no_connection_while_its_generation_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if connection.vendor == "sqlite":
        pytest.skip("Django never closes the in-memory SQLite test database's connection")
    generation = new_generation(unique("[fake tokens=20]"))
    seen: dict[str, object] = {}
    claim = writer.generation_claim

    def claim_on(generation_id: str) -> writer.Claim | None:
        seen["claimed on"] = threading.current_thread().name.split("_")[0]
        return claim(generation_id)

    monkeypatch.setattr(writer, "generation_claim", claim_on)

    def huey_thread() -> None:
        run_generation_job(generation.id)
        seen["connection"] = connection.connection
        connection.close()

    thread = threading.Thread(target=huey_thread)
    thread.start()
    thread.join(30)

    # The claim and the attempt's database work went through the engine's threads: the
    # task's thread never connected.
    assert seen == {"claimed on": "engine-db", "connection": None}
    generation.refresh_from_db()
    assert generation.output == expected_text(20)


def test_the_attempts_task_wakes_about_once_per_delta_not_once_per_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The provider's reader takes each chunk itself (counts, cap, coalescer) and wakes the
    attempt's task only when there is text to send or the stream is over."""
    wakes = 0
    wait = engine.Attempt._wait

    async def counted(self: engine.Attempt) -> None:
        nonlocal wakes
        wakes += 1
        await wait(self)

    monkeypatch.setattr(engine.Attempt, "_wait", counted)
    generation = new_generation(unique("[fake tokens=500 rate=250]"))
    run_generation_job(generation.id)

    generation.refresh_from_db()
    deltas = [event for event in logged_events(generation.id) if event["type"] == "delta"]
    print(f"\n{wakes} wakes of the attempt's task for 500 chunks, {len(deltas)} deltas")
    assert "".join(event["text"] for event in deltas) == generation.output == expected_text(500)
    # One wake to send each delta, one when the stream ends; a timer's wake now and then
    # for a delta whose next token came late. Never one per chunk.
    assert wakes <= 2 * len(deltas) + 2
    assert wakes * 4 < 500


def test_reasoning_and_text_that_alternate_chunk_by_chunk_keep_their_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At a change of type the waiting text is set aside and sent first: the events, in seq
    order, are the chunks' texts in the order they came, each run of one type together."""
    from jobs.providers.base import Chunk

    # Runs of one type, of 1-4 chunks; one chunk carries both (reasoning first).
    plan: list[Chunk] = []
    for index in range(120):
        if (index // (1 + index % 4)) % 2:
            plan.append(Chunk(reasoning=f"r{index} "))
        else:
            plan.append(Chunk(text=f"t{index} "))
    plan.append(Chunk(reasoning="both-r ", text="both-t "))
    plan.append(Chunk(finish_reason="stop"))

    async def stream(*args: object, **kwargs: object) -> Any:
        for index, chunk in enumerate(plan):
            if index % 7 == 0:
                await asyncio.sleep(0.003)  # some chunks come alone, some in a burst
            yield chunk

    monkeypatch.setattr(engine, "astream_with_retry", stream)
    generation = new_generation(unique("alternating"))
    run_generation_job(generation.id)

    expected: list[tuple[str, str]] = []
    for chunk in plan:
        for kind, text in (("reasoning", chunk.reasoning), ("delta", chunk.text)):
            if not text:
                continue
            if expected and expected[-1][0] == kind:
                expected[-1] = (kind, expected[-1][1] + text)
            else:
                expected.append((kind, text))
    logged = logged_events(generation.id)
    assert [event["seq"] for event in logged] == list(range(1, len(logged) + 1))
    sent = [(event["type"], event["text"]) for event in logged if event["type"] != "done"]
    # Merge the coalescer's several events of one run, to compare runs with runs.
    runs: list[tuple[str, str]] = []
    for kind, text in sent:
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1] + text)
        else:
            runs.append((kind, text))
    assert runs == expected
    generation.refresh_from_db()
    assert generation.output == "".join(text for kind, text in expected if kind == "delta")
    assert generation.reasoning == "".join(t for kind, t in expected if kind == "reasoning")
    assert generation.completion_tokens == len(plan) - 1 and generation.status == "completed"
