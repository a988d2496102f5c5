"""A small WebSocket client for the black-box tests of /ws/v1 (PROTOCOL §5).

It speaks the contract the way a client would, with the `websockets` library against the real
Daphne process, and reads frames with a timeout so that a missing reply fails the test instead
of hanging it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.api.support import GENERATION_FIELDS as GENERATION_FIELDS
from tests.api.support import UNKNOWN_GENERATION_ID as UNKNOWN_GENERATION_ID
from tests.harness import Service, make_token
from tests.wire import decoded_frame

Message = dict[str, Any]

# Long enough for a generation of a few hundred tokens on a loaded CI machine; a reply that
# takes longer than this is a failure, not slowness.
RECV_TIMEOUT_S = 20.0
EVENT_TYPES = frozenset({"snapshot", "delta", "reasoning", "reset", "done"})
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


def ws_url(service: Service, web: int = 0) -> str:
    return service.url(web=web).replace("http://", "ws://", 1) + "/ws/v1"


def open_ws(service: Service, **kwargs: Any) -> connect:
    """`websockets.connect` to the service, with no proxy (tests talk to 127.0.0.1)."""
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("proxy", None)
    return connect(ws_url(service), **kwargs)


@asynccontextmanager
async def session(
    service: Service, username: str = "alice", *, token: str | None = None, **kwargs: Any
) -> AsyncIterator[ClientConnection]:
    """An open, authenticated connection."""
    async with open_ws(service, **kwargs) as ws:
        await send(ws, {"type": "auth", "token": token or make_token(username)})
        reply = await recv(ws)
        assert reply["type"] == "auth.ok", reply
        yield ws


def rest(service: Service, username: str | None = "alice") -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {make_token(username)}"} if username else {}
    return httpx.AsyncClient(base_url=service.url(), headers=headers, timeout=30)


async def send(ws: ClientConnection, frame: Message) -> None:
    await ws.send(json.dumps(frame))


async def recv(ws: ClientConnection, timeout_s: float = RECV_TIMEOUT_S) -> Message:
    """The next frame, checked against its model (tests/wire.py)."""
    return decoded_frame(await asyncio.wait_for(ws.recv(), timeout_s))


async def recv_type(
    ws: ClientConnection, kind: str, timeout_s: float = RECV_TIMEOUT_S
) -> tuple[Message, list[Message]]:
    """The next frame of type `kind`, and the frames that came before it."""
    before: list[Message] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        message = await recv(ws, deadline - asyncio.get_running_loop().time())
        if message["type"] == kind:
            return message, before
        before.append(message)


async def recv_for(ws: ClientConnection, duration_s: float) -> list[Message]:
    """Everything that arrives within `duration_s` (the connection must stay open)."""
    received: list[Message] = []
    deadline = asyncio.get_running_loop().time() + duration_s
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            received.append(await recv(ws, left))
        except TimeoutError:
            break
    return received


async def close_code(ws: ClientConnection, timeout_s: float = RECV_TIMEOUT_S) -> int | None:
    """Read (and drop) frames until the server closes; the close code it sent."""
    return (await frames_until_close(ws, timeout_s))[1]


async def frames_until_close(
    ws: ClientConnection, timeout_s: float = RECV_TIMEOUT_S
) -> tuple[list[Message], int | None]:
    """Every text frame until the server closes, and the close code it sent."""
    received: list[Message] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        while True:
            received.append(await recv(ws, deadline - asyncio.get_running_loop().time()))
    except ConnectionClosed as closed:
        return received, None if closed.rcvd is None else closed.rcvd.code


async def events_in_arrival_order(
    ws: ClientConnection, *generation_ids: str, timeout_s: float = RECV_TIMEOUT_S
) -> list[Message]:
    """Events until each generation has had `done`; any other frame fails the test."""
    received: list[Message] = []
    pending = set(generation_ids)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while pending:
        message = await recv(ws, deadline - asyncio.get_running_loop().time())
        assert message["type"] in EVENT_TYPES, message
        assert message["id"] in generation_ids, message
        assert message["id"] in pending, f"event after done: {message}"
        received.append(message)
        if message["type"] == "done":
            pending.discard(message["id"])
    return received


async def events_until_done(
    ws: ClientConnection, generation_id: str, timeout_s: float = RECV_TIMEOUT_S
) -> list[Message]:
    """One generation's events until its `done`."""
    return await events_in_arrival_order(ws, generation_id, timeout_s=timeout_s)


def assert_gap_free(messages: list[Message], after: int = 0) -> None:
    """One subscription's events, as §3 promises: in seq order, no gap, no duplicate."""
    start = after
    if messages and messages[0]["type"] == "snapshot":
        assert messages[0]["seq"] >= after, messages[0]
        start = messages[0]["seq"]
        messages = messages[1:]
    assert [m["type"] for m in messages if m["type"] == "snapshot"] == [], messages
    assert [m["seq"] for m in messages] == list(range(start + 1, start + 1 + len(messages)))


async def generation(service: Service, generation_id: str, username: str = "alice") -> Message:
    async with rest(service, username) as client:
        response = await client.get(f"/api/v1/generations/{generation_id}")
    assert response.status_code == 200, response.text
    body: Message = response.json()
    return body


async def wait_terminal(
    service: Service, generation_id: str, username: str = "alice", timeout_s: float = 60
) -> Message:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        body = await generation(service, generation_id, username)
        if body["status"] in TERMINAL_STATUSES:
            return body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.1)


async def create(service: Service, username: str = "alice", **fields: Any) -> Message:
    async with rest(service, username) as client:
        response = await client.post("/api/v1/generations", json=fields)
    assert response.status_code == 202, response.text
    body: Message = response.json()
    return body
