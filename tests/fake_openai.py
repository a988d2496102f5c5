"""A fake OpenAI-compatible chat completions server, for tests and benchmarks.

Run it with ``python -m tests.fake_openai --port 8901`` and point the service at it with
``LLM_PROVIDER=openai OPENAI_BASE_URL=http://127.0.0.1:8901/v1 OPENAI_API_KEY=test``. It
speaks enough HTTP/1.1 (keep-alive, chunked responses) for the official SDK, and streams
``chat.completion.chunk`` events exactly as the real API does, usage included on request.

Behaviour knobs, from the command line (the defaults), ``POST /_config`` (JSON, replaces the
defaults at run time), or a directive anywhere in the messages, which wins for that request
(the last one, when a conversation's history carries earlier turns' directives):

    [fake tokens=300 rate=50 ttft=200 fail=503x2 drop=120 hang=10]

- ``tokens``: completion tokens to stream (cut at the request's max_tokens: finish "length");
- ``rate``: tokens per second (0 = as fast as possible); ``ttft``: ms before the first token;
- ``fail=STATUSxN``: the first N requests with this prompt get HTTP STATUS with an error body;
- ``drop=K``: close the connection abruptly after K tokens (no end of stream), on every
  request; ``drop=KxN``: only on the first N requests with this prompt, so that a retry of
  the same prompt (the worker's next attempt) streams to the end;
- ``hang=K``: stop sending after K tokens, and keep the connection open until the client
  closes it;
- ``stamp=1``: each token carries the wall-clock time it was sent, ``@<unix seconds>`` after
  its word (``STAMP`` finds them), so that a benchmark client measures send-to-receipt latency
  from the text alone, with no change to the service's wire format;
- ``ignore_max=1``: stream all ``tokens`` whatever the request's max_tokens (a provider that
  does not honour it), so that a test shows the service stops reading at its own cap.

The provider zoo: each real server's dialect and failure, so that tests run them end to end
through the real SDK (README "Providers" says what each real server sends):

- ``server=NAME``: the stream's dialect. ``openai`` (the default: a role chunk, content chunks,
  a finish chunk, then a ``choices: []`` usage chunk when ``stream_options.include_usage``),
  ``vllm`` (``stop_reason`` and ``logprobs`` fields, ``reasoning_content``), ``llamacpp``
  (usage and ``timings`` in the finish chunk, never a separate usage chunk), ``ollama``
  (``system_fingerprint``), ``lmstudio`` (refuses ``stream_options`` with a 400), ``azure``
  (a first ``choices: []`` chunk of ``prompt_filter_results``, ``content_filter_results`` in
  every choice), ``openrouter`` (``: OPENROUTER PROCESSING`` comments while it waits, usage in
  the finish chunk, ``delta.reasoning``);
- ``reasoning=K``: the first K tokens are the model's reasoning (``reasoning_content``, or
  ``reasoning`` for openrouter, or ``reasoning_field=NAME``), the answer follows;
- ``finish=REASON``: the finish reason sent (``content_filter``, ``tool_calls``, ...);
  ``finish=none``: no finish reason at all, only ``data: [DONE]``;
- ``content=list``: content as ``[{"type": "text", "text": ...}]``; ``refusal=1``: the text is
  sent as ``delta.refusal``;
- ``fail=STATUSxN code=CODE retry_after=S``: the error body's ``code`` (``insufficient_quota``,
  ``context_length_exceeded``, ``model_not_found``, ``unsupported_parameter``, ...) and a
  ``Retry-After`` header; ``message=vllm_context`` words a 400 as vLLM does (no code);
- ``reject=PARAM``: a 400 ``unsupported_parameter`` for any request carrying PARAM (as
  OpenAI's o-series do for ``max_tokens``, or a server that refuses ``stream_options``);
- ``error_at=KxN``: an ``error`` event (status 200) after K tokens, on the first N requests;
- ``after_finish=hang``: after the finish reason (and usage), keep the connection open and
  send nothing (no ``[DONE]``);
- ``first_byte=MS``: wait before even the response headers (a local server loading a model);
- ``nonstream=1``: answer a whole ``chat.completion`` JSON although ``stream`` was true (a
  gateway that ignored it); ``error200=1``: a JSON ``error`` body with status 200;
- ``odd=1``: the text carries U+2028, U+2029 and U+0085 (``odd_text`` predicts it), sent raw;
- ``eol=crlf|cr``: the stream's line ends; ``split=1``: every event sent in two network writes
  cut inside a multi-byte character; ``gzip=1``: the stream gzip-compressed
  (``Content-Encoding: gzip``, flushed at every event), as a compressing proxy sends it;
- ``usage=none``: never a usage figure, even when asked for;
- ``shape=null_choice``: a ``choices: [null]`` chunk after the first token;
  ``shape=empty_choices``: a ``choices: []`` chunk (no usage) between every two tokens.

``GET /_requests`` returns every request body received (``DELETE`` clears the log), so a test
can prove what did, and did not, reach the provider.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import zlib
from dataclasses import asdict, dataclass, replace
from typing import Any

# Words with multi-byte characters, so a lost or split byte shows in any comparison.
_WORDS = [
    "alpha", "beta", "γάμμα", "delta", "épsilon", "zeta", "eta", "θήτα", "iota", "kappa",
    "λάμδα", "mu", "nü", "ξι", "omicron", "пи", "rho", "σίγμα", "tau", "🙂",
]  # fmt: skip
_DIRECTIVE = re.compile(r"\[fake ([^\]]*)\]")
# A stamped token's send time: `@` is in no word, so nothing else matches.
STAMP = re.compile(r"@(\d+\.\d{6})")


def stamped(text: str, sent_at: float) -> str:
    """`text` with its send time after the word (before a trailing newline)."""
    body = text.rstrip("\n")
    return f"{body}@{sent_at:.6f}" + text[len(body) :]


def token_text(index: int) -> str:
    """The fake model's token number `index` (0-based): deterministic, so tests can predict."""
    word = _WORDS[index % len(_WORDS)]
    return (
        (" " if index else "")
        + (f"{word}{index}" if index % 7 == 3 else word)
        + ("\n" if index % 25 == 24 else "")
    )


