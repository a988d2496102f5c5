"""The REST resources of PROTOCOL §2: create, read, list, cancel, /me, and who sees what."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.support import (
    GENERATION_FIELDS,
    GENERATION_ID_PATTERN,
    TIMESTAMP_PATTERN,
    UNKNOWN_GENERATION_ID,
    assert_error,
)
from tests.conftest import create, wait_terminal
from tests.fake_openai import expected_text
from tests.harness import FakeLLM, Service, parse_sse, stream_events, wait_until


@pytest.fixture
def carol(service: Service) -> Iterator[httpx.Client]:
    """A user of her own, for tests that count a user's generations or tokens."""
    with service.client(f"carol-{uuid.uuid4().hex[:10]}") as client:
        yield client


# --- Create and read -------------------------------------------------------------------------


def test_create_returns_202_with_location_and_the_full_generation(alice: httpx.Client) -> None:
    response = alice.post("/api/v1/generations", json={"prompt": "hello [fake tokens=3]"})

    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == GENERATION_FIELDS
    assert re.fullmatch(GENERATION_ID_PATTERN, body["id"])
    assert response.headers["location"] == f"/api/v1/generations/{body['id']}"
    assert body["status"] in ("queued", "running")
    assert body["model"] == "gpt-4o-mini"
    assert body["prompt"] == "hello [fake tokens=3]"
    assert body["system"] is None
    assert body["max_tokens"] == 1024
    assert body["temperature"] is None
    assert body["output"] == ""
    assert body["seq"] == 0
    assert body["attempt"] == 1
    assert body["finish_reason"] is None
    assert body["usage"] is None
    assert body["error"] is None
    assert re.fullmatch(TIMESTAMP_PATTERN, body["created_at"])
    assert body["finished_at"] is None


def test_location_header_points_at_the_generation(alice: httpx.Client) -> None:
    response = alice.post("/api/v1/generations", json={"prompt": "where [fake tokens=1]"})

    fetched = alice.get(response.headers["location"])

    assert fetched.status_code == 200
    assert fetched.json()["id"] == response.json()["id"]


def test_generation_ids_are_distinct_and_opaque(alice: httpx.Client) -> None:
    ids = [create(alice, "id [fake tokens=1]")["id"] for _ in range(5)]

    assert len(set(ids)) == 5
    assert all(re.fullmatch(GENERATION_ID_PATTERN, i) for i in ids)
    # Not time-ordered: ids of consecutive requests share no common prefix beyond "gen_".
    assert len({i[:8] for i in ids}) > 1


