"""The fault suite's cuttable TCP proxy (tests.faults.tcp_proxy), in process: a cut resets
every connection that was open, also one still connecting to its target when the cut came."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from tests.faults.tcp_proxy import Proxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
    writer.close()


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """What comes back for b"ping": the echo, or b"" once the proxy reset the connection."""
    with contextlib.suppress(OSError):
        writer.write(b"ping")
        await writer.drain()
        return await asyncio.wait_for(reader.read(1024), 5)
    return b""


async def _proxied(
    proxy: Proxy, connect: Callable[..., Any] = asyncio.open_connection
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
    """The proxy served, and a connection to it (by asyncio's own `open_connection`, also
    while a test holds the proxy's in its upstream connect)."""
    server = await asyncio.start_server(proxy.client, "127.0.0.1", 0)
    reader, writer = await connect(*server.sockets[0].getsockname()[:2])
    return reader, writer, server


async def _close(proxy: Proxy, writer: asyncio.StreamWriter, *servers: Any) -> None:
    """Everything closed, and every handler ended, before the test's loop closes."""
    writer.transport.abort()
    proxy.cut_all()
    for server in servers:
        server.close()
        await server.wait_closed()
    await asyncio.sleep(0.05)


async def test_a_cut_resets_open_connections_and_restore_forwards_again() -> None:
    upstream = await asyncio.start_server(_echo, "127.0.0.1", 0)
    proxy = Proxy("127.0.0.1", upstream.sockets[0].getsockname()[1])
    reader, writer, server = await _proxied(proxy)
    try:
        assert await _answer(reader, writer) == b"ping"
        proxy.apply("cut")
        assert await _answer(reader, writer) == b""
        proxy.apply("restore")
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        assert await _answer(reader, writer) == b"ping"
    finally:
        await _close(proxy, writer, upstream, server)


@pytest.mark.parametrize("command", ["cut", "hang"])
async def test_a_connection_still_connecting_upstream_at_a_cut_is_reset(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = await asyncio.start_server(_echo, "127.0.0.1", 0)
    proxy = Proxy("127.0.0.1", upstream.sockets[0].getsockname()[1])
    connect = asyncio.open_connection
    connecting = asyncio.Event()
    go_on = asyncio.Event()

    async def held_connect(*args: Any, **kwargs: Any) -> Any:
        connecting.set()
        await go_on.wait()
        return await connect(*args, **kwargs)

    monkeypatch.setattr(asyncio, "open_connection", held_connect)
    reader, writer, server = await _proxied(proxy)
    try:
        await asyncio.wait_for(connecting.wait(), 5)  # the proxy connects upstream now
        proxy.apply(command)
        go_on.set()
        assert await _answer(reader, writer) == b""
    finally:
        await _close(proxy, writer, upstream, server)
