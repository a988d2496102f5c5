"""Any OpenAI-compatible chat completions server, through the official SDK."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import httpx2
import openai
from django.conf import settings

from jobs.providers.base import Chunk, ProviderError, ProviderRequest


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
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": request.prompt})
        kwargs: dict[str, Any] = {}
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        try:
            stream = self._client.chat.completions.create(  # type: ignore[call-overload]
                model=request.model,
                messages=messages,
                max_tokens=request.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                **kwargs,
            )
        except Exception as exc:
            raise _error_from(exc) from exc
        finished = False
        try:
            with stream:
                for event in stream:
                    usage = None
                    if event.usage is not None:
                        usage = {
                            "prompt_tokens": event.usage.prompt_tokens,
                            "completion_tokens": event.usage.completion_tokens,
                            "total_tokens": event.usage.total_tokens,
                        }
                    text = ""
                    finish_reason = None
                    for choice in event.choices:
                        if choice.delta and choice.delta.content:
                            text += choice.delta.content
                        if choice.finish_reason:
                            finish_reason = choice.finish_reason
                            finished = True
                    if text or finish_reason or usage:
                        yield Chunk(text=text, finish_reason=finish_reason, usage=usage)
        except GeneratorExit:
            raise
        except Exception as exc:
            raise _error_from(exc) from exc
        if not finished:
            # The body ended without a finish reason: the server or a proxy cut it short.
            raise ProviderError(
                "the stream ended without a finish reason",
                permanent=False,
                kind="dropped",
            )
