"""A TCP proxy that a test can cut and restore: "the database is briefly unreachable".

Run as ``python -m tests.faults.tcp_proxy --listen-port P --target HOST:PORT --control-port C``
(a process of its own, so that the test process's event loop and GIL do not slow the
service's traffic). The control port takes one command per line and answers ``ok``:

- ``cut``: every open connection is reset, and new ones are accepted and closed at once
  (what a client sees while a server restarts: "Lost connection", not a hang);
- ``hang``: every open connection is reset, and new ones are accepted and then left silent
  (what a client sees when packets to the server are dropped: nothing, until a timeout);
- ``restore``: connections are forwarded again (silent ones are closed);
- ``ping``: answers ``ok`` (the proxy is up);
- ``accepted``: answers ``ok N``, the number of connections it has accepted so far.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.cut = False
        self.hang = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._silent: set[asyncio.StreamWriter] = set()
        self.accepted = 0

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.hang:
            self._silent.add(writer)
            return
        if self.cut:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        if self.cut or self.hang:
            # Cut while it connected upstream: it was open then, so it is reset as those were.
            writer.transport.abort()
            upstream_writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))
        try:
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        finally:
            for end in (writer, upstream_writer):
                self._writers.discard(end)
                end.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    def cut_all(self) -> None:
        self.cut = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def apply(self, command: str) -> None:
        """`cut`, `hang` or `restore` (anything else is a no-op, as `ping` is)."""
        if command == "cut":
            self.cut_all()
        elif command == "hang":
            self.cut_all()
            self.hang = True
        elif command == "restore":
            self.cut = self.hang = False
            for silent in self._silent:
                silent.transport.abort()
            self._silent.clear()

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            command = line.decode().strip()
            if command == "accepted":
                writer.write(f"ok {self.accepted}\n".encode())
                await writer.drain()
                continue
            self.apply(command)
            writer.write(b"ok\n")
            await writer.drain()
        writer.close()


async def serve(listen_port: int, target: str, control_port: int) -> None:
    host, _, port = target.rpartition(":")
    proxy = Proxy(host, int(port))
    server = await asyncio.start_server(proxy.client, "127.0.0.1", listen_port, backlog=512)
    control = await asyncio.start_server(proxy.control, "127.0.0.1", control_port)
    async with server, control:
        await asyncio.gather(server.serve_forever(), control.serve_forever())


class ProxyControl:
    """The test's side: send a command and wait for the proxy to have applied it."""

    def __init__(self, control_port: int) -> None:
        self.control_port = control_port

    def command(self, command: str) -> str:
        """What the proxy answered after its ``ok`` (empty for most commands)."""
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=5) as sock:
            sock.sendall(command.encode() + b"\n")
            answer = sock.makefile().readline().strip()
        assert answer == "ok" or answer.startswith("ok "), answer
        return answer[3:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--control-port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.listen_port, args.target, args.control_port))


if __name__ == "__main__":
    main()
