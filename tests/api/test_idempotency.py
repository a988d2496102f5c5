"""Idempotency-Key on POST /generations (PROTOCOL §2): a repeat returns the first generation,
also when the repeats race each other."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.support import assert_error
from tests.conftest import wait_terminal
from tests.harness import Background, FakeLLM, Service

GENERATIONS = "/api/v1/generations"


@pytest.fixture
def dana(service: Service) -> Iterator[httpx.Client]:
    """A user of her own, so that counting her generations counts only this test's."""
    with service.client(f"dana-{uuid.uuid4().hex[:10]}") as client:
        yield client


def post(client: httpx.Client, key: str | None, body: dict[str, Any]) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post(GENERATIONS, json=body, headers=headers)


def new_key() -> str:
    return f"key-{uuid.uuid4()}"


def test_repeat_with_same_key_and_body_returns_200_and_the_same_generation(
    dana: httpx.Client,
) -> None:
    key, body = new_key(), {"prompt": "once [fake tokens=2]", "max_tokens": 10}

    first = post(dana, key, body)
    second = post(dana, key, body)

    assert first.status_code == 202, first.text
    assert second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["location"] == first.headers["location"]
    assert [g["id"] for g in dana.get(GENERATIONS).json()["results"]] == [first.json()["id"]]


def test_repeat_after_completion_returns_the_completed_generation(dana: httpx.Client) -> None:
    key, body = new_key(), {"prompt": "finished [fake tokens=3]"}
    first = post(dana, key, body).json()
    final = wait_terminal(dana, first["id"])

    repeat = post(dana, key, body)

    assert repeat.status_code == 200
    assert repeat.json() == final


def test_same_key_with_a_different_body_is_409_and_changes_nothing(dana: httpx.Client) -> None:
    key = new_key()
    first = post(dana, key, {"prompt": "original [fake tokens=1]"})

    conflicts = [
        post(dana, key, {"prompt": "different [fake tokens=1]"}),
        post(dana, key, {"prompt": "original [fake tokens=1]", "max_tokens": 5}),
        post(dana, key, {"prompt": "original [fake tokens=1]", "model": "gpt-4o"}),
        post(dana, key, {"prompt": "original [fake tokens=1]", "temperature": 0.1}),
    ]

    for response in conflicts:
        assert_error(response, 409, "idempotency_conflict")
    generations = dana.get(GENERATIONS).json()["results"]
    assert [g["id"] for g in generations] == [first.json()["id"]]
    assert generations[0]["prompt"] == "original [fake tokens=1]"


def test_body_that_only_spells_defaults_out_is_the_same_request(dana: httpx.Client) -> None:
    # Equal after validation: null and absent fields, and key order, do not make a new body.
    key = new_key()
    first = post(dana, key, {"prompt": "same [fake tokens=1]", "max_tokens": 20})
    second = post(
        dana, key, {"max_tokens": 20, "temperature": None, "prompt": "same [fake tokens=1]"}
    )

    assert second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"]


def test_requests_without_a_key_are_never_deduplicated(dana: httpx.Client) -> None:
    body = {"prompt": "no key [fake tokens=1]"}

    first = post(dana, None, body)
    second = post(dana, None, body)

    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]


def test_different_keys_make_different_generations(dana: httpx.Client) -> None:
    body = {"prompt": "two keys [fake tokens=1]"}

    first = post(dana, new_key(), body)
    second = post(dana, new_key(), body)

    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]


def test_keys_are_per_user(dana: httpx.Client, bob: httpx.Client) -> None:
    key, body = new_key(), {"prompt": "mine [fake tokens=1]"}

    danas = post(dana, key, body)
    bobs = post(bob, key, body)

    assert danas.status_code == bobs.status_code == 202
    assert danas.json()["id"] != bobs.json()["id"]
    # Bob's request did not reveal, or return, dana's generation.
    assert_error(bob.get(f"{GENERATIONS}/{danas.json()['id']}"), 404, "not_found")


@pytest.mark.parametrize("length", [1, 255])
def test_key_of_1_to_255_characters_is_accepted(dana: httpx.Client, length: int) -> None:
    key = uuid.uuid4().hex[:length].ljust(length, "k")

    first = post(dana, key, {"prompt": "length [fake tokens=1]"})
    repeat = post(dana, key, {"prompt": "length [fake tokens=1]"})

    assert first.status_code == 202, first.text
    assert repeat.status_code == 200
    assert repeat.json()["id"] == first.json()["id"]


@pytest.mark.parametrize("key", ["k" * 256, "k" * 1000, ""], ids=["256", "1000", "empty"])
def test_key_outside_1_to_255_characters_is_invalid_request(dana: httpx.Client, key: str) -> None:
    response = post(dana, key, {"prompt": "bad key [fake tokens=1]"})

    assert_error(response, 400, "invalid_request")
    assert dana.get(GENERATIONS).json()["results"] == []


def test_invalid_body_with_a_key_does_not_use_up_the_key(dana: httpx.Client) -> None:
    key = new_key()
    refused = post(dana, key, {"prompt": "x", "max_tokens": 0})

    accepted = post(dana, key, {"prompt": "valid [fake tokens=1]"})

    assert_error(refused, 400, "invalid_request")
    assert accepted.status_code == 202, accepted.text


def test_concurrent_repeats_create_exactly_one_generation(
    service: Service, fake_llm: FakeLLM
) -> None:
    username = f"racer-{uuid.uuid4().hex[:10]}"
    key = new_key()
    marker = uuid.uuid4().hex
    body = {"prompt": f"race {marker} [fake tokens=2]"}
    repeats = 20
    start = threading.Barrier(repeats)
    with service.client(username) as client:
        client.get("/api/v1/me")  # the user exists before the race: only the key is raced

    def attempt() -> tuple[int, str]:
        with service.client(username) as client:
            start.wait(timeout=30)
            response = post(client, key, body)
        assert response.status_code in (200, 202), response.text
        return response.status_code, response.json()["id"]

    threads = [Background(attempt) for _ in range(repeats)]
    for thread in threads:
        thread.start()
    results = [thread.value(timeout_s=60) for thread in threads]

    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * (repeats - 1) + [202]
    assert len({generation_id for _, generation_id in results}) == 1
    with service.client(username) as client:
        listed = client.get(GENERATIONS).json()["results"]
        assert [g["id"] for g in listed] == [results[0][1]]
        assert wait_terminal(client, results[0][1])["status"] == "completed"

    # And the provider was asked once.
    assert len([r for r in fake_llm.requests() if marker in str(r.get("messages"))]) == 1
