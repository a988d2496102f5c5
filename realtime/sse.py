"""GET /api/v1/generations/{id}/events: the event log as Server-Sent Events (PROTOCOL §4)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from api.auth import authenticate_token, bearer_token, user_is_active, verify_ticket
from core import metrics
from core.errors import UNAVAILABLE_ERRORS, ApiError, error_response, not_found, unavailable
from core.ids import looks_like_generation_id
from core.selectors import RowState, row_state
from jobs.eventlog import StoredEvent
from realtime.connections import REFRESH_INTERVAL_S, stream_registry
from realtime.db import read, read_row
from realtime.session import SubscriberSession

logger = logging.getLogger(__name__)

# PROTOCOL §4 asks for a comment at least every 15 s while idle; proxies commonly cut idle
# responses at 30-60 s. 10 s leaves room for a slow write.
PING_INTERVAL_S = 10.0
RETRY_MS = 1000
# Retry-After of too_many_streams: a stream ends with its generation, often within seconds.
STREAM_RETRY_AFTER_S = 5


def _user_id_and_row(header: str | None, generation_id: str) -> tuple[int, RowState | None]:
    """The token's user and the generation's row in one thread hop (realtime.db's, on a
    connection kept open): a reconnect's time to its snapshot is mostly such round trips."""
    user_id = int(authenticate_token(bearer_token(header)).user.pk)
    return user_id, row_state(generation_id)


