"""A fake OpenAI-compatible chat completions server, for tests and benchmarks.

Run it with ``python -m jobs.fake_openai --port 8901`` and point the service at it with
``LLM_PROVIDER=openai OPENAI_BASE_URL=http://127.0.0.1:8901/v1 OPENAI_API_KEY=test``. It
speaks enough HTTP/1.1 (keep-alive, chunked responses) for the official SDK, and streams
``chat.completion.chunk`` events exactly as the real API does, usage included on request.

Behaviour knobs, from the command line (the defaults), ``POST /_config`` (JSON, replaces the
defaults at run time), or a directive anywhere in the prompt, which wins for that request:

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

``GET /_requests`` returns every request body received (``DELETE`` clears the log), so a test
can prove what did, and did not, reach the provider.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
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


def parse_directive(text: str, base: Behaviour) -> Behaviour:
    match = _DIRECTIVE.search(text)
    if not match:
        return base
    values: dict[str, Any] = {}
    for part in match.group(1).split():
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
    return replace(base, **values)


class FakeOpenAI:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[dict[str, Any]] = []
        self._failures: dict[str, int] = {}
        self._drops: dict[str, int] = {}
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

    async def _send_json(self, writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
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
            await self._send_json(writer, 200, self.requests)
            return True
        if path == "/_config" and method == "POST":
            self.behaviour = replace(Behaviour(), **json.loads(body or b"{}"))
            self._failures.clear()
            self._drops.clear()
            await self._send_json(writer, 200, asdict(self.behaviour))
            return True
        if not path.endswith("/chat/completions") or method != "POST":
            await self._send_json(writer, 404, {"error": {"message": "not found"}})
            return True
        request = json.loads(body)
        self.requests.append(request)
        prompt = "\n".join(str(m.get("content", "")) for m in request.get("messages", []))
        behaviour = parse_directive(prompt, self.behaviour)
        if behaviour.fail_status:
            seen = self._failures.get(prompt, 0)
            if seen < behaviour.fail_count:
                self._failures[prompt] = seen + 1
                await self._send_json(
                    writer,
                    behaviour.fail_status,
                    {
                        "error": {
                            "message": "injected failure",
                            "type": "fake",
                            "code": None,
                        }
                    },
                )
                return True
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
        return await self._stream(request, behaviour, reader, writer)

    async def _stream(
        self,
        request: dict[str, Any],
        behaviour: Behaviour,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"
        )

        def send(payload: str) -> None:
            data = f"data: {payload}\n\n".encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.get("model", "fake"),
        }
        limit = int(request.get("max_tokens") or request.get("max_completion_tokens") or 10**9)
        if behaviour.ignore_max:
            limit = 10**9
        count = min(behaviour.tokens, limit)
        finish = "length" if behaviour.tokens > limit else "stop"
        send(
            json.dumps(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ],
                }
            )
        )
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
            if behaviour.rate:
                # Pace against the start, so timer error does not accumulate.
                delay = started + index / behaviour.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            text = token_text(index)
            if behaviour.stamp:
                text = stamped(text, time.time())
            send(
                json.dumps(
                    {
                        **base,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"content": text},
                                "finish_reason": None,
                            }
                        ],
                    },
                    ensure_ascii=False,
                )
            )
            await writer.drain()
        send(
            json.dumps(
                {
                    **base,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                }
            )
        )
        if (request.get("stream_options") or {}).get("include_usage"):
            prompt_tokens = sum(
                len(str(m.get("content", "")).split()) for m in request.get("messages", [])
            )
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": count,
                "total_tokens": prompt_tokens + count,
            }
            send(json.dumps({**base, "choices": [], "usage": usage}))
        send("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8901)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--rate", type=float, default=0.0, help="tokens per second")
    parser.add_argument("--ttft", type=float, default=0.0, help="ms before the first token")
    args = parser.parse_args()
    fake = FakeOpenAI(Behaviour(tokens=args.tokens, rate=args.rate, ttft=args.ttft))

    async def serve() -> None:
        port = await fake.start(args.host, args.port)
        print(f"fake OpenAI server on http://{args.host}:{port}/v1", flush=True)
        assert fake.server is not None
        await fake.server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
