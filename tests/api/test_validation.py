"""Request validation and sanitising (PROTOCOL §6): what is stored, what reaches the provider,
and what is refused before it does."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.support import assert_error
from tests.conftest import create
from tests.harness import FakeLLM, Service, wait_until

GENERATIONS = "/api/v1/generations"
MAX_OUTPUT_TOKENS_DEFAULT = 4096


def provider_requests_with(fake_llm: FakeLLM, marker: str) -> list[dict[str, Any]]:
    return [r for r in fake_llm.requests() if marker in json.dumps(r.get("messages"))]


def sent_messages(fake_llm: FakeLLM, marker: str) -> list[dict[str, str]]:
    """The messages of the one provider request whose text carries `marker`."""
    found = wait_until(lambda: provider_requests_with(fake_llm, marker), timeout_s=20)
    assert len(found) == 1, found
    messages: list[dict[str, str]] = found[0]["messages"]
    return messages


def post_raw(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    """POST with Python's own JSON encoder (it escapes lone surrogates, which httpx cannot)."""
    return client.post(
        GENERATIONS,
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )


# --- Sanitising ------------------------------------------------------------------------------


def test_control_characters_are_stripped_but_tab_newline_and_cr_are_kept(
    alice: httpx.Client, fake_llm: FakeLLM
) -> None:
    marker = uuid.uuid4().hex
    raw = f"a\x00b\x07c\x1bd\x7fe\x85f\x9fg\x01h\th\ni\rj {marker} [fake tokens=1]"
    clean = f"abcdefgh\th\ni\rj {marker} [fake tokens=1]"

    generation = create(alice, raw)

    assert generation["prompt"] == clean
    assert alice.get(f"/api/v1/generations/{generation['id']}").json()["prompt"] == clean
    assert sent_messages(fake_llm, marker) == [{"role": "user", "content": clean}]


def test_system_prompt_is_sanitised_like_the_prompt(alice: httpx.Client, fake_llm: FakeLLM) -> None:
    marker = uuid.uuid4().hex

    generation = create(
        alice, f"{marker} [fake tokens=1]", system="be\x00 \x1b[31mbrief\x9b\tand\nkind"
    )

    assert generation["system"] == "be [31mbrief\tand\nkind"
    assert sent_messages(fake_llm, marker)[0] == {
        "role": "system",
        "content": "be [31mbrief\tand\nkind",
    }


def test_lone_surrogates_are_stripped_and_real_non_ascii_is_kept(
    alice: httpx.Client, fake_llm: FakeLLM
) -> None:
    marker = uuid.uuid4().hex
    prompt = f"x\ud800y\udfffz γάμμα 🙂 {marker} [fake tokens=1]"

    response = post_raw(alice, {"prompt": prompt})

    assert response.status_code == 202, response.text
    clean = f"xyz γάμμα 🙂 {marker} [fake tokens=1]"
    assert response.json()["prompt"] == clean
    assert sent_messages(fake_llm, marker)[0]["content"] == clean


# --- Prompt ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    ["", "\x00", "\x00\x07\x1b\x7f\x85\x9f", "\x01\x02\x03\x04\x05\x06\x08\x0b\x0c\x0e\x1f"],
    ids=["empty", "nul", "mixed-controls", "c0-controls"],
)
def test_prompt_empty_after_sanitising_is_invalid_request(alice: httpx.Client, prompt: str) -> None:
    details = assert_error(alice.post(GENERATIONS, json={"prompt": prompt}), 400, "invalid_request")

    assert "prompt" in details


@pytest.mark.parametrize(
    "body",
    [{}, {"prompt": None}, {"prompt": 42}, {"prompt": ["hi"]}, {"prompt": {"text": "hi"}}],
    ids=["missing", "null", "number", "list", "object"],
)
def test_prompt_missing_or_not_a_string_is_invalid_request(
    alice: httpx.Client, body: dict[str, Any]
) -> None:
    details = assert_error(alice.post(GENERATIONS, json=body), 400, "invalid_request")

    assert "prompt" in details


def test_all_field_errors_are_reported_together(alice: httpx.Client) -> None:
    response = alice.post(
        GENERATIONS,
        json={"prompt": 1, "model": "nope", "max_tokens": 0, "temperature": 3, "system": 5},
    )

    details = assert_error(response, 400, "invalid_request")
    assert set(details) >= {"prompt", "model", "max_tokens", "temperature", "system"}


