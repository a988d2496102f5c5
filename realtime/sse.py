"""GET /api/v1/generations/{id}/events: the event log as Server-Sent Events (PROTOCOL §4)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from api.errors import UNAVAILABLE_ERRORS, ApiError, error_response, not_found, unavailable
from api.ids import looks_like_generation_id
from api.selectors import RowState, arow_state, row_state
from project import metrics
from realtime.auth import authenticate_token, bearer_token, user_is_active, verify_ticket
from realtime.connections import REFRESH_INTERVAL_S, stream_registry
from realtime.eventlog import StoredEvent
from realtime.live import LiveInbox, stored_event
from realtime.subscription import GenerationNotFound, Subscription

logger = logging.getLogger(__name__)

# PROTOCOL §4 asks for a comment at least every 15 s while idle; proxies commonly cut idle
# responses at 30-60 s. 10 s leaves room for a slow write.
PING_INTERVAL_S = 10.0
RETRY_MS = 1000
# Retry-After of too_many_streams: a stream ends with its generation, often within seconds.
STREAM_RETRY_AFTER_S = 5


def _user_id_and_row(header: str | None, generation_id: str) -> tuple[int, RowState | None]:
    """The token's user and the generation's row in one thread hop, on one database
    connection: a reconnect's time to its snapshot is mostly such round trips."""
    try:
        user_id = int(authenticate_token(bearer_token(header)).user.pk)
        if not looks_like_generation_id(generation_id):
            return user_id, None
        return user_id, row_state(generation_id)
    finally:
        connection.close()


def parse_position(request: HttpRequest) -> int:
    raw = request.headers.get("Last-Event-ID")
    source = "Last-Event-ID"
    if raw is None or raw.strip() == "":
        raw = request.GET.get("after")
        source = "after"
    if raw is None or raw.strip() == "":
        return 0
    raw = raw.strip()
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
            refused = error_response(ApiError("method_not_allowed", "Use GET."))
            refused["Allow"] = "GET"
            return refused
        ticket = request.GET.get("ticket")
        header = request.headers.get("Authorization")
        if header or not ticket:
            user_id, row = await sync_to_async(_user_id_and_row, thread_sensitive=False)(
                header, generation_id
            )
        else:
            if not looks_like_generation_id(generation_id):
                raise not_found()
            user_id = verify_ticket(ticket, generation_id=generation_id)
            if not await _closing_user_is_active(user_id):
                # Deactivation applies at once, not when the ticket expires.
                raise ApiError("unauthorized", "The ticket is not valid.")
            row = await arow_state(generation_id)
        after = parse_position(request)
        if not looks_like_generation_id(generation_id):
            raise not_found()
        if row is None or row.user_id != user_id:
            raise not_found()
    except ApiError as error:
        return error_response(error)
    except UNAVAILABLE_ERRORS as failure:
        logger.warning("a dependency is unreachable in %s: %r", request.path, failure)
        return error_response(unavailable())
    if row.terminal and after >= row.seq:
        # At or after `done`: tells EventSource to stop reconnecting.
        return HttpResponse(status=204)
    try:
        slot = await StreamSlot.take(user_id)
    except ApiError as error:
        return error_response(error)
    except UNAVAILABLE_ERRORS as failure:
        logger.warning("a dependency is unreachable in %s: %r", request.path, failure)
        return error_response(unavailable())
    response = StreamingHttpResponse(
        _stream(generation_id, after, row, slot), content_type="text/event-stream"
    )
    # A stream that never starts (the client left during the headers) is released here.
    response._resource_closers.append(slot.release)  # type: ignore[attr-defined]
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def _closing_user_is_active(user_id: int) -> bool:
    def check() -> bool:
        try:
            return user_is_active(user_id)
        finally:
            connection.close()

    return await sync_to_async(check, thread_sensitive=False)()


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
                # Streams end when their generation does: a client retries after a while.
                retry_after_s=STREAM_RETRY_AFTER_S,
            )
        return slot

    async def refresh(self) -> None:
        await stream_registry().refresh(self.user_id, self.stream_id)

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


async def _tolerating_outage(step: Awaitable[None], generation_id: str) -> None:
    """Run one step of a subscription; while the database or Redis is unreachable, the step
    is left for the next check (a live event waits in the subscription, a start is retried)
    and the response stays open rather than ending with a traceback."""
    try:
        await step
    except UNAVAILABLE_ERRORS as failure:
        logger.warning("events of %s deferred: %r", generation_id, failure)


async def _stream(
    generation_id: str, after: int, row: RowState, slot: StreamSlot
) -> AsyncIterator[str]:
    out: list[str] = []

    async def emit(event: StoredEvent) -> None:
        out.append(format_event(event))

    inbox = LiveInbox()
    subscription = Subscription(generation_id, after, emit)
    metrics.SSE_STREAMS_OPEN.inc()
    try:
        await inbox.open()
        # Join the live group first; everything published from here on waits in the inbox.
        await inbox.join(generation_id)
        yield f"retry: {RETRY_MS}\n\n"
        await _tolerating_outage(subscription.start(row), generation_id)
        last_write = time.monotonic()
        last_check = last_write
        last_refresh = last_write
        while True:
            if time.monotonic() - last_refresh > REFRESH_INTERVAL_S:
                last_refresh = time.monotonic()
                await _tolerating_outage(slot.refresh(), generation_id)
            if out:
                chunk = "".join(out)
                out.clear()
                yield chunk
                last_write = time.monotonic()
            if subscription.finished:
                return
            now = time.monotonic()
            wait_s = min(
                subscription.next_check_in() - (now - last_check),
                PING_INTERVAL_S - (now - last_write),
            )
            try:
                message = await asyncio.wait_for(inbox.queue.get(), timeout=max(0.0, wait_s))
            except TimeoutError:
                message = None
            if message is not None:
                await _tolerating_outage(subscription.on_live(stored_event(message)), generation_id)
                while not inbox.queue.empty() and not subscription.finished:
                    live = stored_event(inbox.queue.get_nowait())
                    await _tolerating_outage(subscription.on_live(live), generation_id)
                last_check = time.monotonic()
                continue
            now = time.monotonic()
            if now - last_check >= subscription.next_check_in():
                last_check = now
                await _tolerating_outage(subscription.catch_up(repairing=True), generation_id)
            if not out and time.monotonic() - last_write >= PING_INTERVAL_S:
                yield ": ping\n\n"
                last_write = time.monotonic()
    except GenerationNotFound:
        return
    except UNAVAILABLE_ERRORS as failure:
        # The live group could not be joined (Redis is down): end the response; the client
        # reconnects after `retry` with Last-Event-ID and loses nothing.
        logger.warning("event stream of %s ended: %r", generation_id, failure)
    finally:
        metrics.SSE_STREAMS_OPEN.dec()
        try:
            await inbox.close([generation_id])
        finally:
            # Also released by the response's close(), should this be cancelled.
            await sync_to_async(slot.release, thread_sensitive=False)()
