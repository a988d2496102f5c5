"""Just enough HTTP/1.1 for the baseline servers: one request per connection, JSON replies,
and SSE responses delimited by closing the connection; and their workers' job loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


async def reply_json(writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    writer.write(
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()


def start_sse(writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Connection: close\r\n\r\n"
    )


def sse_frame(seq: int, kind: str, data: str) -> bytes:
    return f"id: {seq}\nevent: {kind}\ndata: {data}\n\n".encode()


async def serve(host: str, port: int, handler: Handler) -> None:
    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            await handler(Request(method, target.split("?")[0], headers, body), writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, host, port, backlog=4096)
    print(f"listening on {host}:{port}", flush=True)
    await server.serve_forever()


def run_jobs(
    redis_url: str, queue: str, job: Callable[[aioredis.Redis, Any], Coroutine[Any, Any, None]]
) -> None:
    """Pops the jobs pushed on `queue` for ever, each run in a task of its own."""

    async def run() -> None:
        # Waits for a free connection rather than failing when every one is busy.
        pool = aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=200, timeout=None
        )
        client = aioredis.Redis(connection_pool=pool)
        tasks: set[asyncio.Task[None]] = set()
        while True:
            popped = await client.blpop([queue], timeout=0)  # type: ignore[misc]
            if popped:
                task = asyncio.create_task(job(client, json.loads(popped[1])))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    asyncio.run(run())