# --- Model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-5-ultra", "GPT-4O-MINI", " gpt-4o", "", 4, ["gpt-4o"]])
def test_model_not_in_the_allow_list_is_invalid_request(alice: httpx.Client, model: Any) -> None:
    response = alice.post(GENERATIONS, json={"prompt": "hi", "model": model})

    details = assert_error(response, 400, "invalid_request")
    assert "model" in details


def test_every_default_allowed_model_is_accepted(alice: httpx.Client) -> None:
    for model in ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1"):
        assert create(alice, "model [fake tokens=1]", model=model)["model"] == model


def test_model_error_details_list_the_allowed_models(alice: httpx.Client) -> None:
    details = assert_error(
        alice.post(GENERATIONS, json={"prompt": "hi", "model": "gpt-5"}), 400, "invalid_request"
    )

    assert "gpt-4o-mini" in details["model"]


# --- max_tokens and temperature --------------------------------------------------------------


@pytest.mark.parametrize(
    "max_tokens",
    [0, -1, MAX_OUTPUT_TOKENS_DEFAULT + 1, "10", True, False, 1.5, 10.0, [10], {"n": 10}],
)
def test_max_tokens_outside_1_to_max_output_tokens_or_not_an_integer_is_invalid_request(
    alice: httpx.Client, max_tokens: Any
) -> None:
    response = alice.post(GENERATIONS, json={"prompt": "hi", "max_tokens": max_tokens})

    details = assert_error(response, 400, "invalid_request")
    assert "max_tokens" in details


@pytest.mark.parametrize("max_tokens", [1, MAX_OUTPUT_TOKENS_DEFAULT])
def test_max_tokens_at_the_bounds_is_accepted(alice: httpx.Client, max_tokens: int) -> None:
    generation = create(alice, "bounds [fake tokens=1]", max_tokens=max_tokens)

    assert generation["max_tokens"] == max_tokens


@pytest.mark.parametrize("temperature", [-0.1, 2.1, -1, 3, "1", True, False, [1], 1e308])
def test_temperature_outside_0_to_2_or_not_a_number_is_invalid_request(
    alice: httpx.Client, temperature: Any
) -> None:
    response = alice.post(GENERATIONS, json={"prompt": "hi", "temperature": temperature})

    details = assert_error(response, 400, "invalid_request")
    assert "temperature" in details


@pytest.mark.parametrize("temperature", [0, 2, 0.7, 1])
def test_temperature_from_0_to_2_is_accepted_as_a_number(
    alice: httpx.Client, fake_llm: FakeLLM, temperature: float
) -> None:
    marker = uuid.uuid4().hex

    generation = create(alice, f"temp {marker} [fake tokens=1]", temperature=temperature)

    assert generation["temperature"] == temperature
    assert isinstance(generation["temperature"], float)
    sent = wait_until(lambda: provider_requests_with(fake_llm, marker), timeout_s=20)
    assert sent[0]["temperature"] == temperature


def test_null_optional_fields_take_their_defaults(alice: httpx.Client) -> None:
    generation = create(
        alice,
        "defaults [fake tokens=1]",
        model=None,
        system=None,
        max_tokens=None,
        temperature=None,
    )

    assert generation["model"] == "gpt-4o-mini"
    assert generation["system"] is None
    assert generation["max_tokens"] == 1024
    assert generation["temperature"] is None


@pytest.mark.parametrize("system", [1, True, ["be brief"], {"content": "be brief"}])
def test_system_that_is_not_a_string_is_invalid_request(alice: httpx.Client, system: Any) -> None:
    response = alice.post(GENERATIONS, json={"prompt": "hi", "system": system})

    details = assert_error(response, 400, "invalid_request")
    assert "system" in details


# --- Nothing refused reaches the provider ----------------------------------------------------

REFUSED_BODIES: list[dict[str, Any]] = [
    {"prompt": "{marker}", "model": "gpt-5-ultra"},
    {"prompt": "{marker}", "max_tokens": 0},
    {"prompt": "{marker}", "temperature": 2.5},
    {"prompt": "{marker}", "system": 7},
    {"prompt": "{marker}", "stream": True},
    {"prompt": "{marker}", "max_tokens": "10"},
]


