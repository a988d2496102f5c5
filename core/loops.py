"""An asyncio event loop running for the life of the process on a thread of its own.

The loop is uvloop's (libuv) where it is installed: a worker's one loop reads every running
generation's provider stream and writes its appends, and on uvloop the worker spent about 10%
less CPU per token than on asyncio's own loop, with everything else the same (docs/scaling.md,
"The engine's loop on uvloop"). asyncio's loop where uvloop has no build (Windows)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any

try:
    import uvloop
except ImportError:  # pragma: no cover - no build for this platform
    uvloop = None  # type: ignore[assignment]


def new_event_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def start_loop_thread(
    name: str, begin: Callable[[], Coroutine[Any, Any, None]]
) -> asyncio.AbstractEventLoop:
    """Start a daemon thread running a new event loop forever, after `begin()` has run on it.

    Returns once `begin` has finished, so that what it sets up is there for the caller; if it
    raises, the thread ends and the error is raised here."""
    loop = new_event_loop()
    started: Future[None] = Future()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(begin())
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        loop.run_forever()

    threading.Thread(target=run, name=name, daemon=True).start()
    started.result()
    return loop
