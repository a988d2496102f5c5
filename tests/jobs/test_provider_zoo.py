"""Every OpenAI-compatible server's stream and failure, end to end: the fake provider imitates
each one (tests/fake_openai.py, "the provider zoo"), the real SDK reads it through the real
worker, and each test checks what a subscriber folded, the final row (status, finish_reason,
error code, usage) and how many requests reached the provider."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.events import fold
from tests.conftest import create, wait_terminal
from tests.fake_openai import answer_after_reasoning, expected_text, odd_text, reasoning_text
from tests.harness import FakeLLM, Service, make_token
from tests.jobs.support import requests_with, unique, watch
from tests.realtime.wsclient import events_until_done, recv, send, session
from tests.realtime.wsclient import generation as ws_generation

# Timeouts short enough for a test, in the order a deployment has them: the first byte may
# take longer than the gap between two chunks.
ZOO_ENV = {
    "PROVIDER_READ_TIMEOUT_S": "2",
    "PROVIDER_FIRST_BYTE_TIMEOUT_S": "6",
    "PROVIDER_FINISH_GRACE_S": "1",
    "ALLOWED_MODELS": "gpt-4o-mini,o3-mini,local-model",
    "DEFAULT_MODEL": "gpt-4o-mini",
    # LM Studio refuses stream_options: off for its models only.
    "OPENAI_NO_STREAM_OPTIONS_MODELS": "local-*",
}


def fold_reasoning(messages: Iterable[dict[str, Any]], text: str = "") -> str:
    """The reasoning a client that shows it ends up with (PROTOCOL §8)."""
    for message in messages:
        kind = message["type"]
        if kind == "snapshot":
            text = message.get("reasoning", "")
        elif kind == "reasoning":
            text += message["text"]
        elif kind == "reset":
            text = ""
    return text


@pytest.fixture(scope="module")
def zoo(fake_llm: FakeLLM) -> Iterator[Service]:
    instance = Service(fake_llm, env=ZOO_ENV).start()
    yield instance
    instance.stop()


@pytest.fixture
def user(zoo: Service) -> Iterator[httpx.Client]:
    with zoo.client("alice") as client:
        yield client


def run(
    zoo: Service, client: httpx.Client, fake_llm: FakeLLM, directive: str, **fields: Any
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Create a generation with `directive` in its prompt; (final row, what an SSE subscriber
    from the start received, the requests that reached the provider)."""
    prompt = unique(f"zoo {directive}")
    generation = create(client, prompt, **fields)
    subscriber = watch(zoo, generation["id"])
    final = wait_terminal(client, generation["id"], timeout_s=90)
    received = subscriber.value()
    assert_in_order(received)
    assert fold(received) == final["output"]
    assert fold_reasoning(received) == final["reasoning"]
    assert received[-1]["status"] == final["status"]
    assert received[-1]["finish_reason"] == final["finish_reason"]
    assert received[-1]["error"] == final["error"]
    return final, received, requests_with(fake_llm.requests(), prompt)


def assert_in_order(received: list[dict[str, Any]]) -> None:
    """PROTOCOL §3: seqs go up by one, except to a snapshot (the server filling a gap from
    the row when the generation ran faster than live delivery); `done` is last."""
    for before, after in itertools.pairwise(received):
        if after["type"] == "snapshot":
            assert after["seq"] >= before["seq"], received
        else:
            assert after["seq"] == before["seq"] + 1, received
    assert received[-1]["type"] == "done"
    assert all(message["type"] != "done" for message in received[:-1])


def assert_completed(final: dict[str, Any], text: str, finish_reason: str = "stop") -> None:
    assert final["status"] == "completed", final
    assert final["finish_reason"] == finish_reason
    assert final["output"] == text
    assert final["error"] is None


# -- dialects ------------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["openai", "vllm", "llamacpp", "ollama", "azure", "openrouter"])
def test_each_servers_dialect_streams_the_whole_answer_with_its_usage(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM, server: str
) -> None:
    final, _, requests = run(zoo, user, fake_llm, f"[fake tokens=40 server={server}]")

    assert_completed(final, expected_text(40))
    assert final["attempt"] == 1
    # The provider's own count, from a usage chunk or (llama.cpp, OpenRouter) the finish chunk.
    assert final["usage"]["completion_tokens"] == 40
    assert final["usage"]["prompt_tokens"] == len(requests[0]["messages"][0]["content"].split())
    assert len(requests) == 1
    assert requests[0]["stream_options"] == {"include_usage": True}
    # A base URL of a server other than OpenAI's: the cap goes as max_tokens.
    assert requests[0]["max_tokens"] == 1024
    assert "max_completion_tokens" not in requests[0]


