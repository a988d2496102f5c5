from __future__ import annotations

import asyncio
import pkgutil
import random
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings

from core import metrics


@dataclass(frozen=True)
class ProviderRequest:
    model: str
    prompt: str
    system: str | None
    max_tokens: int
    temperature: float | None
    # A conversation's earlier turns, oldest first, as (role, content) pairs: "user" for a
    # prompt, "assistant" for an answer. Built by the server (jobs.history.history_for),
    # already cut to the model's context budget; empty for a conversation's first turn.
    history: tuple[tuple[str, str], ...] = ()


def chat_messages(request: ProviderRequest) -> list[dict[str, Any]]:
    """The chat messages a request sends: the system prompt, the history, the new prompt."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend({"role": role, "content": content} for role, content in request.history)
    messages.append({"role": "user", "content": request.prompt})
    return messages


@dataclass(frozen=True)
class Chunk:
    """One piece of the provider's stream: text (or reasoning), and at the end a finish
    reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    reasoning: str = ""


# The `error.code`s of PROTOCOL §8, one per thing a user or an operator does about it.
PROVIDER_AUTH = "provider_auth"
PROVIDER_MODEL_NOT_FOUND = "provider_model_not_found"
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
PROVIDER_RATE_LIMITED = "provider_rate_limited"
PROVIDER_QUOTA_EXHAUSTED = "provider_quota_exhausted"
PROVIDER_UNAVAILABLE = "provider_unavailable"
PROVIDER_BAD_REQUEST = "provider_bad_request"
PROVIDER_PROTOCOL = "provider_protocol"

# The codes whose provider message is about the request (the user's model, input or
# parameters), so it is passed to the client; the others get a message of our own (an
# authentication failure's message may describe the operator's key).
CODES_WITH_PROVIDER_MESSAGE = frozenset(
    {PROVIDER_MODEL_NOT_FOUND, CONTEXT_LENGTH_EXCEEDED, PROVIDER_BAD_REQUEST}
)

_GENERIC_MESSAGES = {
    PROVIDER_AUTH: "The model provider refused the service's credentials.",
    PROVIDER_MODEL_NOT_FOUND: "The model provider does not know this model.",
    CONTEXT_LENGTH_EXCEEDED: "The input is longer than the model's context allows.",
    PROVIDER_RATE_LIMITED: "The model provider is rate limiting requests; try again later.",
    PROVIDER_QUOTA_EXHAUSTED: "The model provider's quota for this service is exhausted.",
    PROVIDER_UNAVAILABLE: "The model provider is unavailable.",
    PROVIDER_BAD_REQUEST: "The model provider rejected the request.",
    PROVIDER_PROTOCOL: "The model provider sent a stream the service cannot read.",
}


class ProviderError(Exception):
    """Any provider failure. `permanent` ones (a deterministic answer: the same request
    would fail the same way) are never retried.

    `code` is the PROTOCOL §8 error code; the message is what the provider said
    (logged, and shown to the client only for codes about the request); `retry_after_s` is
    the provider's Retry-After when it gave one."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        kind: str,
        code: str = PROVIDER_UNAVAILABLE,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.kind = kind  # http_4xx, http_429, http_5xx, timeout, connection, dropped, protocol
        self.code = code
        self.retry_after_s = retry_after_s

    def client_error(self) -> dict[str, Any]:
        """The `error` object of the generation and of its `done` event (PROTOCOL §8)."""
        message = _GENERIC_MESSAGES.get(self.code, "The model provider failed.")
        said = str(self)
        if self.code in CODES_WITH_PROVIDER_MESSAGE and said:
            message = f"{message} The provider said: {said[:500]}"
        error: dict[str, Any] = {"code": self.code, "message": message}
        if self.retry_after_s is not None:
            error["retry_after"] = max(1, round(self.retry_after_s))
        return error


class Provider(Protocol):
    def astream(self, request: ProviderRequest) -> AsyncGenerator[Chunk, None]:
        """Yield chunks on the worker's event loop (jobs.engine): closing the generator, or
        cancelling the task blocked in it, must close the provider's connection."""
        ...


# Retries before the first text: invisible to subscribers, so worth a few. After text has
# been streamed, a failure becomes a new attempt (with `reset`) instead.
PROVIDER_RETRIES = 3
RETRY_BASE_S = 0.5
RETRY_MAX_S = 8.0
# A provider's Retry-After is honoured up to this; one that asks for longer fails the
# generation as `provider_rate_limited` with its `retry_after`, rather than holding a worker
# thread (and the user) for minutes.
RETRY_AFTER_MAX_S = 20.0


def backoff_s(retry: int) -> float:
    """Exponential backoff with full jitter, so that many workers do not retry in step."""
    return random.uniform(0, min(RETRY_MAX_S, RETRY_BASE_S * 2**retry))


async def astream_with_retry(
    provider: Provider,
    request: ProviderRequest,
    *,
    stop_requested: Callable[[], bool],
) -> AsyncGenerator[Chunk, None]:
    """The provider's stream, retried with backoff while it has produced no text yet."""
    retry = 0
    while True:
        stream = provider.astream(request)
        held: list[Chunk] = []
        try:
            async for chunk in stream:
                held.append(chunk)
                if chunk.text or chunk.reasoning or chunk.finish_reason:
                    break
        except ProviderError as error:
            await stream.aclose()
            metrics.PROVIDER_ERRORS.labels(kind=error.kind).inc()
            if error.permanent or retry >= PROVIDER_RETRIES or stop_requested():
                raise
            delay_s = backoff_s(retry)
            if error.retry_after_s is not None:
                if error.retry_after_s > RETRY_AFTER_MAX_S:
                    raise
                # The provider said when it will take the request: sooner is refused again.
                delay_s = max(delay_s, error.retry_after_s)
            await asyncio.sleep(delay_s)
            retry += 1
            continue
        try:
            for chunk in held:
                yield chunk
            async for chunk in stream:
                yield chunk
        except ProviderError as error:
            # Mid-stream, after text: no retry here (the runner starts a new attempt).
            metrics.PROVIDER_ERRORS.labels(kind=error.kind).inc()
            raise
        finally:
            await stream.aclose()
        return


# The providers by name, as "module:class": each is imported only when it is selected, so
# that the demo runs (and the web process starts) without the openai SDK being importable.
PROVIDERS = {
    "openai": "jobs.providers.openai_compatible:OpenAIProvider",
    "demo": "jobs.providers.demo:DemoProvider",
}


_instances: dict[str, Provider] = {}
# A worker's threads all ask for the provider when a burst of generations starts: unlocked,
# each made a client of its own (an SSL context, ~25 ms of CPU, and a connection pool each).
_instances_lock = threading.Lock()


def get_provider(name: str | None = None) -> Provider:
    name = name or settings.LLM_PROVIDER
    provider = _instances.get(name)
    if provider is None:
        with _instances_lock:
            provider = _instances.get(name)
            if provider is None:
                provider = _instances[name] = pkgutil.resolve_name(PROVIDERS[name])()
    return provider
