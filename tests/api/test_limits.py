"""The limits of PROTOCOL §6, black-box against the running service, on REST and WebSocket.

Each limit is tested twice: from its setting (a service started with tight settings) and as a
per-user override (a UserLimits row on the session service, whose settings are generous). Each
test has users of its own, so one test's generations never count toward another's limits.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.api.support import assert_error, fresh_rate_window
from tests.conftest import create, wait_terminal
from tests.fake_openai import expected_text
from tests.harness import FakeLLM, Service, make_token, wait_until
from tests.jobs.support import requests_with, unique
from tests.realtime.wsclient import (
    frames_until_close,
    open_ws,
    recv,
    recv_type,
    send,
    session,
)
from tests.tier_env import TIER
from tests.wire import decoded_event

TIGHT_ENV = {
    "RATE_LIMIT_PER_MINUTE": "4",
    "MAX_ACTIVE_GENERATIONS": "2",
    "TOKENS_PER_DAY": "40",
    "MAX_CONNECTIONS_PER_USER": "1",
}
# A generation that stays active until cancelled (the fake goes silent after one token).
LONG_PROMPT = "keep running [fake tokens=100 hang=1]"


@pytest.fixture(scope="module")
def tight_service(fake_llm: FakeLLM) -> Iterator[Service]:
    """The limits from settings (TIGHT_ENV). Distributed: two Daphne processes, so that a
    test can show a limit is one for the whole service, not one per process."""
    instance = Service(fake_llm, env=TIGHT_ENV, webs=2 if TIER == "distributed" else 1).start()
    yield instance
    instance.stop()


def new_user(prefix: str = "limits") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def set_limits(service: Service, username: str, **limits: int) -> None:
    """Per-user overrides, written as an operator does (a UserLimits row)."""
    service.django(
        "from django.contrib.auth import get_user_model\n"
        "from core.models import UserLimits\n"
        f"user, _ = get_user_model().objects.get_or_create(username={username!r})\n"
        f"UserLimits.objects.update_or_create(user=user, defaults={limits!r})\n"
    )


def post(
    client: httpx.Client, prompt: str = "limit [fake tokens=1]", **fields: Any
) -> httpx.Response:
    response: httpx.Response = client.post("/api/v1/generations", json={"prompt": prompt, **fields})
    return response


def post_and_finish(client: httpx.Client) -> httpx.Response:
    """A create that, if accepted, has ended before the next: so that the tight service's
    MAX_ACTIVE_GENERATIONS never refuses it first."""
    response: httpx.Response = post(client)
    if response.status_code == 202:
        wait_terminal(client, response.json()["id"])
    return response


def assert_retry_after(response: httpx.Response, at_most_s: int) -> int:
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= at_most_s, retry_after
    return retry_after


def cancel_all(client: httpx.Client, generation_ids: list[str]) -> None:
    for generation_id in generation_ids:
        client.post(f"/api/v1/generations/{generation_id}/cancel")


# --- Requests per minute ---------------------------------------------------------------------


def test_rate_limit_setting_refuses_the_fifth_create_in_a_minute_with_retry_after(
    tight_service: Service,
) -> None:
    fresh_rate_window()
    with tight_service.client(new_user()) as client:
        statuses = [post_and_finish(client).status_code for _ in range(4)]
        refused = post(client)

    assert statuses == [202] * 4
    assert_error(refused, 429, "rate_limited")
    assert_retry_after(refused, 60)


@pytest.mark.skipif(TIER != "distributed", reason="two Daphne processes share Redis")
def test_rate_limit_is_shared_by_two_daphne_processes(tight_service: Service) -> None:
    fresh_rate_window()
    username = new_user()
    accepted_by_web = [0, 0]
    refused = []
    with (
        tight_service.client(username, web=0) as first,
        tight_service.client(username, web=1) as second,
    ):
        for index in range(8):
            web = index % 2
            response = post_and_finish((first, second)[web])
            if response.status_code == 202:
                accepted_by_web[web] += 1
            else:
                refused.append(response)

    # The limit of 4 is for the user, whichever process serves the request: with one
    # counter per process, each of the two would have taken 4.
    assert accepted_by_web == [2, 2]
    assert len(refused) == 4
    for response in refused:
        assert_error(response, 429, "rate_limited")


def test_rate_limit_override_applies_to_rest_creates(service: Service) -> None:
    username = new_user()
    set_limits(service, username, rate_limit_per_minute=2)
    fresh_rate_window()
    with service.client(username) as client:
        statuses = [post(client).status_code for _ in range(2)]
        refused = post(client)
        with service.client(new_user()) as other:
            # Another user is not limited by this one's override.
            assert [post(other).status_code for _ in range(3)] == [202] * 3

    assert statuses == [202, 202]
    assert_error(refused, 429, "rate_limited")
    assert_retry_after(refused, 60)


def test_requests_refused_for_other_reasons_do_not_count_toward_the_rate_limit(
    service: Service,
) -> None:
    username = new_user()
    set_limits(service, username, rate_limit_per_minute=3, max_active_generations=1)
    fresh_rate_window()
    with service.client(username) as client:
        # Invalid bodies (400) are refused before any limit.
        for _ in range(5):
            assert_error(post(client, prompt=""), 400, "invalid_request")
        running = post(client, unique(LONG_PROMPT))
        assert running.status_code == 202, running.text
        # Refused as too many active: none of these takes one of the three.
        for _ in range(5):
            assert_error(post(client), 429, "too_many_active")
        client.post(f"/api/v1/generations/{running.json()['id']}/cancel")
        wait_terminal(client, running.json()["id"])
        second = post(client)
        assert second.status_code == 202, second.text
        wait_terminal(client, second.json()["id"])
        third = post(client)
        assert third.status_code == 202, third.text
        wait_terminal(client, third.json()["id"])
        # Exactly the three accepted ones counted.
        assert_error(post(client), 429, "rate_limited")


async def test_rate_limit_on_websocket_generate_is_an_error_frame_and_the_connection_stays(
    service: Service,
) -> None:
    username = new_user()
    set_limits(service, username, rate_limit_per_minute=2)
    fresh_rate_window()
    async with session(service, username) as ws:
        for ref in ("one", "two"):
            await send(ws, {"type": "generate", "prompt": "ws limit [fake tokens=1]", "ref": ref})
            created, _ = await recv_type(ws, "created")
            assert created["ref"] == ref

        await send(ws, {"type": "generate", "prompt": "ws limit [fake tokens=1]", "ref": "three"})
        error, _ = await recv_type(ws, "error")

        assert (error["code"], error["ref"]) == ("rate_limited", "three")
        assert 1 <= error["retry_after"] <= 60
        await send(ws, {"type": "ping", "ref": "still"})
        pong, _ = await recv_type(ws, "pong")
        assert pong["ref"] == "still"


# --- Generations active at once --------------------------------------------------------------


def test_max_active_setting_lets_exactly_that_many_of_ten_concurrent_creates_through(
    tight_service: Service,
) -> None:
    username = new_user()
    with tight_service.client(username) as client:

        def one(index: int) -> httpx.Response:
            # A small max_tokens: each running one reserves that much of the small daily
            # quota (TOKENS_PER_DAY=40), and a start with none left would end at once.
            return post(client, unique(LONG_PROMPT), max_tokens=5)

        with ThreadPoolExecutor(max_workers=10) as pool:
            responses = list(pool.map(one, range(10)))
        created = [r.json()["id"] for r in responses if r.status_code == 202]
        try:
            # Serialised per user in the database: two, never more, however they interleave.
            assert len(created) == 2, [r.status_code for r in responses]
            refused = [r for r in responses if r.status_code != 202]
            for response in refused:
                assert_error(response, 429, "too_many_active")
                assert_retry_after(response, 60)
            me = client.get("/api/v1/me").json()["usage"]
            assert (me["active"], me["max_active"]) == (2, 2)
        finally:
            cancel_all(client, created)


def test_max_active_override_refuses_until_one_ends(service: Service) -> None:
    username = new_user()
    set_limits(service, username, max_active_generations=1)
    with service.client(username) as client:
        running = create(client, unique(LONG_PROMPT))
        refused = post(client)
        assert_error(refused, 429, "too_many_active")
        assert_retry_after(refused, 60)

        client.post(f"/api/v1/generations/{running['id']}/cancel")
        wait_terminal(client, running["id"])
        after = post(client)

    assert after.status_code == 202, after.text


def test_concurrent_creates_cannot_race_past_an_overridden_max_active(service: Service) -> None:
    username = new_user()
    set_limits(service, username, max_active_generations=2)
    with service.client(username) as client:

        def one(index: int) -> httpx.Response:
            return post(client, unique(LONG_PROMPT))

        with ThreadPoolExecutor(max_workers=10) as pool:
            responses = list(pool.map(one, range(10)))
        created = [r.json()["id"] for r in responses if r.status_code == 202]
        cancel_all(client, created)

    assert len(created) == 2, [r.status_code for r in responses]
    assert (
        sorted(r.json()["error"]["code"] for r in responses if r.status_code != 202)
        == ["too_many_active"] * 8
    )


# --- Completion tokens per day ---------------------------------------------------------------


def test_daily_quota_setting_caps_the_next_generation_then_refuses(
    tight_service: Service, fake_llm: FakeLLM
) -> None:
    with tight_service.client(new_user()) as client:
        first = wait_terminal(client, create(client, unique("q [fake tokens=30]"))["id"])
        assert first["usage"]["completion_tokens"] == 30
        # 10 of the 40 left: the provider is asked for 10, and this one streams 50 whatever
        # it is asked for, so the service itself stops reading at 10.
        prompt = unique("over quota [fake tokens=50 ignore_max=1]")
        capped = wait_terminal(client, create(client, prompt)["id"])
        refused = post(client)
        me = client.get("/api/v1/me").json()["usage"]

    assert capped["status"] == "completed"
    assert capped["finish_reason"] == "length"
    assert capped["output"] == expected_text(10)
    assert capped["usage"]["completion_tokens"] == 10
    assert [r["max_tokens"] for r in requests_with(fake_llm.requests(), prompt)] == [10]
    assert_error(refused, 429, "quota_exceeded")
    # Until midnight UTC.
    assert_retry_after(refused, 86_400 + 1)
    assert (me["tokens_today"], me["tokens_per_day"]) == (40, 40)


def test_daily_quota_override_cuts_a_generation_off_mid_stream_with_finish_reason_length(
    service: Service, fake_llm: FakeLLM
) -> None:
    username = new_user()
    set_limits(service, username, tokens_per_day=25)
    prompt = unique("long [fake tokens=80 rate=200 ignore_max=1]")
    with service.client(username) as client:
        generation = create(client, prompt, max_tokens=60)
        with client.stream(
            "GET", f"/api/v1/generations/{generation['id']}/events", timeout=60
        ) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data:")]
        final = wait_terminal(client, generation["id"])
        refused = post(client)

    events = [decoded_event(line[5:].lstrip()) for line in lines]
    assert events[-1]["type"] == "done"
    assert (events[-1]["status"], events[-1]["finish_reason"]) == ("completed", "length")
    assert "".join(e.get("text", "") for e in events if e["type"] == "delta") == expected_text(25)
    assert final["output"] == expected_text(25)
    assert final["finish_reason"] == "length"
    # The provider was asked for the quota's 25, not the request's 60.
    assert [r["max_tokens"] for r in requests_with(fake_llm.requests(), prompt)] == [25]
    assert_error(refused, 429, "quota_exceeded")


def test_concurrent_generations_share_the_daily_quota_first_come_first_served(
    service: Service, fake_llm: FakeLLM
) -> None:
    username = new_user()
    set_limits(service, username, tokens_per_day=30)
    # Slow enough that the second starts while the first runs.
    first_prompt = unique("first [fake tokens=20 rate=10 ignore_max=1]")
    second_prompt = unique("second [fake tokens=20 rate=10 ignore_max=1]")
    with service.client(username) as client:
        first = create(client, first_prompt, max_tokens=20)
        wait_until(lambda: requests_with(fake_llm.requests(), first_prompt), timeout_s=15)
        second = create(client, second_prompt, max_tokens=20)
        first_final = wait_terminal(client, first["id"])
        second_final = wait_terminal(client, second["id"])

    # The first reserved its 20 when it started; the second got the 10 left, while the
    # first still ran (it had used only a few of its 20 by then).
    assert second_final["started_at"] < first_final["finished_at"]
    assert first_final["output"] == expected_text(20)
    assert (second_final["output"], second_final["finish_reason"]) == (expected_text(10), "length")
    assert [r["max_tokens"] for r in requests_with(fake_llm.requests(), second_prompt)] == [10]
    # Together exactly the quota, never more.
    total = first_final["usage"]["completion_tokens"] + second_final["usage"]["completion_tokens"]
    assert total == 30


# --- Open WebSocket connections per user -----------------------------------------------------


async def test_connection_limit_setting_closes_the_extra_connection_with_4429(
    tight_service: Service,
) -> None:
    username = new_user()
    async with session(tight_service, username) as first:
        async with open_ws(tight_service) as extra:
            await send(extra, {"type": "auth", "token": make_token(username)})
            _, code = await frames_until_close(extra)
        assert code == 4429
        await send(first, {"type": "ping", "ref": "alive"})
        assert (await recv(first))["type"] == "pong"


async def test_connection_limit_override_takes_effect(service: Service) -> None:
    username = new_user()
    set_limits(service, username, max_connections=1)
    async with session(service, username) as first:
        async with open_ws(service) as extra:
            await send(extra, {"type": "auth", "token": make_token(username)})
            _, code = await frames_until_close(extra)
        assert code == 4429
        await first.close()
    # The slot is free again once the server has let the closed connection go.
    deadline = time.monotonic() + 5
    while True:
        async with open_ws(service) as again:
            await send(again, {"type": "auth", "token": make_token(username)})
            if (await recv(again))["type"] == "auth.ok":
                break
        assert time.monotonic() < deadline, "the closed connection still counts"
        await asyncio.sleep(0.1)


def test_a_generation_that_starts_with_no_quota_left_ends_at_once_without_the_provider(
    service: Service, fake_llm: FakeLLM
) -> None:
    username = new_user()
    set_limits(service, username, tokens_per_day=30)
    first_prompt = unique("holds it all [fake tokens=30 rate=10]")
    second_prompt = unique("nothing left [fake tokens=5]")
    with service.client(username) as client:
        first = create(client, first_prompt, max_tokens=30)
        wait_until(lambda: requests_with(fake_llm.requests(), first_prompt), timeout_s=15)
        # Accepted: the tokens used so far are below the quota; but the first has reserved
        # all 30 of them.
        second = create(client, second_prompt)
        second_final = wait_terminal(client, second["id"])
        first_final = wait_terminal(client, first["id"])

    assert second_final["started_at"] < first_final["finished_at"]
    assert (second_final["status"], second_final["finish_reason"]) == ("completed", "length")
    assert second_final["output"] == ""
    assert second_final["usage"]["completion_tokens"] == 0
    assert requests_with(fake_llm.requests(), second_prompt) == []
    assert first_final["output"] == expected_text(30)
