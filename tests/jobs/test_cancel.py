"""POST /generations/{id}/cancel, on a streaming generation and on one still in the queue."""

from __future__ import annotations

from typing import Any

import httpx

from jobs.events import fold
from tests.conftest import create, wait_terminal
from tests.fake_openai import expected_text
from tests.harness import FakeLLM, Service, messages, stream_events, wait_until
from tests.jobs.support import assert_gap_free, requests_with, unique, watch


def _get(client: httpx.Client, generation_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/api/v1/generations/{generation_id}").json()
    return body


def test_cancel_mid_stream_stops_with_a_prefix_and_done_cancelled(
    service: Service, alice: httpx.Client
) -> None:
    # 200 tokens at 20/s would take 10 s.
    generation = create(alice, unique("slow [fake tokens=200 rate=20]"))
    subscriber = watch(service, generation["id"])
    # Mid-stream: the first checkpoint (after ~1 s) has text in the row.
    wait_until(lambda: _get(alice, generation["id"])["output"], timeout_s=15)

    response = alice.post(f"/api/v1/generations/{generation['id']}/cancel")

    assert response.status_code == 200
    cancelled = response.json()
    # The worker reads the flag between chunks (every 50 ms here), well within the time the
    # cancel request waits for it, so the reply already shows the final state.
    assert cancelled["status"] == "cancelled"
    assert cancelled["finish_reason"] == "cancelled"
    final = _get(alice, generation["id"])
    assert final == cancelled
    tokens = final["usage"]["completion_tokens"]
    assert 0 < tokens < 200
    # Exactly the tokens read before the cancel: a non-empty prefix of the full answer.
    assert final["output"] == expected_text(tokens)
    received = subscriber.value()
    assert_gap_free(received)
    assert received[-1]["status"] == "cancelled"
    assert received[-1]["finish_reason"] == "cancelled"
    assert received[-1]["seq"] == final["seq"]
    assert fold(received) == final["output"]
    # Idempotent: a second cancel returns the terminal generation unchanged.
    again = alice.post(f"/api/v1/generations/{generation['id']}/cancel")
    assert again.status_code == 200
    assert again.json() == final


def test_cancel_while_waiting_for_the_first_token_ends_with_no_text(
    service: Service, alice: httpx.Client
) -> None:
    # The worker holds the provider's stream, which is silent for 1.5 s.
    generation = create(alice, unique("thinking [fake tokens=100 rate=50 ttft=1500]"))
    subscriber = watch(service, generation["id"])
    wait_until(lambda: _get(alice, generation["id"])["status"] == "running", timeout_s=15)

    response = alice.post(f"/api/v1/generations/{generation['id']}/cancel")

    assert response.status_code == 200
    # The worker sees the cancel at the first chunk, and reads nothing after it.
    final = wait_terminal(alice, generation["id"])
    assert final["status"] == "cancelled"
    assert final["finish_reason"] == "cancelled"
    assert final["output"] == ""
    received = subscriber.value()
    assert_gap_free(received)
    assert [message["type"] for message in received] == ["snapshot", "done"]
    assert received[-1]["status"] == "cancelled"
    assert fold(received) == ""


def test_cancelling_a_queued_generation_means_it_never_starts(
    single_worker_service: Service, fake_llm: FakeLLM
) -> None:
    with single_worker_service.client("alice") as client:
        # The only worker thread is busy with this one for ~1.5 s...
        blocker = create(client, unique("busy [fake tokens=30 rate=20]"))
        wait_until(lambda: _get(client, blocker["id"])["status"] == "running", timeout_s=15)
        # ...so these two wait in the queue, in this order.
        victim_prompt = unique("never [fake tokens=30]")
        victim = create(client, victim_prompt)
        sentinel = create(client, unique("after [fake tokens=5]"))
        assert _get(client, victim["id"])["status"] == "queued"

        response = client.post(f"/api/v1/generations/{victim['id']}/cancel")

        assert response.status_code == 200
        cancelled = response.json()
        assert cancelled["status"] == "cancelled"
        assert cancelled["finish_reason"] == "cancelled"
        assert cancelled["output"] == ""
        assert cancelled["started_at"] is None
        # The queue is first in, first out: once the sentinel has run, the worker has taken
        # the victim's task too, and found nothing to do.
        assert wait_terminal(client, sentinel["id"])["status"] == "completed"
        assert wait_terminal(client, blocker["id"])["status"] == "completed"
        assert _get(client, victim["id"]) == cancelled
        assert requests_with(fake_llm.requests(), victim_prompt) == []
        status, frames, _ = stream_events(client, victim["id"])
        assert status == 200
        received = messages(frames)
        assert [message["type"] for message in received] == ["snapshot", "done"]
        assert received[-1]["status"] == "cancelled"
        assert received[-1]["seq"] == cancelled["seq"]
        assert fold(received) == ""
