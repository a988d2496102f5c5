"""How the REST API refuses what it cannot serve (PROTOCOL §2): methods, media types, sizes,
malformed JSON, unknown fields and URLs, always with the JSON error body and never a 500."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from pytest_django.fixtures import Settings

from core.errors import payload_too_large
from tests.api.support import UNKNOWN_GENERATION_ID, assert_error
from tests.conftest import create
from tests.harness import Service, make_token

GENERATIONS = "/api/v1/generations"
JSON = {"Content-Type": "application/json"}
MAX_BODY_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def alices_generation(service: Service) -> str:
    """One of alice's generations, shared: the tests below only address it."""
    with service.client("alice") as client:
        return str(create(client, "methods [fake tokens=1]")["id"])


# --- 405 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", GENERATIONS, "GET, POST"),
        ("PUT", GENERATIONS, "GET, POST"),
        ("PATCH", f"{GENERATIONS}/{{id}}", "GET"),
        ("DELETE", f"{GENERATIONS}/{{id}}", "GET"),
        ("POST", f"{GENERATIONS}/{{id}}", "GET"),
        ("GET", f"{GENERATIONS}/{{id}}/cancel", "POST"),
        ("GET", f"{GENERATIONS}/{{id}}/ticket", "POST"),
        ("POST", f"{GENERATIONS}/{{id}}/events", "GET"),
        ("POST", "/api/v1/me", "GET"),
        ("DELETE", "/api/v1/me", "GET"),
        ("GET", "/api/v1/auth/token", "POST"),
    ],
)
def test_wrong_method_is_405_with_allow_header(
    alice: httpx.Client, alices_generation: str, method: str, path: str, allow: str
) -> None:
    response = alice.request(method, path.format(id=alices_generation), json={})

    assert_error(response, 405, "method_not_allowed")
    assert {m.strip() for m in response.headers["allow"].split(",")} == set(allow.split(", "))


# --- 415 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonp",
        "application/xml",
        None,
    ],
)
def test_non_json_content_type_is_415(alice: httpx.Client, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}

    response = alice.post(GENERATIONS, content=b'{"prompt": "hi"}', headers=headers)

    assert_error(response, 415, "unsupported_media_type")


def test_multipart_form_is_415(alice: httpx.Client) -> None:
    # A well-formed multipart body: Daphne (Twisted) itself answers a malformed one with a
    # bare 400 before the application sees it.
    response = alice.post(GENERATIONS, files={"prompt": ("prompt.txt", b"hi")})

    assert_error(response, 415, "unsupported_media_type")


def test_json_content_type_with_charset_is_accepted(alice: httpx.Client) -> None:
    response = alice.post(
        GENERATIONS,
        content=json.dumps({"prompt": "charset [fake tokens=1]"}).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )

    assert response.status_code == 202, response.text


# --- 413 -------------------------------------------------------------------------------------


def test_body_over_64_kib_is_413(alice: httpx.Client) -> None:
    body = json.dumps({"prompt": "x" * MAX_BODY_BYTES}).encode()

    response = alice.post(GENERATIONS, content=body, headers=JSON)

    assert_error(response, 413, "payload_too_large")


def test_body_over_64_kib_is_413_even_when_it_is_not_json(alice: httpx.Client) -> None:
    response = alice.post(GENERATIONS, content=b"\xff" * (MAX_BODY_BYTES + 1), headers=JSON)

    assert_error(response, 413, "payload_too_large")


def test_body_of_exactly_64_kib_is_not_refused_for_size(alice: httpx.Client) -> None:
    # Padded with spaces, which JSON ignores, to exactly the limit.
    body = json.dumps({"prompt": "size [fake tokens=1]"}).encode()
    body = body + b" " * (MAX_BODY_BYTES - len(body))

    response = alice.post(GENERATIONS, content=body, headers=JSON)

    assert response.status_code == 202, response.text


