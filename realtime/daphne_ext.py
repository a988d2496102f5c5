"""WebSocket behaviours that ASGI cannot express, added to Daphne's protocol class.

- Slow consumers (PROTOCOL §5, close 4008): ASGI's ``send`` has no backpressure and Daphne
  queues every frame in user space, so a client that stops reading grew the server's memory
  without bound. Past ``WS_MAX_BUFFER`` pending bytes the connection gets close 4008 and no
  further data; the client reconnects and resumes from its last seq, losing nothing.
- Shutdown (close 1001): on SIGTERM/SIGINT the sockets simply dropped (clients saw 1006); a
  shutdown trigger sends 1001 to every open WebSocket first and waits briefly for the close
  handshakes.
- Frames sent after the client went away are dropped quietly: the consumer learns of the
  disconnect a moment later, and a send in between is not an error.
- Text frames written at once: a frame is built here and handed to the socket directly
  when nothing is queued before it (docs/scaling.md, "Daphne's frames"), not through
  autobahn's sendMessage -> sendFrame -> sendData (which formats a debug message per frame
  whether or not anything logs it) and Twisted's write, which queues the bytes and asks the
  event loop twice (add and remove a writer) to send them on its next turn. HTTP responses
  (SSE events) go to the socket the same way.
- Close codes 1001, 1003, 1009 and 1013: autobahn's ``sendClose`` refuses the codes RFC 6455
  reserves for the endpoint itself (Daphne turned them into 1011, and 1001 into a dropped
  socket); they go out through ``sendCloseFrame``, which builds the same frame without that
  check.

Installed from ``project.asgi`` only when the process is Daphne (its reactor is installed).
"""

from __future__ import annotations

import io
import json
import logging
import struct
import sys
import weakref
from collections.abc import Callable
from functools import partial
from pprint import pformat
from typing import Any
from urllib.parse import unquote_plus

from django.conf import settings

from core.errors import payload_too_large
from realtime.frames import CLOSE_GOING_AWAY, CLOSE_SLOW_CONSUMER, ENDPOINT_CLOSE_CODES

logger = logging.getLogger(__name__)

# A client that is slow, not gone, still reads the data ahead of the close frame: give it
# time to, rather than autobahn's 1 s default, so it sees 4008 and not a dropped socket.
SLOW_CLOSE_HANDSHAKE_S = 30.0
SHUTDOWN_GRACE_S = 2.0

_open: weakref.WeakSet[Any] = weakref.WeakSet()
_installed = False


def pending_bytes(transport: Any) -> int:
    """Bytes written to a Twisted TCP transport that the kernel has not taken yet."""
    buffered = len(getattr(transport, "dataBuffer", b"")) - int(getattr(transport, "offset", 0))
    return max(0, buffered) + int(getattr(transport, "_tempDataLen", 0))


def frame_header(length: int) -> bytes:
    """The header of an unmasked, unfragmented text frame of `length` payload bytes (a
    server's frames are never masked: RFC 6455 section 5.1)."""
    if length <= 125:
        return bytes((0x81, length))
    if length <= 0xFFFF:
        return struct.pack("!BBH", 0x81, 126, length)
    return struct.pack("!BBQ", 0x81, 127, length)


def plain_frames(protocol: Any, length: int) -> bool:
    """Whether a text message of `length` bytes goes out as one frame with nothing done to it:
    no compression, fragmentation, frame log or timing, and nothing queued by autobahn."""
    return (
        protocol._perMessageCompress is None
        and not protocol.trackedTimings
        and not protocol.logFrames
        and not protocol.logOctets
        and not protocol.send_queue
        and not (0 < protocol.autoFragmentSize < length)
        and not (0 < protocol.maxMessagePayloadSize < length)
    )


def write_now(transport: Any, data: bytes) -> None:
    """Write `data` to a TCP transport: straight to its socket when nothing is waiting in
    Twisted's buffer (so the order of bytes stays the same), the rest (what the kernel did not
    take, or everything on a TLS or an unknown transport) through Twisted's buffer."""
    if (
        getattr(transport, "TLS", True) is False
        and transport.connected
        and not transport._writeDisconnected
        and not transport.dataBuffer
        and not transport._tempDataBuffer
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):
            if sent >= len(data):
                return
            data = data[sent:]
        # An error (the connection lost): Twisted's own write meets it again and closes.
    transport.write(data)


