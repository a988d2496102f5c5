"""Any OpenAI-compatible chat completions server, through the official SDK.

The SDK makes the request (auth, base URL, headers, timeouts, status errors), over aiohttp or
httpx (OPENAI_HTTP_TRANSPORT); the stream's events are read here from the raw bytes. Every
server this is pointed at (OpenAI, Azure, vLLM, llama.cpp, Ollama, LM Studio, OpenRouter,
LiteLLM) speaks a slightly different dialect of the same stream; the README's "Providers"
section lists what each sends and how it is read.
"""

from __future__ import annotations

import asyncio
import codecs
import email.utils
import fnmatch
import json
import logging
import re
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import httpx2
import openai
from django.conf import settings

from jobs.providers.base import (
    CONTEXT_LENGTH_EXCEEDED,
    PROVIDER_AUTH,
    PROVIDER_BAD_REQUEST,
    PROVIDER_MODEL_NOT_FOUND,
    PROVIDER_PROTOCOL,
    PROVIDER_QUOTA_EXHAUSTED,
    PROVIDER_RATE_LIMITED,
    PROVIDER_UNAVAILABLE,
    Chunk,
    ProviderError,
    ProviderRequest,
    chat_messages,
)

try:
    from openai._vendor.httpx_aiohttp.transport import (
        AiohttpResponseStream as _AiohttpResponseStream,
    )
    from openai._vendor.httpx_aiohttp.transport import map_aiohttp_exceptions
except ImportError:  # pragma: no cover - an SDK without its aiohttp transport
    _AiohttpResponseStream = None  # type: ignore[assignment,misc]
    map_aiohttp_exceptions = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

# The finish reasons of PROTOCOL §8, and the other names servers use for them. Anything
# else a server invents ends the answer as `stop`: the text is complete as far as we know.
FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",  # OpenAI's older name for a tool call
    "max_tokens": "length",  # some gateways pass Anthropic's name through
    "end_turn": "stop",
    "stop_sequence": "stop",
    "eos": "stop",
    "eos_token": "stop",
}
# A body that is not an event stream (a gateway that ignored stream=true, an error page) is
# read up to this much to say what it was.
NON_STREAM_BODY_MAX_BYTES = 64 * 1024
# Phrases with which servers without OpenAI's `context_length_exceeded` code (vLLM,
# llama.cpp, Ollama, LM Studio, LiteLLM) say the input does not fit the model.
_CONTEXT_LENGTH_PHRASES = re.compile(
    r"context length|context window|context size|maximum context|exceed_context_size"
    r"|too many tokens|prompt is too long|input is too long",
    re.IGNORECASE,
)


# -- dialect ------------------------------------------------------------------------------


def token_limit_parameter(model: str) -> str:
    """`max_completion_tokens` or `max_tokens`: which one this model's server takes.

    OpenAI's o-series and GPT-5 models refuse `max_tokens` with a 400; most self-hosted servers
    (older vLLM, llama.cpp, LM Studio) know only `max_tokens`."""
    for pattern in settings.OPENAI_MAX_COMPLETION_TOKENS_MODELS:
        if fnmatch.fnmatchcase(model, pattern):
            return "max_completion_tokens"
    for pattern in settings.OPENAI_MAX_TOKENS_MODELS:
        if fnmatch.fnmatchcase(model, pattern):
            return "max_tokens"
    return str(settings.OPENAI_TOKEN_LIMIT_PARAM)


def sends_stream_options(model: str) -> bool:
    """Whether to ask for the usage chunk (`stream_options`), which a few servers refuse."""
    return not any(
        fnmatch.fnmatchcase(model, pattern) for pattern in settings.OPENAI_NO_STREAM_OPTIONS_MODELS
    ) and bool(settings.OPENAI_STREAM_OPTIONS)


def request_parameters(request: ProviderRequest) -> dict[str, Any]:
    """The body of the chat completions request (README: "What is sent to the provider")."""
    parameters: dict[str, Any] = {
        "model": request.model,
        "messages": chat_messages(request),
        "stream": True,
        token_limit_parameter(request.model): request.max_tokens,
    }
    if sends_stream_options(request.model):
        parameters["stream_options"] = {"include_usage": True}
    if request.temperature is not None:
        parameters["temperature"] = request.temperature
    return parameters


