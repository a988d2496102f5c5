"""core.loops: the loop a worker's engine (and the live sender) runs on is uvloop's."""

from __future__ import annotations

import asyncio
import threading

import uvloop

from core.loops import start_loop_thread


def test_a_loop_thread_runs_uvloop_and_takes_work_from_other_threads() -> None:
    seen: dict[str, object] = {}

    async def begin() -> None:
        seen["loop"] = asyncio.get_running_loop()
        seen["thread"] = threading.current_thread().name

    loop = start_loop_thread("loops-test", begin)
    try:
        assert isinstance(loop, uvloop.Loop)
        # `begin` ran on that loop, on the thread of its own, before the call returned.
        assert seen == {"loop": loop, "thread": "loops-test"}

        async def where() -> tuple[asyncio.AbstractEventLoop, str]:
            await asyncio.sleep(0.01)
            return asyncio.get_running_loop(), threading.current_thread().name

        assert asyncio.run_coroutine_threadsafe(where(), loop).result(5) == (loop, "loops-test")
    finally:
        loop.call_soon_threadsafe(loop.stop)
