"""A live event's way from the hub to the socket, in one call where the transport allows it.

- The hub hands an event to a subscriber's session without a coroutine per watcher; a session
  whose transport can send without waiting sends it in that same call (`emit_now`), and one
  that cannot is given back as something to await, as before.
- An SSE stream writes its live events straight to the server's writer once its first chunk
  is out, never ahead of a chunk still on its way, and its loop is not woken for them.
- `realtime.daphne_ext.body_sender` writes what ASGI's `http.response.body` would, with the
  same refusals, and the handler gives it to an SSE response (a child process: importing
  daphne.server installs Twisted's reactor). autobahn's per-connection settings dump is made
  only if it is logged.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from jobs.eventlog import StoredEvent
from jobs.writer import group_name
from realtime import sse
from realtime.live import LiveHub, _Group
from realtime.session import SubscriberSession
from tests.harness import ROOT


def event(seq: int, kind: str = "delta") -> StoredEvent:
    return StoredEvent(seq, kind, json.dumps({"type": kind, "seq": seq}))


def ready_session(emit_now: Callable[[StoredEvent], None] | None) -> tuple[Any, list[int]]:
    """A session past its first reads at seq 3, as the hub finds it while a stream runs."""
    emitted: list[int] = []

    async def emit(stored: StoredEvent) -> None:
        emitted.append(stored.seq)

    session = SubscriberSession("g", 3, emit, lambda: None, emit_now)
    session.subscription.started = True
    session._ready = True
    return session, emitted


async def test_a_session_with_emit_now_sends_the_next_event_within_the_hubs_call() -> None:
    sent: list[int] = []
    session, emitted = ready_session(lambda stored: sent.append(stored.seq))

    assert session._on_live(event(4)) is None
    assert session._on_live(event(5)) is None
    assert sent == [4, 5] and emitted == []
    assert session.subscription.last_seq == 5
    # Not the next seq (a gap): waits in the backlog for the merge, as before.
    assert session._on_live(event(7)) is None
    assert sent == [4, 5]
    session.close()


async def test_a_session_without_emit_now_gives_the_send_back_to_await() -> None:
    session, emitted = ready_session(None)

    pending = session._on_live(event(4))
    assert pending is not None and emitted == []
    await pending
    assert emitted == [4]
    session.close()


async def test_the_hub_awaits_only_what_a_watcher_gives_back_and_keeps_the_order() -> None:
    hub = LiveHub(layer=None)
    order: list[str] = []

    def at_once(payload: Any) -> None:
        order.append(f"now {payload.seq}")

    async def later(payload: Any) -> None:
        await asyncio.sleep(0)
        order.append(f"later {payload.seq}")

    entry = hub._groups[group_name("g")] = _Group()
    entry.watchers[0] = at_once
    message = {"type": "gen.event", "id": "g", "seq": 1, "kind": "delta", "data": "{}"}
    assert hub.dispatch(message) is None
    entry.watchers[1] = later
    entry.watchers[2] = at_once
    pending = hub.dispatch({**message, "seq": 2})
    assert pending is not None
    assert order == ["now 1", "now 2"]
    await pending
    assert order == ["now 1", "now 2", "later 2", "now 2"]


class _Slot:
    user_id = 1
    stream_id = "s"

    def release(self) -> None:
        pass


class _FakeSession:
    """What `_stream` uses of a SubscriberSession, driven by the test."""

    made: list[_FakeSession] = []

    def __init__(
        self,
        generation_id: str,
        after: int,
        emit: Any,
        on_end: Callable[[], None],
        emit_now: Callable[[StoredEvent], None],
    ) -> None:
        self.emit_now = emit_now
        self.on_end = on_end
        self.ended = False
        _FakeSession.made.append(self)

    async def begin(self, row: Any) -> None:
        self.emit_now(event(1, "snapshot"))

    async def open(self, *, retry_join: bool) -> None:
        pass

    def end(self) -> None:
        self.ended = True
        self.on_end()

    def close(self) -> None:
        self.ended = True


async def test_an_sse_stream_writes_live_events_at_once_and_never_ahead_of_a_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sse, "SubscriberSession", _FakeSession)
    written: list[bytes] = []
    outlet = sse.Outlet()
    outlet.write = written.append
    stream = sse._stream("g", 0, None, _Slot(), outlet)  # type: ignore[arg-type]

    first = await stream.__anext__()
    assert first == f"retry: {sse.RETRY_MS}\n\n" + sse.format_event(event(1, "snapshot"))
    (session,) = _FakeSession.made[-1:]
    # The first chunk may not have reached the socket yet: what comes now waits behind it.
    session.emit_now(event(2))
    assert written == []
    assert await stream.__anext__() == sse.format_event(event(2))
    # Still a chunk on its way: the same.
    session.emit_now(event(3))
    assert written == []
    waiting = asyncio.ensure_future(stream.__anext__())
    assert await asyncio.wait_for(asyncio.shield(waiting), 1) == sse.format_event(event(3))

    # Nothing on its way: live events go straight to the writer, and the stream sleeps on.
    waiting = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.01)
    session.emit_now(event(4))
    session.emit_now(event(5, "done"))
    assert written == [
        sse.format_event(event(4)).encode(),
        sse.format_event(event(5, "done")).encode(),
    ]
    assert not waiting.done()
    session.end()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 1)


async def test_an_sse_stream_without_a_writer_yields_every_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sse, "SubscriberSession", _FakeSession)
    stream = sse._stream("g", 0, None, _Slot(), sse.Outlet())  # type: ignore[arg-type]
    await stream.__anext__()
    (session,) = _FakeSession.made[-1:]
    waiting = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.01)
    session.emit_now(event(2))
    assert await asyncio.wait_for(waiting, 1) == sse.format_event(event(2))
    session.end()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(stream.__anext__(), 1)


CHILD = textwrap.dedent(
    """
    import asyncio, json
    from functools import partial
    import daphne.server
    from daphne.http_protocol import WebRequest
    from twisted.internet.testing import StringTransport
    from twisted.web.http import HTTPChannel
    from realtime.daphne_ext import body_sender

    server = daphne.server.Server(application=None, endpoints=["tcp:port=0:interface=127.0.0.1"])
    server.connections = {}

    class Factory:
        def log(self, request):
            pass

    def new_request():
        channel = HTTPChannel()
        channel.factory = Factory()
        channel.factory.server = server
        transport = StringTransport()
        channel.makeConnection(transport)
        request = WebRequest(channel, queued=False)
        request.clientproto = b"HTTP/1.1"
        request.method = b"GET"
        request.uri = request.path = b"/events"
        request.client_addr = None
        request.request_start = 0.0
        channel.requests.append(request)
        return request, transport

    async def main():
        out = {}
        replies = []
        for way in ("asgi", "direct"):
            request, transport = new_request()
            send = partial(server.handle_reply, request)
            direct = body_sender(send)
            if way == "asgi":
                out["direct_is_callable"] = callable(direct)
            try:
                if way == "asgi":
                    await send({"type": "http.response.body", "body": b"x", "more_body": True})
                else:
                    direct(b"x")
                out["before_start_" + way] = None
            except ValueError as error:
                out["before_start_" + way] = type(error).__name__
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            parts = (b"id: 1\\ndata: {\\"t\\": \\"\\xc3\\xa9\\"}\\n\\n", b"", b"id: 2\\n\\n")
            for part in parts:
                if way == "asgi":
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                else:
                    direct(part)
            replies.append(transport.value().decode("latin-1"))
            # Gone: Daphne saw the disconnect; neither writes.
            server.connections[request]["disconnected"] = 1.0
            before = transport.value()
            await send({"type": "http.response.body", "body": b"late", "more_body": True})
            direct(b"late")
            out["after_disconnect_" + way] = transport.value() == before
        out["same_bytes"] = replies[0] == replies[1]
        out["reply"] = replies[1]
        async def other(message):
            pass
        out["other"] = [body_sender(other) is None, body_sender(partial(other)) is None]

        # The handler gives an SSE response's outlet its writer as it starts the response.
        import os
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
        import django
        django.setup()
        from django.http import StreamingHttpResponse
        from project.handler import Handler
        from realtime.sse import Outlet

        outlet = Outlet()
        seen = []

        async def body():
            yield "a"
            seen.append(outlet.write is not None)
            outlet.write(b"b")
            yield "c"

        async def receive():
            await asyncio.Event().wait()  # the client stays

        response = StreamingHttpResponse(body(), content_type="text/event-stream")
        response.outlet = outlet
        request, transport = new_request()
        await Handler()._stream(response, receive, partial(server.handle_reply, request))
        out["handler_gave_writer"] = seen
        out["handler_reply"] = transport.value().decode("latin-1")

        # autobahn's settings dump for each new WebSocket: made only if logged.
        import pprint
        import autobahn.websocket.protocol as autobahn_protocol
        from realtime.daphne_ext import install_lazy_connection_log
        install_lazy_connection_log()
        lazy = autobahn_protocol.pformat([("openHandshakeTimeout", 5, "x")])
        out["lazy"] = [
            not isinstance(lazy, str),
            str(lazy) == pprint.pformat([("openHandshakeTimeout", 5, "x")]),
            f"{lazy}" == str(lazy),
            isinstance(str(autobahn_protocol.Timings()), str),
        ]
        print(json.dumps(out))

    asyncio.run(main())
    """
)


def test_body_sender_writes_what_asgi_send_writes_and_refuses_what_it_refuses() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["direct_is_callable"]
    assert out["before_start_asgi"] == out["before_start_direct"] is not None
    assert out["same_bytes"]
    assert "Transfer-Encoding: chunked" in out["reply"]
    assert out["reply"].endswith("\r\n7\r\nid: 2\n\n\r\n")
    assert out["after_disconnect_asgi"] and out["after_disconnect_direct"]
    assert out["other"] == [True, True]
    assert out["handler_gave_writer"] == [True]
    assert out["lazy"] == [True, True, True, True]
    assert out["handler_reply"].endswith("\r\n1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n")
