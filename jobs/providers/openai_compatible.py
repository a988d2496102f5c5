"""Any OpenAI-compatible chat completions server, through the official SDK."""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from typing import Any

import httpx2
import openai
from django.conf import settings

from jobs.providers.base import Chunk, ProviderError, ProviderRequest, chat_messages


def _error_from(exc: Exception) -> ProviderError:
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(str(exc), permanent=False, kind="timeout")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(str(exc), permanent=False, kind="connection")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status == 429:
            return ProviderError(str(exc), permanent=False, kind="http_429")
        if status >= 500 or status in (408, 409):
            return ProviderError(str(exc), permanent=False, kind="http_5xx")
        return ProviderError(str(exc), permanent=True, kind="http_4xx")
    if isinstance(exc, httpx2.TimeoutException):
        return ProviderError(str(exc), permanent=False, kind="timeout")
    if isinstance(exc, ValueError):
        # Not JSON: a proxy's error page, or a stream cut inside an event.
        return ProviderError(
            f"unreadable event from the provider: {exc}", permanent=False, kind="dropped"
        )
    if isinstance(exc, httpx2.HTTPError | openai.APIError):
        # A stream cut mid-way surfaces as httpx's RemoteProtocolError or the SDK's APIError.
        return ProviderError(str(exc), permanent=False, kind="dropped")
    raise exc


class OpenAIProvider:
    name = "openai"

    def __init__(self) -> None:
        self._client = openai.OpenAI(
            api_key=settings.OPENAI_API_KEY or "not-needed",
            base_url=settings.OPENAI_BASE_URL or None,
            # Never infinite: a silent provider must fail the attempt, not hold a worker.
            timeout=openai.Timeout(
                settings.PROVIDER_READ_TIMEOUT_S,
                connect=settings.PROVIDER_CONNECT_TIMEOUT_S,
            ),
            # One retry policy, ours (jobs.providers.base.stream_with_retry).
            max_retries=0,
        )

    def stream(self, request: ProviderRequest) -> Generator[Chunk, None, None]:
        messages = chat_messages(request)
        kwargs: dict[str, Any] = {}
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        try:
            # The SDK makes the request (auth, base URL, headers, timeouts, status errors);
            # the stream's events are read here as plain JSON. The SDK's typed chunk objects
            # cost about half of a worker's CPU at 50 tokens/s per stream (bench/results/
            # profile_worker.md), for three fields that this reads directly.
            context = self._client.chat.completions.with_streaming_response.create(  # type: ignore[call-overload]
                model=request.model,
                messages=messages,
                max_tokens=request.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                **kwargs,
            )
            response = context.__enter__()
        except Exception as exc:
            raise _error_from(exc) from exc
        finished = False
        try:
            for data in _sse_data(response.iter_lines()):
                if data.startswith("[DONE]"):
                    break
                chunk = _chunk_from(data)
                if chunk.finish_reason:
                    finished = True
                if chunk.text or chunk.finish_reason or chunk.usage:
                    yield chunk
        except (GeneratorExit, ProviderError):
            raise
        except Exception as exc:
            raise _error_from(exc) from exc
        finally:
            # Closing the response closes the connection: no more tokens are sent (or paid
            # for) after a cancel.
            context.__exit__(None, None, None)
        if not finished:
            # The body ended without a finish reason: the server or a proxy cut it short.
            raise ProviderError(
                "the stream ended without a finish reason",
                permanent=False,
                kind="dropped",
            )


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The `data` of each server-sent event (its data lines joined with newlines)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
        # `event:`, `id:`, `retry:` and `:` comments carry nothing a chat completion uses.
    if data:
        yield "\n".join(data)


def _chunk_from(data: str) -> Chunk:
    event = json.loads(data)
    if not isinstance(event, dict):
        raise ProviderError(
            "the provider sent an event that is not an object", permanent=False, kind="dropped"
        )
    if event.get("error"):
        # An error reported inside the stream, as the SDK's own Stream raises it.
        error = event["error"]
        message = error.get("message") if isinstance(error, dict) else None
        raise ProviderError(
            message
            if isinstance(message, str) and message
            else "the provider reported an error mid-stream",
            permanent=False,
            kind="dropped",
        )
    usage = None
    reported = event.get("usage")
    if isinstance(reported, dict):
        usage = {
            "prompt_tokens": int(reported.get("prompt_tokens") or 0),
            "completion_tokens": int(reported.get("completion_tokens") or 0),
            "total_tokens": int(reported.get("total_tokens") or 0),
        }
    text = ""
    finish_reason = None
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if isinstance(content, str):
            text += content
        if choice.get("finish_reason"):
            finish_reason = str(choice["finish_reason"])
    return Chunk(text=text, finish_reason=finish_reason, usage=usage)
