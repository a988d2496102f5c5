"""realtime.daphne_ext.text_sender: a live event's frame goes from the consumer to Daphne's
WebSocket protocol directly, through the same checks as ASGI's `send` on the way.

Run in a child process: importing daphne.server installs Twisted's reactor, which the test
process must not get. The child builds a real Daphne server and WebSocket protocol (not
listening), records what reaches the protocol's `serverSend`, and prints it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

from tests.harness import ROOT

CHILD = textwrap.dedent(
    """
    import asyncio, json
    from functools import partial
    import daphne.server
    from daphne.ws_protocol import WebSocketProtocol
    from realtime.daphne_ext import text_sender

    server = daphne.server.Server(application=None, endpoints=["tcp:port=0:interface=127.0.0.1"])
    server.connections = {}
    sent = []

    def new_protocol(state):
        protocol = WebSocketProtocol()
        protocol.state = state
        protocol.serverSend = lambda content, binary: sent.append([id(protocol), content, binary])
        server.connections[protocol] = {}
        return protocol

    async def main():
        out = {}
        protocol = new_protocol(WebSocketProtocol.STATE_OPEN)
        send = partial(server.handle_reply, protocol)
        direct = text_sender(send)
        out["direct_is_callable"] = callable(direct)
        # What ASGI's send does with a text message, and what the direct sender does.
        await send({"type": "websocket.send", "text": "é frame"})
        direct("é frame")
        out["open"] = [[content, binary] for _, content, binary in sent]
        sent.clear()
        # Empty text: neither sends anything.
        await send({"type": "websocket.send", "text": ""})
        direct("")
        out["empty"] = len(sent)
        # A connection Daphne saw go away: neither sends.
        server.connections[protocol]["disconnected"] = 1.0
        await send({"type": "websocket.send", "text": "late"})
        direct("late")
        out["disconnected"] = len(sent)
        # One Daphne no longer knows: neither sends.
        del server.connections[protocol]
        await send({"type": "websocket.send", "text": "gone"})
        direct("gone")
        out["unknown"] = len(sent)
        # Before accept: both refuse.
        connecting = new_protocol(WebSocketProtocol.STATE_CONNECTING)
        refusals = []
        for call in (
            lambda: server.handle_reply(connecting, {"type": "websocket.send", "text": "x"}),
            lambda: text_sender(partial(server.handle_reply, connecting))("x"),
        ):
            try:
                result = call()
                if asyncio.iscoroutine(result):
                    await result
                refusals.append(None)
            except ValueError as error:
                refusals.append(str(error))
        out["connecting"] = refusals
        # Any other send callable: no direct sender.
        async def other(message):
            pass
        out["other"] = [text_sender(other) is None, text_sender(partial(other)) is None]
        print(json.dumps(out))

    asyncio.run(main())
    """
)


def child() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_direct_sender_sends_what_asgi_send_sends_and_refuses_what_it_refuses() -> None:
    out = child()
    assert out["direct_is_callable"]
    assert out["open"] == [["é frame", False], ["é frame", False]]
    assert out["empty"] == 0
    assert out["disconnected"] == 0
    assert out["unknown"] == 0
    assert out["connecting"][0] is not None and out["connecting"][0] == out["connecting"][1]
    assert out["other"] == [True, True]