def test_a_rejected_request_never_reaches_the_provider(service: Service, fake_llm: FakeLLM) -> None:
    marker = uuid.uuid4().hex
    with service.client(f"refused-{marker[:10]}") as client:
        for body in REFUSED_BODIES:
            filled = {k: v.format(marker=marker) if k == "prompt" else v for k, v in body.items()}
            assert client.post(GENERATIONS, json=filled).status_code == 400
        # Accepted after the refused ones: once it reached the provider, anything enqueued
        # before it had every chance to as well.
        sentinel = f"{uuid.uuid4().hex} [fake tokens=1]"
        create(client, sentinel)
        wait_until(lambda: provider_requests_with(fake_llm, sentinel), timeout_s=20)

        assert provider_requests_with(fake_llm, marker) == []
        # Nor was a generation stored for any of them: the user has the sentinel's only.
        stored = client.get(GENERATIONS).json()["results"]
        assert [g["prompt"] for g in stored] == [sentinel]


# --- Configured limits -----------------------------------------------------------------------

SMALL_PROMPT_CHARS = 40
SMALL_OUTPUT_TOKENS = 64


@pytest.fixture(scope="module")
def limited(fake_llm: FakeLLM) -> Iterator[Service]:
    """A service with small, custom limits and its own model allow-list."""
    service = Service(
        fake_llm,
        env={
            "MAX_PROMPT_CHARS": str(SMALL_PROMPT_CHARS),
            "MAX_OUTPUT_TOKENS": str(SMALL_OUTPUT_TOKENS),
            "ALLOWED_MODELS": "house-small, house-large",
        },
    ).start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def limited_client(limited: Service) -> Iterator[httpx.Client]:
    with limited.client("alice") as client:
        yield client


def padded(prefix: str, length: int) -> str:
    return prefix + "p" * (length - len(prefix))


def test_prompt_over_max_prompt_chars_is_prompt_too_long(limited_client: httpx.Client) -> None:
    prompt = padded("[fake tokens=1] ", SMALL_PROMPT_CHARS + 1)

    details = assert_error(
        limited_client.post(GENERATIONS, json={"prompt": prompt}), 400, "prompt_too_long"
    )

    assert "prompt" in details


def test_prompt_of_exactly_max_prompt_chars_is_accepted(limited_client: httpx.Client) -> None:
    prompt = padded("[fake tokens=1] ", SMALL_PROMPT_CHARS)

    generation = create(limited_client, prompt)

    assert generation["prompt"] == prompt


def test_prompt_length_is_counted_after_sanitising(limited_client: httpx.Client) -> None:
    prompt = padded("[fake tokens=1] ", SMALL_PROMPT_CHARS)

    generation = create(limited_client, "\x00" * 10 + prompt + "\x7f" * 10)

    assert generation["prompt"] == prompt


def test_configured_allow_list_replaces_the_default_models(limited_client: httpx.Client) -> None:
    default = create(limited_client, "[fake tokens=1]")
    large = create(limited_client, "[fake tokens=1]", model="house-large")
    refused = limited_client.post(GENERATIONS, json={"prompt": "hi", "model": "gpt-4o-mini"})

    assert default["model"] == "house-small"
    assert large["model"] == "house-large"
    details = assert_error(refused, 400, "invalid_request")
    assert "house-small" in details["model"]


def test_max_tokens_over_the_configured_max_output_tokens_is_invalid_request(
    limited_client: httpx.Client,
) -> None:
    too_many = limited_client.post(
        GENERATIONS, json={"prompt": "hi", "max_tokens": SMALL_OUTPUT_TOKENS + 1}
    )
    at_limit = create(limited_client, "[fake tokens=1]", max_tokens=SMALL_OUTPUT_TOKENS)

    assert "max_tokens" in assert_error(too_many, 400, "invalid_request")
    assert at_limit["max_tokens"] == SMALL_OUTPUT_TOKENS
    # The default max_tokens never exceeds the configured maximum.
    assert create(limited_client, "[fake tokens=1]")["max_tokens"] <= SMALL_OUTPUT_TOKENS
