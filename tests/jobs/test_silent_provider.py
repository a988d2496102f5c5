"""A provider that goes silent mid-stream: what it already sent reaches subscribers at once,
and a cancel is seen while it stays silent."""

from __future__ import annotations

import time

import httpx

from tests.conftest import create, wait_terminal
from tests.fake_openai import expected_text
from tests.harness import Service, messages, stream_events, wait_until
from tests.jobs.support import unique


def test_text_received_before_a_provider_stall_is_delivered_without_waiting(
    service: Service, alice: httpx.Client
) -> None:
    # 12 tokens quickly, then the provider says nothing more (and keeps the connection open).
    generation = create(alice, unique("stall [fake tokens=50 rate=200 hang=12]"))
    wanted = expected_text(12)

    def row_output() -> str:
        body: dict[str, str] = alice.get(f"/api/v1/generations/{generation['id']}").json()
        return body["output"]

    # A read shows the text at once (the row's checkpoint with the log after it) ...
    wait_until(lambda: row_output() == wanted, timeout_s=15)

    def snapshot_text() -> str:
        _, frames, _ = stream_events(alice, generation["id"], stop_after=1)
        snapshot = messages(frames)[0]
        assert snapshot["type"] == "snapshot"
        return str(snapshot["text"])

    # ... and the row itself is checkpointed while the provider is silent, within
    # CHECKPOINT_INTERVAL_S of the last text: a fresh subscriber's snapshot has it all.
    wait_until(lambda: snapshot_text() == wanted, timeout_s=15)

    started = time.monotonic()
    response = alice.post(f"/api/v1/generations/{generation['id']}/cancel")

    # Seen within a tick of the silent stream, not at the provider's 60 s read timeout.
    assert response.json()["status"] == "cancelled"
    assert time.monotonic() - started < 2.5
    final = wait_terminal(alice, generation["id"])
    assert final["output"] == wanted
    assert final["finish_reason"] == "cancelled"
