"""A full generation through the real worker and the fake provider, watched over SSE."""

from __future__ import annotations

import httpx

from jobs.events import fold
from tests.conftest import create, wait_terminal
from tests.fake_openai import expected_text
from tests.harness import messages, stream_events


def test_sse_fold_of_full_generation_equals_final_output(alice: httpx.Client) -> None:
    generation = create(alice, "tell me [fake tokens=300 rate=300]")

    status, frames, headers = stream_events(alice, generation["id"])

    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    received = messages(frames)
    assert received[0]["type"] == "snapshot"
    assert received[-1]["type"] == "done"
    assert received[-1]["status"] == "completed"
    seqs = [m["seq"] for m in received[1:]]
    assert seqs == list(range(received[0]["seq"] + 1, received[-1]["seq"] + 1))
    final = alice.get(f"/api/v1/generations/{generation['id']}").json()
    assert fold(received) == final["output"] == expected_text(300)
    assert final["seq"] == received[-1]["seq"]
    assert final["usage"]["completion_tokens"] == 300


def test_resume_with_last_event_id_mid_stream_continues_without_gap(alice: httpx.Client) -> None:
    generation = create(alice, "resume me [fake tokens=200 rate=100]")
    _, first, _ = stream_events(alice, generation["id"], stop_after=8)
    last_id = int(first[-1]["id"])

    _, rest, _ = stream_events(alice, generation["id"], last_event_id=last_id)

    assert rest[0]["data"]["seq"] == last_id + 1
    final = wait_terminal(alice, generation["id"])
    assert fold(messages(first) + messages(rest)) == final["output"] == expected_text(200)


def test_subscribing_at_or_after_done_gets_204(alice: httpx.Client) -> None:
    generation = create(alice, "short [fake tokens=5]")
    final = wait_terminal(alice, generation["id"])

    assert stream_events(alice, generation["id"], after=final["seq"])[0] == 204
    assert stream_events(alice, generation["id"], last_event_id=final["seq"] + 10)[0] == 204
    status, frames, _ = stream_events(alice, generation["id"], after=final["seq"] - 1)
    assert status == 200
    assert [f["data"]["type"] for f in frames] == ["done"]