def test_lm_studio_model_configured_without_stream_options_completes(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM
) -> None:
    final, _, requests = run(
        zoo, user, fake_llm, "[fake tokens=30 server=lmstudio]", model="local-model"
    )

    assert_completed(final, expected_text(30))
    assert len(requests) == 1
    assert "stream_options" not in requests[0]
    # No usage chunk asked for: the service's own count.
    assert final["usage"]["completion_tokens"] == 30


def test_server_refusing_stream_options_fails_as_bad_request_naming_the_parameter(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM
) -> None:
    final, _, requests = run(zoo, user, fake_llm, "[fake tokens=30 server=lmstudio]")

    assert final["status"] == "failed"
    assert final["error"]["code"] == "provider_bad_request"
    assert "stream_options" in final["error"]["message"]
    # The same request would be refused again: not retried.
    assert len(requests) == 1


def test_o_series_model_gets_max_completion_tokens_instead_of_max_tokens(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM
) -> None:
    final, _, requests = run(
        zoo, user, fake_llm, "[fake tokens=20 reject=max_tokens]", model="o3-mini"
    )

    assert_completed(final, expected_text(20))
    assert len(requests) == 1
    assert requests[0]["max_completion_tokens"] == 1024
    assert "max_tokens" not in requests[0]


# -- what is text, and how an answer ends ----------------------------------------------------


@pytest.mark.parametrize("finish_reason", ["content_filter", "tool_calls"])
def test_finish_reason_is_kept_as_the_provider_gave_it(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM, finish_reason: str
) -> None:
    final, _, requests = run(
        zoo, user, fake_llm, f"[fake tokens=12 server=azure finish={finish_reason}]"
    )

    # A filtered answer is complete as far as it goes, and never looks like a normal stop.
    assert_completed(final, expected_text(12), finish_reason)
    assert len(requests) == 1


def test_done_without_finish_reason_completes_as_stop(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM
) -> None:
    final, received, requests = run(zoo, user, fake_llm, "[fake tokens=25 finish=none]")

    assert_completed(final, expected_text(25))
    assert final["attempt"] == 1
    assert "reset" not in [message["type"] for message in received]
    assert len(requests) == 1


def test_connection_held_open_after_the_finish_reason_completes_after_the_grace(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM
) -> None:
    started = time.monotonic()
    final, _, requests = run(zoo, user, fake_llm, "[fake tokens=25 after_finish=hang usage=none]")

    assert_completed(final, expected_text(25))
    assert final["attempt"] == 1
    assert len(requests) == 1
    # Within the 1 s grace (plus the machinery), far below the 2 s read timeout x 3 attempts.
    assert time.monotonic() - started < 6
    assert final["usage"]["completion_tokens"] == 25


@pytest.mark.parametrize("shape", ["refusal=1", "content=list"])
def test_refusal_text_and_list_shaped_content_are_text(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM, shape: str
) -> None:
    final, _, requests = run(zoo, user, fake_llm, f"[fake tokens=15 {shape}]")

    assert_completed(final, expected_text(15))
    assert len(requests) == 1


@pytest.mark.parametrize("server", ["vllm", "openrouter"])
def test_reasoning_is_streamed_as_its_own_events_and_stored_beside_the_output(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM, server: str
) -> None:
    final, received, requests = run(
        zoo, user, fake_llm, f"[fake tokens=30 reasoning=10 rate=60 ttft=500 server={server}]"
    )

    assert_completed(final, answer_after_reasoning(30, 10))
    assert final["reasoning"] == reasoning_text(10)
    kinds = [message["type"] for message in received]
    assert "reasoning" in kinds
    # The thinking comes before the answer, in the same seq space.
    assert kinds.index("reasoning") < kinds.index("delta")
    # A v1 client that knows nothing of `reasoning` events folds the exact output.
    v1_view = [message for message in received if message["type"] != "reasoning"]
    assert fold(v1_view) == final["output"]
    assert final["usage"]["completion_tokens"] == 30
    assert len(requests) == 1


# -- odd shapes ----------------------------------------------------------------------------


