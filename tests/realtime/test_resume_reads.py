"""What a resume costs in database work: the reads before the first byte of the snapshot.

A reconnect's time to its snapshot is mostly round trips, so the SSE view reads the token's
user and the row in one thread hop (one database session), and the WebSocket consumer's
`subscribe` uses the row its owner check read for the snapshot instead of reading it again.

In process, on this run's tier: the real database, buffer and channel layer; the reads are
counted by wrapping the real functions, which still run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.core.asgi import get_asgi_application

from core import selectors
from core.models import Generation, Status
from jobs import events
from jobs.eventlog import event_log
from realtime import consumers, sse
from realtime.consumers import StreamConsumer
from tests.harness import make_token
from tests.wire import decoded_frame

pytestmark = pytest.mark.django_db(transaction=True)

TEXT = "the whole text"


def _completed_generation(username: str) -> Generation:
    user, _ = get_user_model().objects.get_or_create(username=username)
    return Generation.objects.create(
        user=user,
        model="gpt-4o-mini",
        prompt="resume reads",
        max_tokens=16,
        status=Status.COMPLETED,
        output=TEXT,
        seq=3,
        finish_reason="stop",
    )


def _counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    calls: list[int] = []
    real: Callable[..., Any] = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


async def test_websocket_subscribe_reads_the_row_once_for_the_owner_check_and_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generation = await sync_to_async(_completed_generation)("resume-reads-ws")
    communicator = WebsocketCommunicator(StreamConsumer.as_asgi(), "/ws/v1")
    connected, _ = await communicator.connect()
    assert connected
    try:
        await communicator.send_to(
            text_data=json.dumps({"type": "auth", "token": make_token("resume-reads-ws")})
        )
        assert decoded_frame(await communicator.receive_from(timeout=30))["type"] == "auth.ok"
        row_reads = _counting(monkeypatch, selectors, "row_state")

        await communicator.send_to(text_data=json.dumps({"type": "subscribe", "id": generation.id}))
        kinds: list[dict[str, Any]] = []
        while not kinds or kinds[-1]["type"] != "done":
            kinds.append(decoded_frame(await communicator.receive_from(timeout=30)))
    finally:
        await communicator.disconnect()

    assert [message["type"] for message in kinds] == ["subscribed", "snapshot", "done"]
    assert kinds[1]["text"] == TEXT
    assert len(row_reads) == 1


async def test_websocket_auth_and_generate_spend_one_session_and_no_row_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first `auth` reads the user and the user's limits in one database session; a
    `generate` takes its snapshot from the row it created, on a write thread that keeps its
    connection. (It read the row twice before: once for the snapshot and once in the
    catch-up, which looks at the row while the new generation has no buffer yet; the
    catch-up's read remains. And each `generate` opened a connection of its own.)"""
    from django.db import connection

    from api import services
    from realtime import db, subscription

    # No row checks but each subscription's first: what is counted is then the same
    # however slowly this runs.
    monkeypatch.setattr(subscription, "ROW_CHECK_S", 600.0)
    monkeypatch.setattr(subscription, "QUIET_ROW_CHECK_S", 600.0)
    sessions = _counting(monkeypatch, consumers, "read")
    row_reads = _counting(monkeypatch, selectors, "row_state")
    reused: list[bool] = []
    create = services.generation_create

    def creating(**kwargs: Any) -> Any:
        reused.append(connection.connection is not None)
        return create(**kwargs)

    monkeypatch.setattr(services, "generation_create", creating)
    communicator = WebsocketCommunicator(StreamConsumer.as_asgi(), "/ws/v1")
    connected, _ = await communicator.connect()
    assert connected
    generates = db.WRITE_THREADS + 2
    try:
        await communicator.send_to(
            text_data=json.dumps({"type": "auth", "token": make_token("generate-reads")})
        )
        assert decoded_frame(await communicator.receive_from(timeout=30))["type"] == "auth.ok"
        assert len(sessions) == 1
        for ref in range(generates):
            frame = {"type": "generate", "ref": ref, "prompt": "no reads [fake tokens=1]"}
            await communicator.send_to(text_data=json.dumps(frame))
            created = decoded_frame(await communicator.receive_from(timeout=30))
            assert created["type"] == "created", created
            snapshot = decoded_frame(await communicator.receive_from(timeout=30))
            assert snapshot["type"] == "snapshot" and snapshot["seq"] == 0, snapshot
    finally:
        await communicator.disconnect()

    assert len(row_reads) == generates  # the catch-ups' only
    # A write thread opens a connection at most once, whichever thread each write lands on.
    assert reused.count(False) <= db.WRITE_THREADS, reused


