"""An asyncio event loop running for the life of the process on a thread of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any


def start_loop_thread(
    name: str, begin: Callable[[], Coroutine[Any, Any, None]]
) -> asyncio.AbstractEventLoop:
    """Start a daemon thread running a new event loop forever, after `begin()` has run on it.

    Returns once `begin` has finished, so that what it sets up is there for the caller; if it
    raises, the thread ends and the error is raised here."""
    loop = asyncio.new_event_loop()
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