def expected_text(tokens: int) -> str:
    return "".join(token_text(i) for i in range(tokens))


# Characters that str.splitlines breaks lines on although they are not SSE line ends.
_ODD = ["\u2028", "\u2029", "\u0085"]


def odd_token_text(index: int) -> str:
    """Token `index` of an `odd=1` answer: every third token ends in a line-breaking
    character that is not a line end in SSE (vLLM and llama.cpp send them raw)."""
    return token_text(index) + (_ODD[(index // 3) % 3] if index % 3 == 1 else "")


def odd_text(tokens: int) -> str:
    return "".join(odd_token_text(i) for i in range(tokens))


def reasoning_text(tokens: int) -> str:
    """The reasoning of a `reasoning=K` answer: its first K tokens."""
    return "".join(token_text(i) for i in range(tokens))


def answer_after_reasoning(tokens: int, reasoning: int) -> str:
    """The answer (output) of a `reasoning=K tokens=N` request: tokens K..N-1."""
    return "".join(token_text(i) for i in range(reasoning, tokens))


@dataclass(frozen=True)
class Behaviour:
    tokens: int = 50
    rate: float = 0.0
    ttft: float = 0.0
    fail_status: int = 0
    fail_count: int = 0
    drop: int = -1
    drop_count: int = 0  # 0: every request drops
    hang: int = -1
    stamp: bool = False
    ignore_max: bool = False
    # The provider zoo (module docstring).
    server: str = "openai"
    reasoning: int = 0
    reasoning_field: str = ""
    finish: str = ""
    content_list: bool = False
    refusal: bool = False
    code: str = ""
    message: str = ""
    retry_after: str = ""
    reject: str = ""
    error_at: int = -1
    error_count: int = 0  # 0: every request
    after_finish: str = ""
    first_byte: float = 0.0
    nonstream: bool = False
    error200: bool = False
    odd: bool = False
    eol: str = "lf"
    split: bool = False
    gzip: bool = False
    shape: str = ""
    no_usage: bool = False


_TEXT_KNOBS = (
    "server",
    "reasoning_field",
    "finish",
    "code",
    "message",
    "retry_after",
    "reject",
    "after_finish",
    "eol",
    "shape",
)


def parse_directive(text: str, base: Behaviour) -> Behaviour:
    matches = _DIRECTIVE.findall(text)
    if not matches:
        return base
    values: dict[str, Any] = {}
    for part in matches[-1].split():
        key, _, value = part.partition("=")
        if key == "tokens":
            values["tokens"] = int(value)
        elif key == "rate":
            values["rate"] = float(value)
        elif key == "ttft":
            values["ttft"] = float(value)
        elif key == "fail":
            status, _, count = value.partition("x")
            values["fail_status"] = int(status)
            values["fail_count"] = int(count or "1")
        elif key == "drop":
            after, _, count = value.partition("x")
            values["drop"] = int(after)
            values["drop_count"] = int(count or "0")
        elif key == "hang":
            values["hang"] = int(value)
        elif key == "stamp":
            values["stamp"] = value not in ("", "0")
        elif key == "ignore_max":
            values["ignore_max"] = value not in ("", "0")
        elif key in _TEXT_KNOBS:
            values[key] = value
        elif key == "reasoning":
            values["reasoning"] = int(value)
        elif key == "content":
            values["content_list"] = value == "list"
        elif key in ("refusal", "nonstream", "error200", "odd", "split", "gzip"):
            values[key] = value not in ("", "0")
        elif key == "error_at":
            after, _, count = value.partition("x")
            values["error_at"] = int(after)
            values["error_count"] = int(count or "0")
        elif key == "usage":
            values["no_usage"] = value == "none"
        elif key == "first_byte":
            values["first_byte"] = float(value)
    return replace(base, **values)


_ERROR_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    """An error body as the server imitated words it."""
    if message == "vllm_context":
        # vLLM (and LiteLLM in front of it) say it in words, with no code.
        return {
            "object": "error",
            "message": "This model's maximum context length is 4096 tokens. However, you "
            "requested 9000 tokens. Please reduce the length of the messages.",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    kind = "insufficient_quota" if code == "insufficient_quota" else None
    return {
        "error": {
            "message": message or f"injected failure{f' ({code})' if code else ''}",
            "type": kind or _ERROR_STATUS_TYPES.get(status, "server_error"),
            "param": None,
            "code": code or None,
        }
    }


class FakeOpenAI:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[dict[str, Any]] = []
        self._failures: dict[str, int] = {}
        self._drops: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        # Streams being sent right now (a held-open one counts until its client goes away).
        self.streaming = 0
        # Open connections and their handlers, so that `stop` can end them.
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._connection, host, port, backlog=1024)
        sock = self.server.sockets[0]
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and end every connection, kept-alive ones included, so that an
        embedding loop can close with no handler pending."""
        if self.server is None:
            return
        self.server.close()
        handlers = list(self._connections.values())
        for writer in list(self._connections):
            # The handler then sees the end of its stream (or a failed write) and returns.
            writer.transport.abort()
        await asyncio.gather(*handlers, return_exceptions=True)
        await self.server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[writer] = task
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                keep_open = await self._handle(method, target.split("?")[0], body, reader, writer)
                if not keep_open:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self._connections.pop(writer, None)
            writer.close()

    async def _send_json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: Any,
        headers: dict[str, str] | None = None,
    ) -> None:
        body = json.dumps(payload).encode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    async def _handle(
        self,
        method: str,
        path: str,
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        if path == "/_requests":
            if method == "DELETE":
                self.requests.clear()
                self._failures.clear()
                self._drops.clear()
                self._errors.clear()
            await self._send_json(writer, 200, self.requests)
            return True
        if path == "/_config" and method == "POST":
            self.behaviour = replace(Behaviour(), **json.loads(body or b"{}"))
            self._failures.clear()
            self._drops.clear()
            self._errors.clear()
            await self._send_json(writer, 200, asdict(self.behaviour))
            return True
        if not path.endswith("/chat/completions") or method != "POST":
            await self._send_json(writer, 404, {"error": {"message": "not found"}})
            return True
        request = json.loads(body)
        self.requests.append(request)
        prompt = "\n".join(str(m.get("content", "")) for m in request.get("messages", []))
        behaviour = parse_directive(prompt, self.behaviour)
        if behaviour.first_byte:
            await asyncio.sleep(behaviour.first_byte / 1000)
        if behaviour.fail_status:
            seen = self._failures.get(prompt, 0)
            if seen < behaviour.fail_count:
                self._failures[prompt] = seen + 1
                await self._send_json(
                    writer,
                    behaviour.fail_status,
                    error_body(behaviour.fail_status, behaviour.code, behaviour.message),
                    {"Retry-After": behaviour.retry_after} if behaviour.retry_after else None,
                )
                return True
        rejected = behaviour.reject or ("stream_options" if behaviour.server == "lmstudio" else "")
        if rejected and rejected in request:
            await self._send_json(
                writer,
                400,
                {
                    "error": {
                        "message": f"Unsupported parameter: '{rejected}' is not supported "
                        "with this model.",
                        "type": "invalid_request_error",
                        "param": rejected,
                        "code": "unsupported_parameter",
                    }
                },
            )
            return True
        if behaviour.error200:
            await self._send_json(
                writer,
                200,
                {"error": {"message": "upstream provider error", "code": 502}},
            )
            return True
        if behaviour.nonstream and request.get("stream"):
            text = expected_text(behaviour.tokens)
            await self._send_json(
                writer,
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                },
            )
            return True
        if behaviour.error_at >= 0 and behaviour.error_count:
            errored = self._errors.get(prompt, 0)
            if errored < behaviour.error_count:
                self._errors[prompt] = errored + 1
            else:
                behaviour = replace(behaviour, error_at=-1)
        if behaviour.drop >= 0 and behaviour.drop_count:
            dropped = self._drops.get(prompt, 0)
            if dropped < behaviour.drop_count:
                self._drops[prompt] = dropped + 1
            else:
                behaviour = replace(behaviour, drop=-1)
        if not request.get("stream"):
            text = expected_text(min(behaviour.tokens, int(request.get("max_tokens") or 10**9)))
            await self._send_json(writer, 200, {"choices": [{"message": {"content": text}}]})
            return True
        self.streaming += 1
        try:
            return await self._stream(request, behaviour, reader, writer)
        finally:
            self.streaming -= 1

    def answer(self, request: dict[str, Any], behaviour: Behaviour) -> list[str] | None:
        """The streamed text's pieces, one per token, when a server of its own answers this
        request with text of its own (tests.browser.fake_llm's canned answers); None: the
        numbered words of ``token_text``, ``behaviour.tokens`` of them."""
        return None

    async def _stream(
        self,
        request: dict[str, Any],
        behaviour: Behaviour,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            + (b"Content-Encoding: gzip\r\n" if behaviour.gzip else b"")
            + b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"
        )
        eol = {"crlf": "\r\n", "cr": "\r"}.get(behaviour.eol, "\n")
        server = behaviour.server
        compressor = zlib.compressobj(wbits=31) if behaviour.gzip else None

        def write_frame(data: bytes) -> None:
            """One HTTP chunk of the body, as it goes on the wire."""
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        def write_chunk(data: bytes) -> None:
            if compressor is not None:
                data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
            write_frame(data)

        def end_body() -> None:
            if compressor is not None:
                write_frame(compressor.flush())  # the gzip trailer
            writer.write(b"0\r\n\r\n")

        async def send_raw(text: str) -> None:
            data = text.encode()
            if behaviour.split:
                # Cut inside a multi-byte character when there is one: the reader gets the
                # two halves in separate reads.
                cut = next((i for i, byte in enumerate(data) if byte >= 0xC0), len(data) // 2) + 1
                write_chunk(data[:cut])
                await writer.drain()
                await asyncio.sleep(0.002)
                write_chunk(data[cut:])
            else:
                write_chunk(data)

        async def send(payload: dict[str, Any] | str) -> None:
            text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
            await send_raw(f"data: {text}{eol}{eol}")

        base: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.get("model", "fake"),
        }
        if server == "ollama":
            base["system_fingerprint"] = "fp_ollama"

        def choice(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            entry: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            if server == "vllm":
                entry.update({"logprobs": None, "stop_reason": None})
            if server == "azure":
                entry["content_filter_results"] = {
                    "hate": {"filtered": False, "severity": "safe"},
                    "violence": {"filtered": finish == "content_filter", "severity": "safe"},
                }
            return entry

        limit = int(request.get("max_tokens") or request.get("max_completion_tokens") or 10**9)
        if behaviour.ignore_max:
            limit = 10**9
        pieces = self.answer(request, behaviour)
        available = behaviour.tokens if pieces is None else len(pieces)
        count = min(available, limit)
        finish = "length" if available > limit else "stop"
        if behaviour.finish:
            finish = behaviour.finish
        reasoning_field = behaviour.reasoning_field or (
            "reasoning" if server == "openrouter" else "reasoning_content"
        )
        if server == "azure":
            await send(
                {
                    **base,
                    "id": "",
                    "model": "",
                    "choices": [],
                    "prompt_filter_results": [
                        {"prompt_index": 0, "content_filter_results": {"hate": {"filtered": False}}}
                    ],
                }
            )
        await send({**base, "choices": [choice({"role": "assistant", "content": ""}, None)]})
        await writer.drain()
        if server == "openrouter":
            # OpenRouter's keep-alive comments while the upstream model starts.
            await send_raw(f": OPENROUTER PROCESSING{eol}{eol}")
            await writer.drain()
        if behaviour.ttft:
            await asyncio.sleep(behaviour.ttft / 1000)
        started = time.monotonic()
        for index in range(count):
            if index == behaviour.drop:
                writer.transport.abort()
                return False
            if index == behaviour.hang:
                # Silent until the client gives up and closes the connection.
                await reader.read()
                return False
            if index == behaviour.error_at:
                await send(
                    {"error": {"message": "The server is overloaded", "type": "server_error"}}
                )
                end_body()
                await writer.drain()
                return True
            if behaviour.rate:
                # Pace against the start, so timer error does not accumulate.
                delay = started + index / behaviour.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if pieces is not None:
                text = pieces[index]
            else:
                text = odd_token_text(index) if behaviour.odd else token_text(index)
            if behaviour.stamp:
                text = stamped(text, time.time())
            delta: dict[str, Any]
            if index < behaviour.reasoning:
                delta = {reasoning_field: text, "content": None if server == "vllm" else ""}
            elif behaviour.refusal:
                delta = {"refusal": text}
            elif behaviour.content_list:
                delta = {"content": [{"type": "text", "text": text}]}
            else:
                delta = {"content": text}
            await send({**base, "choices": [choice(delta, None)]})
            if index == 0 and behaviour.shape == "null_choice":
                await send({**base, "choices": [None]})
            if behaviour.shape == "empty_choices":
                await send({**base, "choices": []})
            await writer.drain()
        prompt_tokens = sum(
            len(str(m.get("content", "")).split()) for m in request.get("messages", [])
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": count,
            "total_tokens": prompt_tokens + count,
        }
        wants_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        if behaviour.no_usage:
            wants_usage = False
        end: dict[str, Any] = {**base, "choices": [choice({}, finish)]}
        if behaviour.finish == "none":
            end = {}
        if server == "llamacpp" and end:
            # llama.cpp: usage (always) and timings in the finish chunk, no usage chunk.
            end.update(usage=usage, timings={"predicted_n": count, "predicted_ms": 1.0})
        elif server == "openrouter" and end and wants_usage:
            end["usage"] = usage
        if end:
            await send(end)
        if wants_usage and server not in ("llamacpp", "openrouter"):
            await send({**base, "choices": [], "usage": usage})
        if behaviour.after_finish == "hang":
            # A server (or proxy) that keeps the connection open after the answer.
            await writer.drain()
            await reader.read()
            return False
        await send("[DONE]")
        end_body()
        await writer.drain()
        return True


def main(server: type[FakeOpenAI] = FakeOpenAI, description: str = __doc__ or "") -> None:
    """Serve `server` (this module's, or a subclass with answers of its own) until killed."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8901)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--rate", type=float, default=0.0, help="tokens per second")
    parser.add_argument("--ttft", type=float, default=0.0, help="ms before the first token")
    args = parser.parse_args()
    fake = server(Behaviour(tokens=args.tokens, rate=args.rate, ttft=args.ttft))

    async def serve() -> None:
        port = await fake.start(args.host, args.port)
        print(f"fake OpenAI server on http://{args.host}:{port}/v1", flush=True)
        assert fake.server is not None
        await fake.server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