def parse_position(request: HttpRequest) -> int:
    source = "Last-Event-ID"
    raw = (request.headers.get(source) or "").strip()
    if not raw:
        source = "after"
        raw = (request.GET.get(source) or "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or len(raw) > 12:
        raise ApiError(
            "invalid_request",
            f"{source} must be a non-negative integer.",
            details={source: "A non-negative integer."},
        )
    return int(raw)


def format_event(event: StoredEvent) -> str:
    return f"id: {event.seq}\nevent: {event.kind}\ndata: {event.data}\n\n"


async def generation_events(
    request: HttpRequest, generation_id: str
) -> HttpResponse | StreamingHttpResponse:
    try:
        if request.method != "GET":
            raise ApiError("method_not_allowed", "Use GET.", allow="GET")
        ticket = request.GET.get("ticket")
        header = request.headers.get("Authorization")
        if header or not ticket:
            user_id, row = await read(_user_id_and_row, header, generation_id)
        else:
            if not looks_like_generation_id(generation_id):
                raise not_found()
            user_id = verify_ticket(ticket, generation_id=generation_id)
            if not await read(user_is_active, user_id):
                # Deactivation applies at once, not when the ticket expires.
                raise ApiError("unauthorized", "The ticket is not valid.")
            row = await read_row(generation_id)
        after = parse_position(request)
        if row is None or row.user_id != user_id:
            raise not_found()
        if row.terminal and after >= row.seq:
            # At or after `done`: tells EventSource to stop reconnecting.
            return HttpResponse(status=204)
        slot = await StreamSlot.take(user_id)
    except ApiError as error:
        return error_response(error)
    except UNAVAILABLE_ERRORS as failure:
        logger.warning("a dependency is unreachable in %s: %r", request.path, failure)
        return error_response(unavailable())
    outlet = Outlet()
    response = StreamingHttpResponse(
        _stream(generation_id, after, row, slot, outlet), content_type="text/event-stream"
    )
    # The server gives the outlet its writer once it sends the response (project.handler).
    response.outlet = outlet  # type: ignore[attr-defined]
    # A stream that never starts (the client left during the headers) is released here.
    response._resource_closers.append(slot.release)  # type: ignore[attr-defined]
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


class Outlet:
    """Where a stream's events can be written at once, past the response's iterator:
    `write` is set by the server (project.handler, under Daphne) as it starts the response,
    and stays None under any other server."""

    __slots__ = ("write",)

    def __init__(self) -> None:
        self.write: Callable[[bytes], None] | None = None


class StreamSlot:
    """One of the user's MAX_SSE_STREAMS_PER_USER open event streams (PROTOCOL §8)."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.stream_id = uuid.uuid4().hex
        self.released = False

    @classmethod
    async def take(cls, user_id: int) -> StreamSlot:
        slot = cls(user_id)
        limit = settings.MAX_SSE_STREAMS_PER_USER
        if not await stream_registry().add(user_id, slot.stream_id, limit):
            metrics.REJECTIONS.labels(code="too_many_streams").inc()
            raise ApiError(
                "too_many_streams",
                f"At most {limit} event streams per user are open at once.",
                retry_after_s=STREAM_RETRY_AFTER_S,
            )
        return slot

    def release(self) -> None:
        """Idempotent: from the stream's end and from the response's close."""
        if self.released:
            return
        self.released = True
        try:
            stream_registry().remove_now(self.user_id, self.stream_id)
        except UNAVAILABLE_ERRORS as failure:
            # The entry expires by itself after CONNECTION_TTL_S.
            logger.warning("releasing an event stream slot failed: %r", failure)


async def _stream(
    generation_id: str, after: int, row: RowState, slot: StreamSlot, outlet: Outlet
) -> AsyncIterator[str]:
    out: list[str] = [f"retry: {RETRY_MS}\n\n"]
    # Set when there is something to write, or the session has ended.
    wake = asyncio.Event()
    # Whether an event may go straight to `outlet.write`: once the first chunk has been sent,
    # while nothing waits in `out` and no chunk is on its way (events keep their order).
    direct = False
    last_write = time.monotonic()

    def emit_now(event: StoredEvent) -> None:
        nonlocal last_write
        if direct and not out and outlet.write is not None:
            # A live event, written at once: the stream's loop is not woken for it.
            outlet.write(format_event(event).encode())
            last_write = time.monotonic()
            return
        out.append(format_event(event))
        wake.set()

    async def emit(event: StoredEvent) -> None:
        emit_now(event)

    session = SubscriberSession(generation_id, after, emit, wake.set, emit_now)
    loop = asyncio.get_running_loop()
    # Wakes a stream that has written nothing for PING_INTERVAL_S: one timer per quiet
    # period, re-armed once it has fired, rather than a timeout per wait (per event).
    ping: asyncio.TimerHandle | None = None
    metrics.SSE_STREAMS_OPEN.inc()
    try:
        # The snapshot goes out before the join (it needs nothing from the live source).
        await session.begin(row)
        if not session.ended:
            chunk = "".join(out)
            out.clear()
            yield chunk
            # An outage while joining ends the response; the client reconnects after `retry`
            # with Last-Event-ID and loses nothing.
            await session.open(retry_join=False)
        last_write = last_refresh = time.monotonic()
        while True:
            if out:
                chunk = "".join(out)
                out.clear()
                direct = False
                yield chunk
                last_write = time.monotonic()
            direct = True
            if session.ended:
                return
            if last_write - last_refresh > REFRESH_INTERVAL_S:
                last_refresh = last_write
                try:
                    await stream_registry().refresh(slot.user_id, slot.stream_id)
                except UNAVAILABLE_ERRORS as failure:
                    logger.warning(
                        "event stream slot of %s not refreshed: %r", generation_id, failure
                    )
            wake.clear()
            if out or session.ended:
                continue
            if ping is None or ping.when() <= loop.time():
                delay_s = max(0.0, PING_INTERVAL_S - (time.monotonic() - last_write))
                ping = loop.call_later(delay_s, wake.set)
            await wake.wait()
            if not out and not session.ended and time.monotonic() - last_write >= PING_INTERVAL_S:
                direct = False
                yield ": ping\n\n"
                last_write = time.monotonic()
                direct = True
    except UNAVAILABLE_ERRORS as failure:
        logger.warning("event stream of %s ended: %r", generation_id, failure)
    finally:
        if ping is not None:
            ping.cancel()
        metrics.SSE_STREAMS_OPEN.dec()
        session.close()
        # Also released by the response's close(), should this be cancelled.
        await sync_to_async(slot.release, thread_sensitive=False)()