def test_chunked_body_over_64_kib_without_content_length_is_413(alice: httpx.Client) -> None:
    def chunks() -> Any:
        yield b'{"prompt": "'
        for _ in range(70):
            yield b"x" * 1024
        yield b'"}'

    response = alice.post(GENERATIONS, content=chunks(), headers=JSON)

    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize(("limit", "said"), [(64 * 1024, "64 KiB"), (1000, "1000 bytes")])
def test_the_413_message_names_the_limit_in_force(
    settings: Settings, limit: int, said: str
) -> None:
    settings.MAX_REQUEST_BYTES = limit

    assert payload_too_large().message == f"The request body is larger than {said}."


# --- 400 invalid_json ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": "hi"',
        b"",
        b"prompt=hi",
        b'{"prompt": "hi"} trailing',
        b"{'prompt': 'hi'}",
        b'{"prompt": "\xff\xfe"}',
        b'\xef\xbb\xbf{"prompt": "hi"}',
        b'{"prompt": "hi", "temperature": NaN}',
        b'{"prompt": "hi", "temperature": Infinity}',
        b'{"prompt": "hi", "temperature": -Infinity}',
        b"[" * 30_000 + b"]" * 30_000,
    ],
    ids=[
        "truncated",
        "empty",
        "form",
        "trailing",
        "single-quotes",
        "not-utf8",
        "utf8-bom",
        "nan",
        "infinity",
        "minus-infinity",
        "deeply-nested",
    ],
)
def test_malformed_json_is_invalid_json(alice: httpx.Client, body: bytes) -> None:
    response = alice.post(GENERATIONS, content=body, headers=JSON)

    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize("body", [b"[]", b'"hello"', b"null", b"42", b"true"])
def test_json_that_is_not_an_object_is_invalid_request(alice: httpx.Client, body: bytes) -> None:
    response = alice.post(GENERATIONS, content=body, headers=JSON)

    assert_error(response, 400, "invalid_request")


# --- 400 unknown fields ----------------------------------------------------------------------


def test_unknown_fields_are_rejected_and_named_in_details(alice: httpx.Client) -> None:
    response = alice.post(
        GENERATIONS, json={"prompt": "hi", "stream": True, "top_p": 0.9, "user": "x"}
    )

    details = assert_error(response, 400, "invalid_request")
    assert {"stream", "top_p", "user"} <= set(details)
    assert "prompt" not in details


def test_field_names_are_case_sensitive(alice: httpx.Client) -> None:
    response = alice.post(GENERATIONS, json={"Prompt": "hi"})

    details = assert_error(response, 400, "invalid_request")
    assert "Prompt" in details
    assert "prompt" in details  # and the real one is missing


# --- 404 for unknown URLs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nope",
        "/api/v1/",
        "/api/v1",
        "/api/v2/generations",
        "/api/v1/generations/",
        f"/api/v1/generations/{UNKNOWN_GENERATION_ID}/nope",
        f"/api/v1/generations/{UNKNOWN_GENERATION_ID}/events/extra",
        "/api/v1/me/",
        "/api/v1/auth/token/",
    ],
)
def test_unknown_url_under_api_v1_is_404_with_json_body(alice: httpx.Client, path: str) -> None:
    for method in ("GET", "POST"):
        assert_error(alice.request(method, path, json={}), 404, "not_found")


def test_unknown_url_is_404_json_without_a_token(anonymous: httpx.Client) -> None:
    assert_error(anonymous.get("/api/v1/nope"), 404, "not_found")


# --- Never a 500, never a traceback ----------------------------------------------------------


def cursor(created_at: str) -> str:
    """A cursor in the service's format, base64url of "<created_at>|<id>", for edge times."""
    raw = f"{created_at}|{UNKNOWN_GENERATION_ID}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