def test_completed_generation_has_output_usage_and_timestamps(alice: httpx.Client) -> None:
    generation = create(alice, "finish me [fake tokens=6]")

    final = wait_terminal(alice, generation["id"])

    assert set(final) == GENERATION_FIELDS
    assert final["status"] == "completed"
    assert final["finish_reason"] == "stop"
    assert final["output"] == expected_text(6)
    assert final["usage"]["completion_tokens"] == 6
    assert set(final["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert final["error"] is None
    assert final["seq"] > 0
    assert final["created_at"] == generation["created_at"]
    for field in ("started_at", "finished_at"):
        assert re.fullmatch(TIMESTAMP_PATTERN, final[field])
    assert final["created_at"] <= final["started_at"] <= final["finished_at"]


def test_create_with_every_field_stores_them_and_sends_them_to_the_provider(
    alice: httpx.Client, fake_llm: FakeLLM
) -> None:
    marker = uuid.uuid4().hex
    body: dict[str, Any] = {
        "prompt": f"all fields {marker} [fake tokens=2]",
        "model": "gpt-4o",
        "system": "be brief",
        "max_tokens": 7,
        "temperature": 0.5,
    }

    generation = create(alice, **body)

    for field, value in body.items():
        assert generation[field] == value
    wait_terminal(alice, generation["id"])
    sent = [r for r in fake_llm.requests() if marker in str(r.get("messages"))]
    assert len(sent) == 1
    assert sent[0]["model"] == "gpt-4o"
    assert sent[0]["max_tokens"] == 7
    assert sent[0]["temperature"] == 0.5
    assert sent[0]["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": body["prompt"]},
    ]


def test_max_tokens_cuts_the_output_with_finish_reason_length(alice: httpx.Client) -> None:
    generation = create(alice, "long [fake tokens=20]", max_tokens=4)

    final = wait_terminal(alice, generation["id"])

    assert final["status"] == "completed"
    assert final["finish_reason"] == "length"
    assert final["output"] == expected_text(4)


def test_unknown_generation_id_is_404(alice: httpx.Client) -> None:
    for path in (
        f"/api/v1/generations/{UNKNOWN_GENERATION_ID}",
        "/api/v1/generations/not-an-id",
        "/api/v1/generations/gen_",
        "/api/v1/generations/" + "gen_" + "x" * 500,
    ):
        assert_error(alice.get(path), 404, "not_found")
    for action in ("cancel", "ticket"):
        assert_error(
            alice.post(f"/api/v1/generations/{UNKNOWN_GENERATION_ID}/{action}"), 404, "not_found"
        )
    status, _, _ = stream_events(alice, UNKNOWN_GENERATION_ID)
    assert status == 404


# --- Another user's generation ---------------------------------------------------------------


def test_another_users_generation_is_404_on_every_endpoint_never_403(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    # Long enough before the first token that bob's generation is still active throughout.
    generation = create(bob, "bob's secret [fake tokens=3 ttft=1500]")
    generation_id = generation["id"]
    unknown = alice.get(f"/api/v1/generations/{UNKNOWN_GENERATION_ID}")

    responses = {
        "get": alice.get(f"/api/v1/generations/{generation_id}"),
        "cancel": alice.post(f"/api/v1/generations/{generation_id}/cancel"),
        "ticket": alice.post(f"/api/v1/generations/{generation_id}/ticket"),
    }
    with alice.stream("GET", f"/api/v1/generations/{generation_id}/events") as events:
        events.read()
        responses["events"] = events

    for response in responses.values():
        assert_error(response, 404, "not_found")
        # Indistinguishable from an id that does not exist.
        assert response.json() == unknown.json()
        assert "bob's secret" not in response.text
    assert generation_id not in [g["id"] for g in list_all(alice)]
    # Alice's cancel did nothing: bob's generation runs to the end.
    final = wait_terminal(bob, generation_id)
    assert final["status"] == "completed"
    assert final["output"] == expected_text(3)


def test_another_users_ticket_does_not_open_the_generations_events(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    bobs = create(bob, "bob's [fake tokens=1]")
    alices = create(alice, "alice's [fake tokens=1]")
    ticket = alice.post(f"/api/v1/generations/{alices['id']}/ticket").json()["ticket"]

    with httpx.Client(base_url=str(alice.base_url), timeout=30) as no_header:
        response = no_header.get(
            f"/api/v1/generations/{bobs['id']}/events", params={"ticket": ticket}
        )

    assert_error(response, 404, "not_found")


# --- List ------------------------------------------------------------------------------------


def list_all(client: httpx.Client, limit: int = 100) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        response = client.get("/api/v1/generations", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        results.extend(page["results"])
        if page["next_cursor"] is None:
            return results
        params["cursor"] = page["next_cursor"]


def test_list_is_newest_first_and_cursor_pagination_walks_every_page(
    carol: httpx.Client, bob: httpx.Client
) -> None:
    created = [create(carol, f"page {n} [fake tokens=1]")["id"] for n in range(7)]
    create(bob, "not carol's [fake tokens=1]")

    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = carol.get("/api/v1/generations", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"results", "next_cursor"}
        pages.append([g["id"] for g in body["results"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert [len(page) for page in pages] == [3, 3, 1]
    assert [i for page in pages for i in page] == list(reversed(created))


def test_list_returns_full_generation_objects(carol: httpx.Client) -> None:
    generation = create(carol, "listed [fake tokens=2]")
    final = wait_terminal(carol, generation["id"])

    listed = carol.get("/api/v1/generations").json()["results"]

    assert listed == [final]


def test_list_page_that_ends_exactly_at_the_last_item_has_no_next_cursor(
    carol: httpx.Client,
) -> None:
    for n in range(2):
        create(carol, f"exact {n} [fake tokens=1]")

    body = carol.get("/api/v1/generations", params={"limit": 2}).json()

    assert len(body["results"]) == 2
    assert body["next_cursor"] is None


def test_list_of_a_user_with_no_generations_is_empty(carol: httpx.Client) -> None:
    assert carol.get("/api/v1/generations").json() == {"results": [], "next_cursor": None}


def test_list_limit_defaults_to_20_and_accepts_1_and_100(carol: httpx.Client) -> None:
    created = [create(carol, f"many {n} [fake tokens=1]")["id"] for n in range(21)]

    default = carol.get("/api/v1/generations").json()
    one = carol.get("/api/v1/generations", params={"limit": 1}).json()
    hundred = carol.get("/api/v1/generations", params={"limit": 100}).json()

    assert [g["id"] for g in default["results"]] == list(reversed(created))[:20]
    assert default["next_cursor"] is not None
    rest = carol.get("/api/v1/generations", params={"cursor": default["next_cursor"]}).json()
    assert [g["id"] for g in rest["results"]] == [created[0]]
    assert [g["id"] for g in one["results"]] == [created[-1]]
    assert len(hundred["results"]) == 21
    assert hundred["next_cursor"] is None


# "+5", " 5", "5_0" and "5.0" are integers to pydantic, not to the contract (plain digits).
@pytest.mark.parametrize(
    "limit", ["0", "101", "-1", "abc", "", "1.5", "1e1", "0x10", "+5", " 5", "5_0", "5.0"]
)
def test_list_limit_outside_1_to_100_is_invalid_request(alice: httpx.Client, limit: str) -> None:
    response = alice.get("/api/v1/generations", params={"limit": limit})

    details = assert_error(response, 400, "invalid_request")
    assert "limit" in details


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "!!!",
        "Zm9vfGJhcg",  # "foo|bar"
        "MjAyNi0wMS0wMVQwMDowMDowMHxnZW5fQUFBQQ",  # a naive time and a short id
        "////",
        "gen_AAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_list_with_a_bad_cursor_is_invalid_request(alice: httpx.Client, cursor: str) -> None:
    response = alice.get("/api/v1/generations", params={"cursor": cursor})

    details = assert_error(response, 400, "invalid_request")
    assert "cursor" in details


# --- Cancel ----------------------------------------------------------------------------------


def test_cancel_stops_an_active_generation(alice: httpx.Client, fake_llm: FakeLLM) -> None:
    # The provider holds the first token back for 3 s: the generation is queued or waiting.
    generation = create(alice, "cancel me [fake tokens=5 ttft=3000]")

    response = alice.post(f"/api/v1/generations/{generation['id']}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["id"] == generation["id"]
    assert set(response.json()) == GENERATION_FIELDS
    final = wait_terminal(alice, generation["id"])
    assert final["status"] == "cancelled"
    assert final["finish_reason"] == "cancelled"
    assert final["output"] == ""
    assert final["error"] is None
    assert final["finished_at"] is not None
    # Repeating the cancel returns the cancelled generation unchanged.
    again = alice.post(f"/api/v1/generations/{generation['id']}/cancel")
    assert again.status_code == 200
    assert again.json() == final


def test_cancel_mid_stream_ends_cancelled_with_a_prefix_of_the_output(
    alice: httpx.Client,
) -> None:
    # 20 tokens a second for 10 s: still streaming when the cancel arrives.
    generation = create(alice, "stream then stop [fake tokens=200 rate=20]")
    wait_until(
        lambda: alice.get(f"/api/v1/generations/{generation['id']}").json()["output"],
        timeout_s=20,
    )

    response = alice.post(f"/api/v1/generations/{generation['id']}/cancel")

    assert response.status_code == 200
    final = wait_terminal(alice, generation["id"])
    assert final["status"] == "cancelled"
    assert final["finish_reason"] == "cancelled"
    full = expected_text(200)
    assert final["output"] and full.startswith(final["output"])
    assert len(final["output"]) < len(full)
    assert final["usage"]["completion_tokens"] < 200


def test_cancel_of_a_terminal_generation_returns_it_unchanged(alice: httpx.Client) -> None:
    generation = create(alice, "already done [fake tokens=4]")
    final = wait_terminal(alice, generation["id"])

    response = alice.post(f"/api/v1/generations/{generation['id']}/cancel")

    assert response.status_code == 200
    assert response.json() == final
    assert response.json()["status"] == "completed"
    assert alice.get(f"/api/v1/generations/{generation['id']}").json() == final


# --- /me -------------------------------------------------------------------------------------


def test_me_has_the_username_and_usage(alice: httpx.Client) -> None:
    response = alice.get("/api/v1/me")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"username", "usage"}
    assert body["username"] == "alice"
    usage = body["usage"]
    assert set(usage) == {"tokens_today", "tokens_per_day", "active", "max_active"}
    assert all(isinstance(value, int) and not isinstance(value, bool) for value in usage.values())
    # The test run's configuration (tests/tier_env.py).
    assert usage["tokens_per_day"] == 1_000_000_000
    assert usage["max_active"] == 100_000


def test_me_tokens_today_grows_by_the_completion_tokens_of_a_generation(
    carol: httpx.Client,
) -> None:
    assert carol.get("/api/v1/me").json()["usage"]["tokens_today"] == 0
    generation = create(carol, "count me [fake tokens=7]")
    wait_terminal(carol, generation["id"])

    assert carol.get("/api/v1/me").json()["usage"]["tokens_today"] == 7

    generation = create(carol, "and me [fake tokens=5]")
    wait_terminal(carol, generation["id"])
    assert carol.get("/api/v1/me").json()["usage"]["tokens_today"] == 12


def test_me_tokens_today_counts_every_one_of_generations_ending_together(
    carol: httpx.Client,
) -> None:
    # Their final writes meet: the first inserts the day's settled usage, the others add to
    # it (jobs.writer.settle_usage), on the service's own database of either tier.
    generations = [create(carol, f"together {index} [fake tokens=6]") for index in range(8)]
    for generation in generations:
        assert wait_terminal(carol, generation["id"])["status"] == "completed"

    assert carol.get("/api/v1/me").json()["usage"]["tokens_today"] == 6 * len(generations)


def test_me_active_counts_generations_until_they_end(carol: httpx.Client) -> None:
    generation = create(carol, "active [fake tokens=1 ttft=1500]")

    assert carol.get("/api/v1/me").json()["usage"]["active"] == 1

    wait_terminal(carol, generation["id"])
    assert carol.get("/api/v1/me").json()["usage"]["active"] == 0


def test_me_usage_is_per_user(carol: httpx.Client, bob: httpx.Client) -> None:
    generation = create(bob, "bob's tokens [fake tokens=9]")
    wait_terminal(bob, generation["id"])

    assert carol.get("/api/v1/me").json()["usage"]["tokens_today"] == 0


# --- Ticket ----------------------------------------------------------------------------------


def test_ticket_opens_only_its_generations_events(alice: httpx.Client) -> None:
    first = create(alice, "ticketed [fake tokens=2]")
    second = create(alice, "other [fake tokens=2]")
    wait_terminal(alice, first["id"])

    response = alice.post(f"/api/v1/generations/{first['id']}/ticket")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"ticket", "expires_in"}
    assert body["expires_in"] == 300
    with httpx.Client(base_url=str(alice.base_url), timeout=30) as no_header:
        status, frames = stream_events_with_ticket(no_header, first["id"], body["ticket"])
        other = no_header.get(
            f"/api/v1/generations/{second['id']}/events", params={"ticket": body["ticket"]}
        )
    assert status == 200
    assert frames[-1]["data"]["type"] == "done"
    assert_error(other, 404, "not_found")


def stream_events_with_ticket(
    client: httpx.Client, generation_id: str, ticket: str
) -> tuple[int, list[dict[str, Any]]]:
    with client.stream(
        "GET", f"/api/v1/generations/{generation_id}/events", params={"ticket": ticket}
    ) as response:
        frames = [f for f in parse_sse(response.iter_lines()) if "data" in f]
        return response.status_code, frames
