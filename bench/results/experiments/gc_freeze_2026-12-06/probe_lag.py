"""Instrumentation for a scratch checkout (not the service's code): logs each garbage
collection over 3 ms, each gap of more than 30 ms in a thread sleeping 5 ms at a time (the GIL
held, or the process not scheduled), and each event-loop iteration late by more than 30 ms,
to /tmp/gclog/<pid>. Imported from the checkout's project/settings.py (``install()``), and
``watch_loop(loop, label)`` called on the engine's, Daphne's, the fake provider's and the
load generator's loops."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
from typing import Any

__all__ = ["install", "watch_loop"]

NAME = " ".join(sys.argv[:3])[-50:]
_started = [0.0]


def _log(message: str) -> None:
    with open(f"/tmp/gclog/{os.getpid()}", "a") as log:
        log.write(f"{time.time():.3f} {message} [{NAME}]\n")


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _started[0]
    if took > 0.003:
        _log(f"gc gen{info['generation']} {took * 1e3:.1f}ms")


def _watch_gil() -> None:
    last = time.perf_counter()
    while True:
        time.sleep(0.005)
        now = time.perf_counter()
        if now - last > 0.03:
            _log(f"gil-gap {(now - last) * 1e3:.0f}ms")
        last = now


def install() -> None:
    gc.callbacks.append(_on_gc)
    threading.Thread(target=_watch_gil, daemon=True).start()


def watch_loop(loop: asyncio.AbstractEventLoop, label: str) -> None:
    due = [loop.time() + 0.01]

    def tick() -> None:
        now = loop.time()
        if now - due[0] > 0.03:
            _log(f"loop-lag {label} {(now - due[0]) * 1e3:.0f}ms")
        due[0] = now + 0.01
        loop.call_at(due[0], tick)

    loop.call_soon_threadsafe(tick)