ODD_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", GENERATIONS, {"json": {"prompt": {"nested": ["deep"]}}}),
    ("POST", GENERATIONS, {"json": {"prompt": "x", "max_tokens": 10**30}}),
    ("POST", GENERATIONS, {"json": {"prompt": "x", "max_tokens": -(10**30)}}),
    ("POST", GENERATIONS, {"content": b'{"prompt": "x", "temperature": 1e400}'}),
    ("POST", GENERATIONS, {"content": b'{"prompt": "x", "max_tokens": 1e400}'}),
    ("POST", GENERATIONS, {"content": b'{"prompt": "x", "prompt": 5}'}),
    ("POST", GENERATIONS, {"json": {"prompt": "x", "model": ["gpt-4o"]}}),
    ("POST", GENERATIONS, {"json": {"prompt": "x", "model": "x" * 10_000}}),
    ("POST", GENERATIONS, {"json": {"prompt": "x", "system": {"role": "system"}}}),
    ("POST", GENERATIONS, {"json": {"": "x"}}),
    ("POST", GENERATIONS, {"json": {"prompt": "x"}, "headers": {"Idempotency-Key": "\x7f"}}),
    ("GET", GENERATIONS, {"params": {"cursor": cursor("0001-01-01T00:00:00+14:00")}}),
    ("GET", GENERATIONS, {"params": {"cursor": cursor("9999-12-31T23:59:59-14:00")}}),
    ("GET", GENERATIONS, {"params": {"cursor": cursor("2026-01-01T00:00:00+00:00|x")}}),
    ("GET", GENERATIONS, {"params": {"cursor": "\u2603" * 50}}),
    ("GET", GENERATIONS, {"params": {"cursor": "A" * 5000}}),
    ("GET", GENERATIONS, {"params": {"limit": "9" * 400}}),
    ("GET", GENERATIONS, {"params": {"limit": "1", "extra": "2"}}),
    ("GET", f"{GENERATIONS}/gen_%00%00", {}),
    ("GET", f"{GENERATIONS}/%F0%9F%99%82", {}),
    ("GET", f"{GENERATIONS}/{'a' * 3000}", {}),
    ("GET", f"{GENERATIONS}/{UNKNOWN_GENERATION_ID}/events", {"params": {"after": "-1"}}),
    ("GET", f"{GENERATIONS}/{UNKNOWN_GENERATION_ID}/events", {"params": {"after": "9" * 40}}),
    ("GET", f"{GENERATIONS}/{UNKNOWN_GENERATION_ID}/events", {"params": {"ticket": "x.y.z"}}),
    ("POST", "/api/v1/auth/token", {"json": {"username": "\x00", "password": "\x00"}}),
    ("POST", "/api/v1/auth/token", {"json": {"username": "u" * 10_000, "password": "p"}}),
    ("POST", "/api/v1/auth/token", {"json": ["username", "password"]}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), ODD_REQUESTS)
def test_odd_requests_get_a_client_error_never_a_500(
    alice: httpx.Client, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    if "content" in kwargs:
        kwargs = {**kwargs, "headers": {**kwargs.get("headers", {}), **JSON}}

    response = alice.request(method, path, **kwargs)

    assert 400 <= response.status_code < 500, response.text
    assert_error(response, response.status_code, response.json()["error"]["code"])


@pytest.mark.parametrize(
    "token",
    [
        # Under Twisted's 16 KiB limit on headers, past which Daphne drops the connection.
        "x" * 12_000,
        "eyJhbGciOiJIUzI1NiJ9." + "A" * 5000 + ".sig",
        make_token("alice", extra={"nested": [[[[[]]]]]}),
        make_token("u" * 500),
        make_token("\u0000bad"),
    ],
    ids=["huge", "huge-payload", "nested-claims", "long-sub", "nul-in-sub"],
)
def test_odd_tokens_get_401_or_success_never_a_500(anonymous: httpx.Client, token: str) -> None:
    response = anonymous.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code in (200, 401), response.text
    assert "Traceback" not in response.text