def sdk_arguments(parameters: dict[str, Any]) -> dict[str, Any]:
    """The arguments of the SDK's `create` that send `parameters` as the request's body.

    The messages go as `extra_body`, which the SDK sends as given, in the body's `messages`
    field (an empty list holds its place, first in the body's order as the SDK writes it).
    Given as `messages`, the SDK would first walk every message against the types of all the
    content parts chat completions accept, which changes nothing in messages of a role and a
    text (chat_messages builds no other kind) and costs about as much CPU as the rest of the
    request, and many times more with a conversation's history: 6.7 ms for 20 messages
    where the rest takes 0.13 ms (docs/scaling.md, "The request's messages"). The body is
    the one the SDK would send (tests/jobs/test_provider_request_body.py)."""
    return {**parameters, "messages": [], "extra_body": {"messages": parameters["messages"]}}


# -- errors -------------------------------------------------------------------------------


def _retry_after_s(headers: Any) -> float | None:
    """The provider's Retry-After (seconds or an HTTP date), or OpenAI's retry-after-ms."""
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _said(body: Any) -> tuple[str, str]:
    """(code-or-type, message) of a provider's error object, however it is nested."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict | str):
        body = body["error"]
    if isinstance(body, str):
        return "", body
    if not isinstance(body, dict):
        return "", ""
    code = body.get("code") or body.get("type") or ""
    message = body.get("message") or body.get("detail") or ""
    return str(code), str(message)


def error_for_status(status: int, body: Any, headers: Any = None) -> ProviderError:
    """The named failure (PROTOCOL §8) of an HTTP error answer, or of an error object that a
    server sent in a stream or a 200 body (with the status it carries, if any)."""
    code, message = _said(body)
    message = message or f"HTTP {status}"
    said = f"{code} {message}"
    retry_after_s = _retry_after_s(headers)
    if "insufficient_quota" in said or "quota" in code:
        # Retrying only repeats the refusal until someone pays: never retried.
        return ProviderError(
            message, permanent=True, kind="http_429", code=PROVIDER_QUOTA_EXHAUSTED
        )
    if status == 429 or "rate_limit" in code:
        return ProviderError(
            message,
            permanent=False,
            kind="http_429",
            code=PROVIDER_RATE_LIMITED,
            retry_after_s=retry_after_s,
        )
    if status in (401, 403) or code in ("invalid_api_key", "authentication_error"):
        return ProviderError(message, permanent=True, kind="http_4xx", code=PROVIDER_AUTH)
    if code == "context_length_exceeded" or (
        400 <= status < 500 and _CONTEXT_LENGTH_PHRASES.search(said)
    ):
        return ProviderError(message, permanent=True, kind="http_4xx", code=CONTEXT_LENGTH_EXCEEDED)
    if status == 404 or code in ("model_not_found", "not_found_error"):
        return ProviderError(
            message, permanent=True, kind="http_4xx", code=PROVIDER_MODEL_NOT_FOUND
        )
    if status >= 500 or status in (408, 409) or status == 0:
        return ProviderError(
            message,
            permanent=False,
            kind="http_5xx",
            code=PROVIDER_UNAVAILABLE,
            retry_after_s=retry_after_s,
        )
    return ProviderError(message, permanent=True, kind="http_4xx", code=PROVIDER_BAD_REQUEST)


def _protocol_error(message: str) -> ProviderError:
    # Deterministic: the same request gets the same bytes, so retrying only pays again.
    return ProviderError(message, permanent=True, kind="protocol", code=PROVIDER_PROTOCOL)


def _error_from(exc: Exception) -> ProviderError:
    if map_aiohttp_exceptions is not None:
        # An aiohttp error from a body read directly (_aiohttp_content): named as the SDK's
        # transport names it when it reads.
        try:
            with map_aiohttp_exceptions():
                raise exc
        except Exception as mapped:
            exc = mapped
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return ProviderError(str(exc), permanent=False, kind="timeout")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(str(exc), permanent=False, kind="connection")
    if isinstance(exc, openai.APIStatusError):
        return error_for_status(exc.status_code, exc.body, exc.response.headers)
    if isinstance(exc, httpx2.HTTPError | openai.APIError):
        # A stream cut mid-way surfaces as httpx's RemoteProtocolError or the SDK's APIError.
        return ProviderError(str(exc), permanent=False, kind="dropped")
    raise exc


# -- the adapter --------------------------------------------------------------------------


class OpenAIProvider:
    def __init__(self) -> None:
        self._options: dict[str, Any] = {
            "api_key": settings.OPENAI_API_KEY or "not-needed",
            "base_url": settings.OPENAI_BASE_URL or None,
            # Never infinite: a silent provider must fail the attempt, not hold a worker. The
            # read timeout is the first byte's (a reasoning model may think for minutes, a
            # local server may be loading the model); the runner holds the stream to the
            # shorter PROVIDER_READ_TIMEOUT_S between chunks once text has come.
            "timeout": openai.Timeout(
                max(settings.PROVIDER_FIRST_BYTE_TIMEOUT_S, settings.PROVIDER_READ_TIMEOUT_S),
                connect=settings.PROVIDER_CONNECT_TIMEOUT_S,
            ),
            # One retry policy, ours (jobs.providers.base.astream_with_retry).
            "max_retries": 0,
        }
        # One asyncio client per event loop: its connection pool belongs to the loop it was
        # first used on (the worker runs one loop, jobs.engine; tests may run others).
        self._async_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, openai.AsyncOpenAI
        ] = weakref.WeakKeyDictionary()

    def _async_client(self) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            # OPENAI_HTTP_TRANSPORT: the SDK's aiohttp client, or (None) its default httpx one.
            http_client = (
                openai.DefaultAioHttpClient()
                if settings.OPENAI_HTTP_TRANSPORT == "aiohttp"
                else None
            )
            client = self._async_clients[loop] = openai.AsyncOpenAI(
                **self._options, http_client=http_client
            )
        return client

    async def astream(self, request: ProviderRequest) -> AsyncGenerator[Chunk, None]:
        """The request's chunks, on the running event loop (jobs.engine). A cancel of the
        reading task lands in the pending read, and closing the response closes the
        connection at once."""
        parameters = request_parameters(request)
        wants_usage = "stream_options" in parameters
        try:
            context = self._async_client().chat.completions.with_streaming_response.create(  # type: ignore[call-overload]
                **sdk_arguments(parameters)
            )
            response = await context.__aenter__()
        except Exception as exc:
            raise _error_from(exc) from exc
        reader = ChunkReader(wants_usage)
        try:
            read = _body_reader(response)
            # One loop from the network read to the chunk: no generator per layer of the
            # format (bytes, lines, events, chunks), each of which cost a resumption per token.
            while not reader.done:
                part = await read()
                for chunk in reader.feed(part):
                    yield chunk
                if not part:
                    break
            if reader.error is not None:
                raise reader.error
            if not reader.finished:
                # The body ended without a finish reason: the server or a proxy cut it short.
                raise ProviderError(
                    "the stream ended without a finish reason", permanent=False, kind="dropped"
                )
        except ProviderError:
            raise
        except Exception as exc:
            raise _error_from(exc) from exc
        finally:
            await context.__aexit__(None, None, None)


def _aiohttp_content(response: Any) -> Any | None:
    """The aiohttp body under the SDK's response when the SDK streams through aiohttp and the
    body is the event stream as sent (no content-coding), else None.

    Read from there, a network read is one await, where through the SDK's `iter_bytes` it
    passed five async iterators (the SDK's, httpx's two, the transport's, aiohttp's) on its
    way. Anything else (httpx, a compressed body, another SDK version's classes) is read
    through `iter_bytes`."""
    if _AiohttpResponseStream is None:
        return None
    http_response = response.http_response
    if http_response.headers.get("content-encoding", "identity").lower() != "identity":
        return None
    stream = getattr(http_response.stream, "_stream", None)
    aiohttp_response = getattr(stream, "_aiohttp_response", None)
    if not isinstance(stream, _AiohttpResponseStream) or aiohttp_response is None:
        return None
    return aiohttp_response.content


def _body_reader(response: Any) -> Callable[[], Awaitable[bytes]]:
    """A function reading the body's next part: what one network read brought, b"" at the end."""
    if "text/event-stream" in response.headers.get("content-type", ""):
        content = _aiohttp_content(response)
        if content is not None:
            read: Callable[[], Awaitable[bytes]] = content.readany
            return read
        parts: AsyncIterator[bytes] = response.iter_bytes()
    else:
        parts = _aevent_stream_or_raise(response.iter_bytes())
    iterator = aiter(parts)

    async def next_part() -> bytes:
        async for part in iterator:
            if part:
                return part
        return b""

    return next_part


_SURROGATE = re.compile("[\ud800-\udfff]")
_HIGH_SURROGATE = re.compile("[\ud800-\udbff]\\Z")


class SurrogateJoiner:
    """Text as Unicode characters, where a server sends UTF-16 surrogates.

    JSON escapes a character outside the Basic Multilingual Plane (an emoji) as a pair of
    surrogates, and a server that streams byte-level tokens may put the two halves in two
    chunks (`"\\ud83d"`, then `"\\ude00"`): `json.loads` gives each half as a lone surrogate,
    which no UTF-8 event or column can hold. The first half waits for the second here, a pair
    becomes its character, and a half that has no partner becomes U+FFFD."""

    def __init__(self) -> None:
        self._held = ""

    def feed(self, text: str, *, last: bool = False) -> str:
        text = self._held + text
        self._held = ""
        if not last and _HIGH_SURROGATE.search(text):
            text, self._held = text[:-1], text[-1]
        if _SURROGATE.search(text):
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return text


class ChunkReader:
    """The chunks of a chat completions stream, from its bytes as network reads bring them: the
    SSE lines, the events' data and the chunk objects in one pass.

    `done` once there is nothing more to read: `[DONE]`, or the finish reason (and the usage,
    when it was asked for) has come (a server may hold the connection open after its answer),
    or an event the stream cannot go on from. `finished` once the answer had its end (a finish
    reason, or `[DONE]`): a body that ends before it was cut short. `error`: that event's
    failure, raised by the reader once the chunks before it in the same read are taken."""

    def __init__(self, wants_usage: bool) -> None:
        self._wants_usage = wants_usage
        self._splitter = SseLineSplitter()
        self._collector = SseDataCollector()
        self._text = SurrogateJoiner()
        self._reasoning = SurrogateJoiner()
        self.finished = False
        self.done = False
        self.error: ProviderError | None = None

    def feed(self, part: bytes) -> list[Chunk]:
        """The chunks that `part` completes; b"" is the body's end."""
        lines = self._splitter.feed(part) if part else self._splitter.end()
        chunks: list[Chunk] = []
        for line in lines:
            data = self._collector.line(line)
            if data is None:
                continue
            try:
                chunk = self.data(data)
            except ProviderError as error:
                self.error = error
                self.done = True
                break
            if chunk is not None:
                chunks.append(chunk)
            if self.done:
                break
        return chunks

    def data(self, data: str) -> Chunk | None:
        """The chunk of one event's `data`, if it carries anything."""
        if data.strip() == "[DONE]":
            # The end of the stream, said plainly; some servers never send a reason.
            self.done = True
            if self.finished:
                return None
            self.finished = True
            return Chunk(
                text=self._text.feed("", last=True),
                reasoning=self._reasoning.feed("", last=True),
                finish_reason="stop",
            )
        chunk = chunk_from(data)
        last = chunk.finish_reason is not None
        if chunk.text or chunk.reasoning or last:
            joined = self._text.feed(chunk.text, last=last)
            joined_reasoning = self._reasoning.feed(chunk.reasoning, last=last)
            if joined != chunk.text or joined_reasoning != chunk.reasoning:
                chunk = replace(chunk, text=joined, reasoning=joined_reasoning)
        self.finished = self.finished or last
        if self.finished and (chunk.usage is not None or not self._wants_usage):
            # Nothing more to read: stop now rather than wait for a server that holds the
            # connection open after its answer.
            self.done = True
        if chunk.text or chunk.reasoning or chunk.finish_reason or chunk.usage:
            return chunk
        return None


async def _aevent_stream_or_raise(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A 200 answer whose content type is not an event stream: read as one if it looks like
    one (a proxy may rewrite the header); if it is JSON (an error object, or a whole
    completion from a gateway that ignored stream=true), a named failure at once."""
    first = b""
    async for part in body:
        first += part
        if first.strip():
            break
    if not first.lstrip().startswith((b"{", b"[")):
        yield first
        async for part in body:
            yield part
        return
    async for part in body:
        if len(first) > NON_STREAM_BODY_MAX_BYTES:
            break
        first += part
    raise _body_error(first)


def _body_error(data: bytes) -> ProviderError:
    """The named failure of a 200 answer's body that is not an event stream."""
    try:
        payload = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        return _protocol_error("the provider answered with a body that is not an event stream")
    if isinstance(payload, dict) and payload.get("error"):
        status = payload["error"].get("code") if isinstance(payload["error"], dict) else None
        return error_for_status(status if isinstance(status, int) else 0, payload)
    return _protocol_error(
        "the provider answered with a whole completion instead of a stream (stream=true ignored)"
    )


_SSE_LINE_END = re.compile("\r\n|\r|\n")


class SseLineSplitter:
    """The lines of an event stream, fed as network reads arrive: split on CR, LF or CRLF
    only (the SSE format's line ends).

    Not `str.splitlines`, which also splits on U+2028, U+2029, U+0085 and others that vLLM and
    llama.cpp send unescaped inside a JSON `data:` line. Decoded incrementally, so a
    multi-byte character split across two network reads stays whole."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""

    def feed(self, part: bytes) -> list[str]:
        text = self._pending + self._decoder.decode(part)
        # A CR at the end of what has come: an LF may follow in the next read.
        held = "\r" if text.endswith("\r") else ""
        *lines, rest = _SSE_LINE_END.split(text.removesuffix(held))
        self._pending = rest + held
        return lines

    def end(self) -> list[str]:
        pending = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return [pending.removesuffix("\r")] if pending else []


class SseDataCollector:
    """The `data` of each complete server-sent event (its data lines joined with newlines).

    An event not ended by a blank line when the body ends is dropped, as the SSE format says:
    it is a cut connection, not a message."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def line(self, line: str) -> str | None:
        if not line:
            if self._data:
                data = "\n".join(self._data)
                self._data = []
                return data
        elif line.startswith("data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(" ") else value)
        # `event:`, `id:`, `retry:` and `:` comments (OpenRouter's keep-alives) carry nothing
        # a chat completion uses.
        return None


def _text_of(content: Any) -> str:
    """A delta's `content` (or `refusal`): a string, or a list of parts of type text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def chunk_from(data: str) -> Chunk:
    try:
        event = json.loads(data)
    except ValueError:
        raise _protocol_error("the provider sent an event that is not JSON") from None
    if not isinstance(event, dict):
        raise _protocol_error("the provider sent an event that is not an object")
    if event.get("error"):
        # An error reported inside the stream (as the SDK's own Stream raises it): named by
        # what it says, with the HTTP status it carries if any.
        error = event["error"]
        status = error.get("code") if isinstance(error, dict) else None
        # No HTTP status in it: an overloaded or failed model server (5xx), unless its code
        # says otherwise (a rate limit, a quota, the context length).
        raise error_for_status(status if isinstance(status, int) else 500, event)
    usage = None
    reported = event.get("usage")
    if isinstance(reported, dict):
        try:
            usage = {
                "prompt_tokens": int(reported.get("prompt_tokens") or 0),
                "completion_tokens": int(reported.get("completion_tokens") or 0),
                "total_tokens": int(reported.get("total_tokens") or 0),
            }
        except (TypeError, ValueError):
            raise _protocol_error("the provider sent usage that is not a count") from None
    choices = event.get("choices")
    if choices is None:
        choices = []
    if not isinstance(choices, list):
        raise _protocol_error("the provider sent `choices` that is not a list")
    text = ""
    reasoning = ""
    finish_reason = None
    for choice in choices:
        if not isinstance(choice, dict):
            raise _protocol_error("the provider sent a choice that is not an object")
        if choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        if delta is None:
            # A gateway that sent `message` in a stream event: read it the same way.
            delta = choice.get("message") or {}
        if not isinstance(delta, dict):
            raise _protocol_error("the provider sent a delta that is not an object")
        text += _text_of(delta.get("content")) + _text_of(delta.get("refusal"))
        thought = delta.get("reasoning_content")
        if thought is None:
            thought = delta.get("reasoning")
        reasoning += _text_of(thought)
        reported_reason = choice.get("finish_reason")
        if reported_reason:
            finish_reason = FINISH_REASONS.get(str(reported_reason), "stop")
    return Chunk(text=text, finish_reason=finish_reason, usage=usage, reasoning=reasoning)
