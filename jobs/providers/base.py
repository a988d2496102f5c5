from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings

from project import metrics


@dataclass(frozen=True)
class ProviderRequest:
    model: str
    prompt: str
    system: str | None
    max_tokens: int
    temperature: float | None
    # A conversation's earlier turns, oldest first, as (role, content) pairs: "user" for a
    # prompt, "assistant" for an answer. Built by the server (api.conversations.history_for),
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
    """One piece of the provider's stream: text, and at the end a finish reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None


class ProviderError(Exception):
    """Any provider failure. `permanent` ones (a 400-class answer) are never retried."""

    def __init__(self, message: str, *, permanent: bool, kind: str) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.kind = kind  # http_4xx, http_429, http_5xx, timeout, connection, dropped


class Provider(Protocol):
    name: str

    def stream(self, request: ProviderRequest) -> Generator[Chunk, None, None]:
        """Yield chunks; closing the generator must close the provider's connection."""
        ...


# Retries before the first text: invisible to subscribers, so worth a few. After text has
# been streamed, a failure becomes a new attempt (with `reset`) instead.
PROVIDER_RETRIES = 3
RETRY_BASE_S = 0.5
RETRY_MAX_S = 8.0


def backoff_s(retry: int) -> float:
    """Exponential backoff with full jitter, so that many workers do not retry in step."""
    return random.uniform(0, min(RETRY_MAX_S, RETRY_BASE_S * 2**retry))


def stream_with_retry(
    provider: Provider,
    request: ProviderRequest,
    *,
    stop_requested: Callable[[], bool],
    sleep: Callable[[float], None] = time.sleep,
) -> Generator[Chunk, None, None]:
    """The provider's stream, retried with backoff while it has produced no text yet."""
    retry = 0
    while True:
        stream = provider.stream(request)
        held: list[Chunk] = []
        try:
            for chunk in stream:
                held.append(chunk)
                if chunk.text or chunk.finish_reason:
                    break
        except ProviderError as error:
            stream.close()
            metrics.PROVIDER_ERRORS.inc(kind=error.kind)
            if error.permanent or retry >= PROVIDER_RETRIES or stop_requested():
                raise
            sleep(backoff_s(retry))
            retry += 1
            continue
        try:
            yield from held
            yield from stream
        except ProviderError as error:
            # Mid-stream, after text: no retry here (the runner starts a new attempt).
            metrics.PROVIDER_ERRORS.inc(kind=error.kind)
            raise
        finally:
            stream.close()
        return


def _registry() -> dict[str, Callable[[], Provider]]:
    from jobs.providers.demo import DemoProvider
    from jobs.providers.openai_compatible import OpenAIProvider

    return {"openai": OpenAIProvider, "demo": DemoProvider}


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
                provider = _instances[name] = _registry()[name]()
    return provider


def chunks_to_text(chunks: Iterator[Chunk]) -> str:
    return "".join(chunk.text for chunk in chunks)
