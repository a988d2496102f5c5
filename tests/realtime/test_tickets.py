"""SSE tickets (PROTOCOL §2): POST /api/v1/generations/{id}/ticket gives a short-lived
credential that reads one generation's events, for the browser's EventSource, and nothing else.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from jobs.events import fold
from tests.conftest import create, wait_terminal
from tests.fake_openai import expected_text
from tests.harness import Service, messages, stream_events
from tests.realtime.wsclient import (
    UNKNOWN_GENERATION_ID,
    frames_until_close,
    open_ws,
    send,
)


def ticket_for(client: httpx.Client, generation_id: str) -> dict[str, Any]:
    response = client.post(f"/api/v1/generations/{generation_id}/ticket")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def events_with_ticket(
    service: Service, generation_id: str, ticket: str
) -> tuple[int, list[dict[str, Any]], httpx.Headers]:
    """GET /events?ticket=..., with no Authorization header."""
    with service.client(None, params={"ticket": ticket}) as anonymous:
        return stream_events(anonymous, generation_id)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


def events_response(service: Service, generation_id: str, **kwargs: Any) -> httpx.Response:
    """The events endpoint's reply when it refuses (read whole: no stream follows)."""
    with service.client(None) as anonymous:
        return anonymous.get(f"/api/v1/generations/{generation_id}/events", **kwargs)


def test_ticket_endpoint_returns_ticket_and_its_lifetime(alice: httpx.Client) -> None:
    generation = create(alice, "ticketed [fake tokens=5]")

    body = ticket_for(alice, generation["id"])

    assert set(body) == {"ticket", "expires_in"}
    assert isinstance(body["ticket"], str) and body["ticket"]
    assert body["expires_in"] == 300  # TICKET_TTL_S default


def test_ticket_streams_the_generation_without_authorization_header(
    service: Service, alice: httpx.Client
) -> None:
    generation = create(alice, "by ticket [fake tokens=120 rate=200]")
    ticket = ticket_for(alice, generation["id"])["ticket"]

    status, frames, headers = events_with_ticket(service, generation["id"], ticket)

    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    received = messages(frames)
    assert received[0]["type"] == "snapshot"
    assert received[-1]["type"] == "done"
    final = wait_terminal(alice, generation["id"])
    assert fold(received) == final["output"] == expected_text(120)


def test_ticket_works_again_for_a_resume_with_last_event_id(
    service: Service, alice: httpx.Client
) -> None:
    generation = create(alice, "resume by ticket [fake tokens=150 rate=100]")
    ticket = ticket_for(alice, generation["id"])["ticket"]

    with service.client(None, params={"ticket": ticket}) as anonymous:
        _, first, _ = stream_events(anonymous, generation["id"], stop_after=5)
        _, rest, _ = stream_events(anonymous, generation["id"], last_event_id=int(first[-1]["id"]))

    assert rest[0]["data"]["seq"] == int(first[-1]["id"]) + 1
    final = wait_terminal(alice, generation["id"])
    assert fold(messages(first) + messages(rest)) == final["output"]


def test_ticket_for_one_generation_presented_for_another_is_404(
    service: Service, alice: httpx.Client, bob: httpx.Client
) -> None:
    first = create(alice, "first [fake tokens=3]")
    second = create(alice, "second [fake tokens=3]")
    bobs = create(bob, "bob's [fake tokens=3]")
    ticket = ticket_for(alice, first["id"])["ticket"]

    for other in (second["id"], bobs["id"], UNKNOWN_GENERATION_ID):
        response = events_response(service, other, params={"ticket": ticket})
        assert_error(response, 404, "not_found")


def test_ticket_for_another_users_or_unknown_generation_is_refused_with_404(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    generation = create(alice, "alice only [fake tokens=3]")

    for client, generation_id in ((bob, generation["id"]), (alice, UNKNOWN_GENERATION_ID)):
        response = client.post(f"/api/v1/generations/{generation_id}/ticket")
        assert_error(response, 404, "not_found")


def test_ticket_endpoint_requires_a_token(anonymous: httpx.Client, alice: httpx.Client) -> None:
    generation = create(alice, "mine [fake tokens=3]")

    response = anonymous.post(f"/api/v1/generations/{generation['id']}/ticket")

    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize("ticket", ["", "not-a-ticket"], ids=["empty", "garbage"])
def test_events_without_valid_ticket_or_token_is_401(
    service: Service, alice: httpx.Client, ticket: str
) -> None:
    generation = create(alice, "guarded [fake tokens=3]")

    response = events_response(service, generation["id"], params={"ticket": ticket})

    assert_error(response, 401, "unauthorized")


def test_expired_ticket_is_401(limited_service: Service) -> None:
    with limited_service.client("tina") as tina:
        generation = create(tina, "soon gone [fake tokens=3]")
        issued = ticket_for(tina, generation["id"])
    assert issued["expires_in"] == 1  # TICKET_TTL_S=1 on this service

    time.sleep(2.1)

    response = events_response(
        limited_service, generation["id"], params={"ticket": issued["ticket"]}
    )
    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/generations/{id}"),
        ("GET", "/api/v1/generations"),
        ("POST", "/api/v1/generations"),
        ("POST", "/api/v1/generations/{id}/cancel"),
        ("POST", "/api/v1/generations/{id}/ticket"),
        ("GET", "/api/v1/generations/{id}/events"),
        ("GET", "/api/v1/me"),
    ],
)
def test_ticket_as_bearer_token_is_401(
    service: Service, alice: httpx.Client, method: str, path: str
) -> None:
    generation = create(alice, "not a key [fake tokens=3]")
    ticket = ticket_for(alice, generation["id"])["ticket"]

    with service.client(None) as holder:
        response = holder.request(
            method,
            path.format(id=generation["id"]),
            headers={"Authorization": f"Bearer {ticket}"},
            json={"prompt": "sneaky"} if method == "POST" else None,
        )

    assert_error(response, 401, "unauthorized")
    assert wait_terminal(alice, generation["id"])["status"] == "completed"  # not cancelled


async def test_ticket_in_websocket_auth_frame_gets_unauthorized_and_close_4401(
    service: Service, alice: httpx.Client
) -> None:
    generation = create(alice, "not a key [fake tokens=3]")
    ticket = ticket_for(alice, generation["id"])["ticket"]

    async with open_ws(service) as ws:
        await send(ws, {"type": "auth", "token": ticket})
        frames, code = await frames_until_close(ws)

    assert [(f["type"], f["code"]) for f in frames] == [("error", "unauthorized")]
    assert code == 4401