def test_line_separator_characters_in_the_output_survive_and_are_escaped_on_the_wire(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM
) -> None:
    final, _, requests = run(zoo, user, fake_llm, "[fake tokens=30 odd=1 server=vllm]")

    assert_completed(final, odd_text(30))
    assert "\u2028" in final["output"] and "\u2029" in final["output"]
    assert "\u0085" in final["output"]
    assert final["attempt"] == 1
    assert len(requests) == 1
    # The service's own JSON carries them escaped, so every line-splitting reader (Python's
    # str.splitlines, old JavaScript) sees one event per line.
    with user.stream("GET", f"/api/v1/generations/{final['id']}/events") as response:
        raw = response.read().decode()
    rest = user.get(f"/api/v1/generations/{final['id']}").text
    for body in (raw, rest):
        assert "\\u2028" in body
        assert not any(char in body for char in "\u2028\u2029\u0085")


@pytest.mark.parametrize(
    "shape", ["split=1", "eol=crlf", "eol=cr", "shape=empty_choices", "server=azure split=1"]
)
def test_odd_but_valid_streams_are_read_whole(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM, shape: str
) -> None:
    final, _, requests = run(zoo, user, fake_llm, f"[fake tokens=30 {shape}]")

    assert_completed(final, expected_text(30))
    assert final["attempt"] == 1
    assert len(requests) == 1


@pytest.mark.parametrize("shape", ["shape=null_choice", "nonstream=1"])
def test_unreadable_stream_fails_at_once_as_provider_protocol(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM, shape: str
) -> None:
    final, _, requests = run(zoo, user, fake_llm, f"[fake tokens=30 {shape}]")

    assert final["status"] == "failed"
    assert final["finish_reason"] == "error"
    assert final["error"]["code"] == "provider_protocol"
    # Deterministic: the same request gets the same bytes, so it is not paid for again.
    assert len(requests) == 1
    assert final["attempt"] == 1


def test_error_object_with_status_200_is_a_named_failure(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM
) -> None:
    final, _, requests = run(zoo, user, fake_llm, "[fake error200=1]")

    assert final["status"] == "failed"
    # It says 502: the upstream is unavailable, retried like any 5xx before text.
    assert final["error"]["code"] == "provider_unavailable"
    assert len(requests) == 4


# -- failures, named ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directive", "code", "says_why"),
    [
        ("fail=401x9", "provider_auth", False),
        ("fail=404x9 code=model_not_found", "provider_model_not_found", True),
        ("fail=400x9 code=context_length_exceeded", "context_length_exceeded", True),
        ("fail=400x9 message=vllm_context", "context_length_exceeded", True),
        ("reject=max_tokens", "provider_bad_request", True),
        ("fail=429x9 code=insufficient_quota", "provider_quota_exhausted", False),
    ],
)
def test_deterministic_provider_refusals_fail_at_once_with_their_code(
    zoo: Service,
    user: httpx.Client,
    fake_llm: FakeLLM,
    directive: str,
    code: str,
    says_why: bool,
) -> None:
    final, _received, requests = run(zoo, user, fake_llm, f"[fake tokens=10 {directive}]")

    assert final["status"] == "failed"
    assert final["finish_reason"] == "error"
    assert final["error"]["code"] == code
    assert final["output"] == ""
    # Asking again would be refused the same way (or, for a quota, until someone pays).
    assert len(requests) == 1
    assert final["attempt"] == 1
    # The provider's words reach the client when they are about the request.
    provider_words = "maximum context length" if "vllm" in directive else "injected failure"
    if "reject" in directive:
        provider_words = "max_tokens"
    assert (provider_words in final["error"]["message"]) is says_why


def test_rate_limit_with_short_retry_after_is_honoured_then_completes(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM
) -> None:
    started = time.monotonic()
    final, received, requests = run(
        zoo, user, fake_llm, "[fake tokens=20 fail=429x1 retry_after=2]"
    )

    assert_completed(final, expected_text(20))
    assert len(requests) == 2
    assert time.monotonic() - started >= 2
    assert "reset" not in [message["type"] for message in received]


def test_rate_limit_with_long_retry_after_fails_with_retry_after(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM
) -> None:
    final, _, requests = run(zoo, user, fake_llm, "[fake tokens=20 fail=429x9 retry_after=120]")

    assert final["status"] == "failed"
    assert final["error"]["code"] == "provider_rate_limited"
    assert final["error"]["retry_after"] == 120
    assert len(requests) == 1


def test_provider_5xx_is_retried_then_fails_as_unavailable(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM
) -> None:
    final, _, requests = run(zoo, user, fake_llm, "[fake tokens=20 fail=503x9]")

    assert final["status"] == "failed"
    assert final["error"]["code"] == "provider_unavailable"
    assert len(requests) == 4