def _reply_target(send: Any) -> tuple[Any, Any] | None:
    """(Daphne's server, the connection's protocol) when `send` is the ASGI `send` Daphne
    gives an application, ``partial(server.handle_reply, protocol)``; None for any other (a
    test's communicator, another server)."""
    if "daphne.server" not in sys.modules:
        return None  # not Daphne (importing it would install Twisted's reactor)
    if not isinstance(send, partial) or len(send.args) != 1 or send.keywords:
        return None
    from daphne.server import Server

    server = getattr(send.func, "__self__", None)
    if (
        not isinstance(server, Server)
        or getattr(send.func, "__func__", None) is not Server.handle_reply
    ):
        return None
    return server, send.args[0]


def text_sender(send: Any) -> Callable[[str], None] | None:
    """For a WebSocket's ASGI `send` under Daphne: a function that sends a text message at
    once, as ``await send({"type": "websocket.send", "text": text})`` does, with the same
    checks on the way (Daphne's Server.handle_reply and WebSocketProtocol.handle_reply), but
    without the two coroutines and the message dict in between, which a live event paid for
    on every frame. None for any other `send` (a test's communicator, another server)."""
    target = _reply_target(send)
    if target is None:
        return None
    from daphne.ws_protocol import WebSocketProtocol

    server, protocol = target
    if not isinstance(protocol, WebSocketProtocol):
        return None
    connections = server.connections

    def send_text(text: str) -> None:
        connection = connections.get(protocol)
        if connection is None or connection.get("disconnected", None) or not text:
            return
        if protocol.state == protocol.STATE_CONNECTING:
            raise ValueError("Socket has not been accepted, so cannot send over it")
        protocol.serverSend(text, False)

    return send_text


def body_sender(send: Any) -> Callable[[bytes], None] | None:
    """For an HTTP response's ASGI `send` under Daphne, once the response has started: a
    function that writes a part of its body at once, as ``await send({"type":
    "http.response.body", "body": data, "more_body": True})`` does, with the same checks on the
    way, but without the message and the coroutines in between (an SSE stream's live events
    paid for them on every event). None for any other `send`."""
    target = _reply_target(send)
    if target is None:
        return None
    from daphne.http_protocol import WebRequest
    from twisted.web import http

    server, request = target
    if not isinstance(request, WebRequest):
        return None
    connections = server.connections
    write: Callable[[Any, bytes], None] = http.Request.write

    def send_body(data: bytes) -> None:
        connection = connections.get(request)
        if connection is None or connection.get("disconnected", None):
            return
        if request.finished or request.channel is None:
            return
        if not request._response_started:
            raise ValueError("HTTP response has not yet been started")
        write(request, data)

    return send_body


class _LazyFormat:
    """`pformat(value)`, made only if something formats it (a log record that is emitted)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return pformat(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def install_lazy_connection_log() -> None:
    """autobahn pretty-prints every new WebSocket's settings for a debug message
    (``_connectionMade``), whether or not debug messages are logged: a millisecond of a
    reconnect's time. The text is now made only when the message is."""
    import autobahn.websocket.protocol as autobahn_protocol

    autobahn_protocol.pformat = _LazyFormat  # type: ignore[assignment,attr-defined]
    # The module's one other use must give a string (Timings.__str__).
    setattr(autobahn_protocol.Timings, "__str__", _timings_text)  # noqa: B010


def _timings_text(timings: Any) -> str:
    return pformat(timings._timings)


def install_http_writes() -> None:
    """HTTP responses (an SSE stream's events above all) written as WebSocket frames are."""
    from twisted.web.http import HTTPChannel

    def write(self: Any, data: bytes) -> None:
        write_now(self.transport, data)

    def write_sequence(self: Any, iovec: Any) -> None:
        write_now(self.transport, b"".join(iovec))

    HTTPChannel.write = write  # type: ignore[method-assign]
    HTTPChannel.writeSequence = write_sequence  # type: ignore[method-assign]


