"""Django's HTTP handling for Daphne: each request crosses to a thread once.

Django's own ASGI handler runs each sync middleware, and then a sync view, through
``sync_to_async``: a thread hop per step, on a new thread per request, which opens a new
database connection. Every REST call is a sync view behind seven middleware, so that was most
of a request's cost (docs/scaling.md, "One thread hop per request"). This handler runs the
sync chain, middleware and view, in one call on a thread of one of two pools. The
KEPT_CONNECTIONS threads of the first keep their database connections between requests:
pinged before a request's first statement (Django's health check), and replaced once
KEPT_CONNECTION_S old. A request goes to them whenever one is free; only while all are busy
(a burst, views that wait: a REST cancel waits up to 2 s for the worker) does it go to the
second pool, whose threads close their connections after each request as Django does. One
pool whose first threads kept their connections served requests on any of its threads once
a burst had started them all: after one, more than half of all requests opened a connection.

An async view (the SSE stream) runs on the server's event loop as Django runs it under a sync
chain (``async_to_sync``, which, from this pool's threads, schedules it on that loop while the
thread waits); the stream it returns is then sent from the event loop, and cancelled when the
client disconnects, as Django's handler does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.db import connections
from django.http import FileResponse, HttpResponseBase
from django.urls import set_script_prefix

from realtime.daphne_ext import body_sender

# Requests served at once per process (each holds at most one database connection).
REQUEST_THREADS = 32
# Of which this many keep their connections: a process holds at most this many while it is
# idle.
KEPT_CONNECTIONS = 8
# A kept connection is closed at the start of the first request after it is this old.
KEPT_CONNECTION_S = 300.0

_thread = threading.local()


def _start_thread(keeps_connections: bool) -> None:
    _thread.keeps_connections = keeps_connections


_keeping = ThreadPoolExecutor(
    KEPT_CONNECTIONS, thread_name_prefix="http", initializer=_start_thread, initargs=(True,)
)
_overflow = ThreadPoolExecutor(
    REQUEST_THREADS - KEPT_CONNECTIONS,
    thread_name_prefix="http-more",
    initializer=_start_thread,
    initargs=(False,),
)
# A free thread of `_keeping`: taken by a request that goes there, given back when its call
# has run, or when it was cancelled before it ran.
_keeping_free = threading.BoundedSemaphore(KEPT_CONNECTIONS)


class _KeepingSlot:
    """One request's hold on a thread of `_keeping`, given back exactly once: by the thread
    when the call has run, or by the event loop when the call was cancelled before a thread
    took it (the pool then drops it unrun)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "waiting"  # -> "running" (a thread took it) or "dropped"

    def start(self) -> bool:
        with self._lock:
            if self._state == "dropped":
                return False
            self._state = "running"
            return True

    def drop(self) -> None:
        with self._lock:
            if self._state != "waiting":
                return
            self._state = "dropped"
        _keeping_free.release()


async def _in_thread(function: Any, *args: Any) -> Any:
    """`function(*args)` on a request thread: one that keeps its connections if one is free."""
    if not _keeping_free.acquire(blocking=False):
        return await sync_to_async(function, thread_sensitive=False, executor=_overflow)(*args)
    slot = _KeepingSlot()

    def run() -> Any:
        if not slot.start():
            return None
        try:
            return function(*args)
        finally:
            _keeping_free.release()

    try:
        return await sync_to_async(run, thread_sensitive=False, executor=_keeping)()
    except asyncio.CancelledError:
        slot.drop()
        raise


def _keep_connections() -> None:
    """Keep this thread's connections for its next request, if it is one of the threads
    that do. Django closes a connection at the end of a request once it is CONN_MAX_AGE old
    (0: at once, as the service's other threads use them) and checks it before use only with
    CONN_HEALTH_CHECKS; it reads both when it connects, so they are set on the connection."""
    if not _thread.keeps_connections:
        return
    now = time.monotonic()
    for connection in connections.all(initialized_only=True):
        if connection.connection is None:
            continue
        connection.health_check_enabled = True  # type: ignore[attr-defined]
        if connection.close_at is not None and connection.close_at <= now:
            connection.close_at = now + KEPT_CONNECTION_S


class Handler(ASGIHandler):
    def __init__(self) -> None:
        # Not ASGIHandler's: it would build the async chain this handler does not use.
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django serves HTTP here, not {scope['type']}.")
        try:
            body = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            response = await _in_thread(self._respond, scope, body)
            if response.streaming:
                await self._stream(response, receive, send)
            else:
                await self.send_response(response, send)
        finally:
            body.close()

    def _respond(self, scope: dict[str, Any], body: Any) -> HttpResponseBase:
        """The response, on a request thread; one that is not streamed is closed here, its
        content already in memory."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=ASGIHandler, scope=scope)
        request, refusal = self.create_request(scope, body)
        if request is None:
            assert refusal is not None  # Django answers the request it could not build
            response: HttpResponseBase = refusal
        else:
            response = self.get_response(request)
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size
        if not response.streaming:
            self._close(response)
        return response

    async def _stream(self, response: HttpResponseBase, receive: Any, send: Any) -> None:
        """Send a streamed response until it ends or the client leaves (then the stream is
        cancelled: its `finally` releases what it holds), and close it. A response with an
        `outlet` (an SSE stream) gets a writer that sends parts of its body at once, past its
        iterator (realtime.daphne_ext.body_sender; None under other servers)."""
        outlet = getattr(response, "outlet", None)
        if outlet is not None:
            outlet.write = body_sender(send)
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(self.send_response(response, send)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            await _in_thread(self._close, response)
        for outcome in outcomes:
            if isinstance(outcome, Exception) and not isinstance(outcome, RequestAborted):
                raise outcome

    @staticmethod
    def _close(response: HttpResponseBase) -> None:
        _keep_connections()
        response.close()  # request_finished: Django's connection upkeep
