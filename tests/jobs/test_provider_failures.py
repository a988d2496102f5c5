"""Provider failures through the real worker, the real SDK and the fake provider's directives."""

from __future__ import annotations

import httpx

from jobs.events import fold
from tests.conftest import create, wait_terminal
from tests.fake_openai import expected_text
from tests.harness import FakeLLM, Service
from tests.jobs.support import assert_gap_free, requests_with, unique, watch


def test_transient_503s_before_first_token_are_retried_invisibly(
    service: Service, alice: httpx.Client, fake_llm: FakeLLM
) -> None:
    prompt = unique("retry me [fake tokens=60 fail=503x2]")
    generation = create(alice, prompt)
    subscriber = watch(service, generation["id"])

    final = wait_terminal(alice, generation["id"])
    received = subscriber.value()

    assert final["status"] == "completed"
    assert final["finish_reason"] == "stop"
    assert final["output"] == expected_text(60)
    # Two refused requests, then the one that streamed: all within the first attempt, since
    # nothing had been shown to subscribers yet.
    assert len(requests_with(fake_llm.requests(), prompt)) == 3
    assert final["attempt"] == 1
    assert "reset" not in [message["type"] for message in received]
    assert fold(received) == final["output"]


def test_provider_400_fails_at_once_without_retry(
    service: Service, alice: httpx.Client, fake_llm: FakeLLM
) -> None:
    prompt = unique("bad request [fake tokens=60 fail=400x1]")
    generation = create(alice, prompt)
    subscriber = watch(service, generation["id"])

    final = wait_terminal(alice, generation["id"])
    received = subscriber.value()

    assert final["status"] == "failed"
    assert final["finish_reason"] == "error"
    assert final["error"]["code"] == "provider_bad_request"
    assert final["error"]["message"]
    assert final["output"] == ""
    assert final["attempt"] == 1
    # A 400-class answer would fail the same way again: retrying only costs money.
    assert len(requests_with(fake_llm.requests(), prompt)) == 1
    assert_gap_free(received)
    done = received[-1]
    assert done["status"] == "failed"
    assert done["finish_reason"] == "error"
    assert done["error"] == final["error"]
    assert done["seq"] == final["seq"]
    assert fold(received) == ""


def test_stream_dropped_mid_way_restarts_as_new_attempt_with_reset(
    service: Service, alice: httpx.Client, fake_llm: FakeLLM
) -> None:
    # Only the first request with this prompt is cut, after 40 of 120 tokens.
    prompt = unique("drop me [fake tokens=120 rate=100 drop=40x1]")
    generation = create(alice, prompt)
    subscriber = watch(service, generation["id"])

    final = wait_terminal(alice, generation["id"])
    received = subscriber.value()

    assert final["status"] == "completed"
    assert final["attempt"] == 2
    assert final["output"] == expected_text(120)
    assert len(requests_with(fake_llm.requests(), prompt)) == 2
    assert_gap_free(received)
    resets = [index for index, message in enumerate(received) if message["type"] == "reset"]
    assert len(resets) == 1
    reset = received[resets[0]]
    assert reset["attempt"] == 2
    # Before the reset the subscriber saw part of the first attempt: text that the reset
    # tells it to throw away, or the new attempt's text would be appended to it.
    shown_before_reset = fold(received[: resets[0]])
    assert shown_before_reset
    assert expected_text(40).startswith(shown_before_reset)
    assert fold(received) == final["output"]
    assert received[-1]["status"] == "completed"
    assert received[-1]["seq"] == final["seq"]