def send_close(protocol: Any, code: int, reason: str | None = None) -> None:
    """Start the close handshake with `code`, including the codes sendClose refuses."""
    if code in ENDPOINT_CLOSE_CODES:
        reason_utf8 = None if reason is None else reason.encode("utf-8")[:123]
        protocol.sendCloseFrame(code=code, reasonUtf8=reason_utf8, isReply=False)
    else:
        protocol.sendClose(code=code, reason=reason)


def install() -> None:
    global _installed
    if _installed or "daphne.server" not in sys.modules:
        return
    _installed = True
    install_body_limit()
    install_access_log()
    install_http_writes()
    install_lazy_connection_log()
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.internet import defer, reactor

    original_open = WebSocketProtocol.onOpen
    original_send = WebSocketProtocol.serverSend
    original_close = WebSocketProtocol.serverClose
    # Read once: a setting of the process, looked up for every frame otherwise.
    max_buffer = settings.WS_MAX_BUFFER

    def on_open(self: Any) -> None:
        _open.add(self)
        original_open(self)

    def server_send(self: Any, content: Any, binary: bool = False) -> None:
        if self.state in (self.STATE_CLOSING, self.STATE_CLOSED):
            # Gone or closing (a slow consumer's close included): autobahn would raise
            # "Attempt to send on a closed protocol" and Daphne log it as an error.
            return
        if pending_bytes(self.transport) > max_buffer:
            logger.warning("closing slow WebSocket consumer %s", self.client_addr)
            self.closeHandshakeTimeout = SLOW_CLOSE_HANDSHAKE_S
            self.sendClose(code=CLOSE_SLOW_CONSUMER, reason="slow consumer")
            return
        if not binary and self.state == self.STATE_OPEN:
            payload = content.encode("utf-8")
            if plain_frames(self, len(payload)):
                write_now(self.transport, frame_header(len(payload)) + payload)
                return
        original_send(self, content, binary)

    def server_close(self: Any, code: int | None = None) -> None:
        if code in ENDPOINT_CLOSE_CODES:
            send_close(self, code)
        else:
            original_close(self, code)

    WebSocketProtocol.onOpen = on_open
    WebSocketProtocol.serverSend = server_send
    WebSocketProtocol.serverClose = server_close

    def close_all() -> Any:
        sockets = [p for p in list(_open) if p.state == p.STATE_OPEN]
        if not sockets:
            return None
        for protocol in sockets:
            try:
                send_close(protocol, CLOSE_GOING_AWAY, "server shutting down")
            except Exception:
                logger.debug("close on shutdown failed", exc_info=True)
        done: defer.Deferred[None] = defer.Deferred()

        def check(remaining_s: float) -> None:
            if remaining_s <= 0 or all(p.state == p.STATE_CLOSED for p in sockets):
                done.callback(None)
            else:
                reactor.callLater(0.05, check, remaining_s - 0.05)  # type: ignore[attr-defined,arg-type]

        check(SHUTDOWN_GRACE_S)
        return done

    reactor.addSystemEventTrigger("before", "shutdown", close_all)  # type: ignore[attr-defined,arg-type]


# --- Request bodies: the size limit before reading, and multipart left to the app -----------
#
# Twisted buffers a whole request body (in memory, then in a temporary file) before Daphne
# hands the request to the application, so Django's 413 came only after the server had paid
# for every byte: one 100 MB POST to any URL, without a token, cost 106 MB of memory and 208 MB
# of /tmp. A body larger than MAX_REQUEST_BYTES is refused here instead: from its
# Content-Length before any of it is read, and a chunked body as soon as it crosses the limit.
# Twisted also parsed multipart/form-data bodies itself and answered an empty bare 400 to any
# it could not parse; the application (a JSON 415 from the API) decides instead.


