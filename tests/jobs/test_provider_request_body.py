"""The chat completions request goes out byte for byte as the SDK would send it, without the
SDK's walk of every message against its content-part types (jobs.providers.openai_compatible.
sdk_arguments)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import openai
import pytest
from openai.resources.chat.completions import completions as sdk_completions
from pytest_django.fixtures import Settings

from jobs.providers.base import ProviderRequest
from jobs.providers.openai_compatible import request_parameters, sdk_arguments

REQUEST = ProviderRequest(
    model="gpt-4o-mini",
    prompt='and now?\n"quoted" \\ tab\t, é, 😀, \u2028',
    system="Be brief.",
    max_tokens=321,
    temperature=0.25,
    history=(
        ("user", "first question"),
        ("assistant", "first answer, 中文, \x00 and </script>"),
        ("user", "second"),
        ("assistant", ""),
    ),
)
EMPTY_SSE = b"data: [DONE]\n\n"


def sent_bodies(arguments: list[dict[str, Any]]) -> list[bytes]:
    """The request body the SDK sends for each set of `create` arguments."""
    bodies: list[bytes] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        bodies.append(request.read())
        return httpx2.Response(
            200, content=EMPTY_SSE, headers={"content-type": "text/event-stream"}
        )

    async def send_all() -> None:
        client = openai.AsyncOpenAI(
            api_key="test",
            base_url="http://provider.test/v1",
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(transport=httpx2.MockTransport(answer)),
        )
        try:
            for each in arguments:
                async with client.chat.completions.with_streaming_response.create(**each) as reply:
                    await reply.read()
        finally:
            await client.close()

    asyncio.run(send_all())
    return bodies


@pytest.mark.parametrize("token_limit", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("stream_options", [True, False])
def test_the_body_is_byte_for_byte_the_one_the_sdk_builds_from_the_same_parameters(
    settings: Settings, token_limit: str, stream_options: bool
) -> None:
    settings.OPENAI_TOKEN_LIMIT_PARAM = token_limit
    settings.OPENAI_MAX_COMPLETION_TOKENS_MODELS = []
    settings.OPENAI_MAX_TOKENS_MODELS = []
    settings.OPENAI_STREAM_OPTIONS = stream_options
    parameters = request_parameters(REQUEST)

    through_sdk, ours = sent_bodies([parameters, sdk_arguments(parameters)])

    assert ours == through_sdk
    body = json.loads(ours)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        *({"role": role, "content": content} for role, content in REQUEST.history),
        {"role": "user", "content": REQUEST.prompt},
    ]
    assert body[token_limit] == 321
    assert ("stream_options" in body) is stream_options


def test_the_sdk_does_not_walk_the_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    walked: list[Any] = []
    transform = sdk_completions.async_maybe_transform  # type: ignore[attr-defined]

    async def recording(data: Any, expected_type: Any) -> Any:
        walked.append(data)
        return await transform(data, expected_type)

    monkeypatch.setattr(sdk_completions, "async_maybe_transform", recording)
    parameters = request_parameters(REQUEST)

    (body,) = sent_bodies([sdk_arguments(parameters)])

    assert [data["messages"] for data in walked] == [[]]
    assert json.loads(body)["messages"] == parameters["messages"]
