"""The WebSocket text frames realtime.daphne_ext writes itself, and how it writes them.

The frames are read back with the `websockets` library's own parser, the one the black-box
tests' client uses; the writes go to a stand-in for Twisted's TCP transport that records
what reached the socket and what Twisted was asked to buffer.
"""

from __future__ import annotations

from typing import Any

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from realtime.daphne_ext import frame_header, write_now


def parse(data: bytes) -> tuple[Frame, bytes]:
    """The first frame of `data` as a client reads it, and the bytes after it."""
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(parser)
    except StopIteration as end:
        frame: Frame = end.value
    else:
        raise AssertionError("the frame is incomplete")
    return frame, bytes(reader.buffer)


# Each side of the 7-bit, 16-bit and 64-bit length encodings (RFC 6455 section 5.2).
@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_frame_is_one_unmasked_final_text_frame_with_the_payload(length: int) -> None:
    payload = ("é" * length).encode()[:length]
    frame, rest = parse(frame_header(length) + payload + b"next")
    assert frame.opcode == Opcode.TEXT
    assert frame.fin
    assert frame.data == payload
    assert rest == b"next"  # the header said exactly the payload's length


class Transport:
    """What write_now uses of twisted.internet.tcp.Server, with a socket that takes at most
    `takes` bytes per call (None: all of them) or fails."""

    def __init__(self, takes: int | None = None, *, fails: bool = False, tls: bool = False):
        self.TLS = tls
        self.connected = True
        self._writeDisconnected = False
        self.dataBuffer = b""
        self._tempDataBuffer: list[bytes] = []
        self.takes = takes
        self.fails = fails
        self.socket: list[bytes] = []

    def writeSomeData(self, data: bytes) -> Any:
        if self.fails:
            return ConnectionResetError()
        taken = data if self.takes is None else data[: self.takes]
        self.socket.append(taken)
        return len(taken)

    def write(self, data: bytes) -> None:
        self._tempDataBuffer.append(data)


def test_write_now_sends_at_once_when_nothing_is_buffered() -> None:
    transport = Transport()
    write_now(transport, b"frame")
    assert transport.socket == [b"frame"]
    assert transport._tempDataBuffer == []


def test_what_the_socket_does_not_take_goes_to_twisteds_buffer() -> None:
    transport = Transport(takes=2)
    write_now(transport, b"frame")
    assert transport.socket == [b"fr"]
    assert transport._tempDataBuffer == [b"ame"]


def test_behind_buffered_bytes_a_frame_waits_its_turn() -> None:
    transport = Transport()
    transport._tempDataBuffer.append(b"earlier")
    write_now(transport, b"frame")
    assert transport.socket == []
    assert transport._tempDataBuffer == [b"earlier", b"frame"]


def test_a_failed_send_is_left_to_twisted_and_a_tls_transport_is_not_touched() -> None:
    failing = Transport(fails=True)
    write_now(failing, b"frame")
    assert failing._tempDataBuffer == [b"frame"]  # Twisted meets the error and closes
    tls = Transport(tls=True)
    write_now(tls, b"frame")
    assert tls.socket == []
    assert tls._tempDataBuffer == [b"frame"]
