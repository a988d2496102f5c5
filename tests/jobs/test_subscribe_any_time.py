"""Subscribers that arrive at any moment of a generation's life all end with its output."""

from __future__ import annotations

from typing import Any

import httpx

from jobs.events import fold
from tests.conftest import create, wait_terminal
from tests.fake_openai import expected_text
from tests.harness import Service, messages, stream_events, wait_until
from tests.jobs.support import assert_gap_free, unique, watch


def test_subscribers_before_during_and_after_the_stream_fold_to_the_output(
    service: Service, alice: httpx.Client
) -> None:
    # 1.5 s before the first token, then 200 tokens over 2 s.
    generation = create(alice, unique("everyone [fake tokens=200 rate=100 ttft=1500]"))
    generation_id = generation["id"]
    early = watch(service, generation_id)

    def running_with_text() -> dict[str, Any] | None:
        body: dict[str, Any] = alice.get(f"/api/v1/generations/{generation_id}").json()
        return body if body["status"] == "running" and body["output"] else None

    wait_until(running_with_text, timeout_s=15)
    during = watch(service, generation_id)
    final = wait_terminal(alice, generation_id)
    status, frames, _ = stream_events(alice, generation_id)
    assert status == 200
    after = messages(frames)

    before = early.value()
    middle = during.value()
    assert final["status"] == "completed"
    assert final["output"] == expected_text(200)
    # Each really arrived when intended: before any text, with some text, after the end.
    assert before[0]["type"] == "snapshot" and before[0]["text"] == ""
    assert middle[0]["type"] == "snapshot" and middle[0]["status"] == "running"
    assert any(message["type"] == "delta" for message in middle)
    assert [message["type"] for message in after] == ["snapshot", "done"]
    for received in (before, middle, after):
        assert_gap_free(received)
        assert received[-1]["seq"] == final["seq"]
        assert fold(received) == final["output"]