@pytest.mark.parametrize("failure", ["error_at=6x1", "drop=6x1"])
def test_failure_mid_stream_restarts_after_a_back_off_and_counts_the_lost_tokens(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM, failure: str
) -> None:
    tokens_before = user.get("/api/v1/me").json()["usage"]["tokens_today"]
    final, received, requests = run(zoo, user, fake_llm, f"[fake tokens=30 rate=200 {failure}]")

    assert_completed(final, expected_text(30))
    assert final["attempt"] == 2
    assert [message["type"] for message in received].count("reset") == 1
    assert len(requests) == 2
    # The first attempt's 6 tokens were paid for: in the usage, and in the daily quota.
    assert final["usage"]["earlier_attempts_completion_tokens"] == 6
    assert final["usage"]["completion_tokens"] == 36
    assert user.get("/api/v1/me").json()["usage"]["tokens_today"] - tokens_before == 36


def test_slow_first_byte_within_its_own_timeout_completes(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM
) -> None:
    # 3 s before the headers: past the 2 s allowed between chunks, within the 6 s first byte.
    final, _, requests = run(zoo, user, fake_llm, "[fake tokens=10 first_byte=3000]")

    assert_completed(final, expected_text(10))
    assert len(requests) == 1


def test_silence_between_chunks_past_the_read_timeout_fails_each_attempt(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM
) -> None:
    started = time.monotonic()
    final, _received, requests = run(zoo, user, fake_llm, "[fake tokens=30 hang=5]")
    elapsed_s = time.monotonic() - started

    assert final["status"] == "failed"
    assert final["error"]["code"] == "provider_unavailable"
    # Each attempt streamed 5 tokens and then fell silent: a new attempt each time.
    assert final["attempt"] == 3
    assert len(requests) == 3
    assert final["usage"]["earlier_attempts_completion_tokens"] == 10
    # Each silence ended after the 2 s between-chunk timeout, not the 6 s of the first byte
    # (3 x 6 s = 18 s): the two are separate.
    assert elapsed_s < 16, elapsed_s


# -- the sample client ---------------------------------------------------------------------

NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_sample_client_folds_reasoning_and_output_apart(
    zoo: Service, user: httpx.Client, fake_llm: FakeLLM
) -> None:
    prompt = unique("zoo [fake tokens=40 reasoning=15 rate=80 server=vllm]")
    assert NODE is not None
    ran = subprocess.run(
        [NODE, str(Path(__file__).with_name("client_fold.mjs"))],
        env={
            **os.environ,
            "BASE_URL": zoo.url(),
            "TOKEN": make_token("alice"),
            "PROMPT": prompt,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout.strip().splitlines()[-1])
    final = wait_terminal(user, seen["id"])

    assert final["status"] == "completed"
    assert seen["text"] == final["output"] == answer_after_reasoning(40, 15)
    assert seen["reasoning"] == final["reasoning"] == reasoning_text(15)
    assert seen["update_reasoning"] == final["reasoning"]
    assert "reasoning" in seen["kinds"]


async def test_reasoning_over_the_websocket_resumes_mid_thought_with_a_snapshot_carrying_it(
    zoo: Service,
) -> None:
    prompt = unique("zoo ws [fake tokens=60 reasoning=30 rate=40 server=vllm]")
    async with session(zoo) as ws:
        await send(ws, {"type": "generate", "prompt": prompt})
        created = await recv(ws)
        generation_id = created["generation"]["id"]
        first: list[dict[str, Any]] = []
        while len([m for m in first if m["type"] == "reasoning"]) < 3:
            first.append(await recv(ws))
    # A new connection, subscribing from the start: the snapshot carries the reasoning so far.
    async with session(zoo) as ws:
        await send(ws, {"type": "subscribe", "id": generation_id})
        assert (await recv(ws))["type"] == "subscribed"
        second = await events_until_done(ws, generation_id)
    final = await ws_generation(zoo, generation_id)

    assert second[0]["type"] == "snapshot"
    assert "reasoning" in second[0]
    assert final["status"] == "completed"
    assert final["reasoning"] == reasoning_text(30)
    assert final["output"] == answer_after_reasoning(60, 30)
    assert fold_reasoning(second) == final["reasoning"]
    assert fold(second) == final["output"]
    assert fold_reasoning(first) == reasoning_text(30)[: len(fold_reasoning(first))]