async def test_sse_request_reads_the_user_and_the_row_in_one_database_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generation = await sync_to_async(_completed_generation)("resume-reads-sse")
    token = make_token("resume-reads-sse")
    # Each sync step of the view is one call into realtime.db (whose threads keep their
    # connections): count those.
    sessions = _counting(monkeypatch, sse, "read")
    sse_sessions_before = len(sessions)
    communicator = ApplicationCommunicator(  # type: ignore[no-untyped-call]
        get_asgi_application(),
        {
            "type": "http",
            "http_version": "1.1",
            "method": "GET",
            "path": f"/api/v1/generations/{generation.id}/events",
            "raw_path": f"/api/v1/generations/{generation.id}/events".encode(),
            "query_string": b"",
            "root_path": "",
            "scheme": "http",
            "headers": [(b"authorization", f"Bearer {token}".encode()), (b"host", b"testserver")],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        },
    )
    await communicator.send_input(  # type: ignore[no-untyped-call]
        {"type": "http.request", "body": b"", "more_body": False}
    )
    start = await communicator.receive_output(timeout=30)  # type: ignore[no-untyped-call]
    response = {"status": start["status"], "body": b""}
    while True:
        message = await communicator.receive_output(timeout=30)  # type: ignore[no-untyped-call]
        response["body"] += message.get("body", b"")
        if not message.get("more_body"):
            break
    # Let the handler finish (it closes the request's body file and its database work).
    await communicator.wait(timeout=30)  # type: ignore[no-untyped-call]

    assert response["status"] == 200
    body = response["body"].decode()
    assert "event: snapshot" in body and "event: done" in body and TEXT in body
    # The user (from the token) and the row came from one session; the view, not the
    # framework's request signals, is what is counted, so compare with the view's own steps.
    assert len(sessions) - sse_sessions_before == 1


class _CountingClock:
    """`time` for realtime.consumers, counting the idle timer's looks at the clock."""

    def __init__(self) -> None:
        self.calls = 0

    def monotonic(self) -> float:
        self.calls += 1
        return time.monotonic()

    def time(self) -> float:
        return time.time()


async def test_an_authenticated_connection_with_no_subscription_does_not_wake_every_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Thousands of idle connections per process: each waking every tick was CPU for nothing.
    communicator = WebsocketCommunicator(StreamConsumer.as_asgi(), "/ws/v1")
    connected, _ = await communicator.connect()
    assert connected
    try:
        await communicator.send_to(
            text_data=json.dumps({"type": "auth", "token": make_token("idle-ticks")})
        )
        assert decoded_frame(await communicator.receive_from(timeout=30))["type"] == "auth.ok"
        clock = _CountingClock()
        monkeypatch.setattr(consumers, "time", clock)
        # Hundreds of ticks' worth of idling (at the patched tick); the connection answers.
        await asyncio.sleep(0.3)
        await communicator.send_to(text_data=json.dumps({"type": "ping", "ref": 1}))
        assert decoded_frame(await communicator.receive_from(timeout=30))["type"] == "pong"
    finally:
        await communicator.disconnect()

    assert clock.calls <= 1


async def test_the_idle_timer_wakes_for_a_subscription_made_after_idling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A subscription made on a connection that idled has its idle timer: a live event that
    never arrives is still found in the buffer by its checks."""
    generation = await sync_to_async(_running_generation)("idle-then-subscribe")
    communicator = WebsocketCommunicator(StreamConsumer.as_asgi(), "/ws/v1")
    connected, _ = await communicator.connect()
    assert connected
    try:
        await communicator.send_to(
            text_data=json.dumps({"type": "auth", "token": make_token("idle-then-subscribe")})
        )
        assert decoded_frame(await communicator.receive_from(timeout=30))["type"] == "auth.ok"
        await communicator.send_to(text_data=json.dumps({"type": "subscribe", "id": generation.id}))
        kinds = [decoded_frame(await communicator.receive_from(timeout=30))["type"] for _ in "ab"]
        assert kinds == ["subscribed", "snapshot"]
        # Written to the buffer only, as if its live message were lost: only the idle
        # timer's look at the buffer can deliver it.
        await sync_to_async(event_log().take_fence)(generation.id, 1)
        await sync_to_async(event_log().append)(
            generation.id, 1, 1, "delta", events.dumps(events.delta(generation.id, 1, "late"))
        )
        delta = decoded_frame(await communicator.receive_from(timeout=30))
    finally:
        await communicator.disconnect()

    assert (delta["type"], delta["seq"], delta["text"]) == ("delta", 1, "late")


def _running_generation(username: str) -> Generation:
    user, _ = get_user_model().objects.get_or_create(username=username)
    return Generation.objects.create(
        user=user,
        model="gpt-4o-mini",
        prompt="idle then subscribe",
        max_tokens=16,
        status=Status.RUNNING,
    )