def _payload_too_large_response() -> bytes:
    body = json.dumps(payload_too_large().body()).encode()
    head = (
        "HTTP/1.1 413 Payload Too Large\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body


def _refuse_body(request: Any) -> None:
    """Answer 413 and drop the connection; nothing more of this request is read or run."""
    if getattr(request, "_body_refused", False):
        return
    request._body_refused = True
    request.content = io.BytesIO()
    # Twisted answers "Expect: 100-continue" right after gotLength: that would follow the 413
    # on the wire and invite the client to send the body after all.
    request.requestHeaders.removeHeader(b"Expect")
    logger.warning("refused a request body over %d bytes", settings.MAX_REQUEST_BYTES)
    channel = request.channel
    if channel is not None and channel.transport is not None:
        channel.transport.write(_payload_too_large_response())
        channel.loseConnection()


def install_body_limit() -> None:
    from daphne.http_protocol import WebRequest

    original_got_length = WebRequest.gotLength
    original_chunk = WebRequest.handleContentChunk
    original_received = WebRequest.requestReceived

    def got_length(self: Any, length: int | None) -> None:
        self._body_bytes = 0
        # Daphne passes the raw body on and never reads Twisted's parsed form arguments
        # (set per request: Request.__init__ sets it on the instance).
        self._parsePOSTFormSubmission = False
        if length is not None and length > settings.MAX_REQUEST_BYTES:
            _refuse_body(self)
            return
        original_got_length(self, length)

    def handle_content_chunk(self: Any, data: bytes) -> None:
        if getattr(self, "_body_refused", False):
            return
        self._body_bytes = getattr(self, "_body_bytes", 0) + len(data)
        if self._body_bytes > settings.MAX_REQUEST_BYTES:
            _refuse_body(self)
            return
        original_chunk(self, data)

    def request_received(self: Any, command: bytes, path: bytes, version: bytes) -> None:
        if getattr(self, "_body_refused", False):
            return
        original_received(self, command, path, version)

    WebRequest.gotLength = got_length
    WebRequest.handleContentChunk = handle_content_chunk
    WebRequest.requestReceived = request_received


# --- The access log: through the service's logging, secrets in query strings redacted -------
#
# Daphne writes its access log (on by default) as plain text to stdout with each request's
# full query string, so an SSE ticket, or a token a client wrongly put in a URL, ended up in
# log files. Entries go through the `access` logger instead (JSON when LOG_FORMAT=json), with
# the values of those parameters replaced.

ACCESS_LOGGER = logging.getLogger("access")
REDACTED = "[redacted]"
# Query parameters whose values are credentials (lower-cased names).
SECRET_QUERY_PARAMETERS = frozenset(
    {"ticket", "token", "access_token", "jwt", "auth", "authorization", "key", "api_key"}
)


def redact_path(path: str) -> str:
    """`path` with the value of every credential query parameter replaced."""
    base, separator, query = path.partition("?")
    if not separator:
        return path
    parts = []
    for part in query.split("&"):
        name, equals, _value = part.partition("=")
        if equals and unquote_plus(name).lower() in SECRET_QUERY_PARAMETERS:
            parts.append(f"{name}={REDACTED}")
        else:
            parts.append(part)
    return f"{base}?{'&'.join(parts)}"


_ACCESS_VERBS = {
    ("http", "complete"): None,
    ("websocket", "connecting"): "WSCONNECTING",
    ("websocket", "rejected"): "WSREJECT",
    ("websocket", "connected"): "WSCONNECT",
    ("websocket", "disconnected"): "WSDISCONNECT",
}


def log_access(protocol: str, action: str, details: dict[str, Any]) -> None:
    if (protocol, action) not in _ACCESS_VERBS:
        return
    verb = _ACCESS_VERBS[(protocol, action)] or str(details.get("method", "-"))
    path = redact_path(str(details.get("path", "")))
    status = details.get("status")
    size = details.get("size")
    ACCESS_LOGGER.info(
        '%s "%s %s" %s %s',
        details.get("client") or "-",
        verb,
        path,
        status if status is not None else "-",
        size if size is not None else "-",
        extra={
            "client": details.get("client"),
            "method": verb,
            "path": path,
            "status": status,
            "size": size,
        },
    )


def install_access_log() -> None:
    from daphne.server import Server

    def log_action(self: Any, protocol: str, action: str, details: dict[str, Any]) -> None:
        # Daphne's own access log is on unless started with -v0; so is this one.
        if self.action_logger:
            log_access(protocol, action, details)

    Server.log_action = log_action
