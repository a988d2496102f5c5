"""The start-up heap kept out of the garbage collector's full collections.

A process's modules, Django's setup and the SDKs' classes are hundreds of thousands of
objects that live as long as the process. CPython's oldest-generation collection walks all of
them: in a worker under 200 streams one took 163 ms, and every delivery of that process
waited for it (the event p99 of the whole step was that pause). `gc.freeze()` moves what is
alive once start-up is over to a permanent generation that no collection walks; what the
process allocates afterwards is collected as before, and memory freed by reference counting
is freed as before (docs/design.md; docs/scaling.md, "Garbage-collection pauses").
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_frozen: set[str] = set()


def freeze_startup_heap(stage: str) -> bool:
    """Collect once, then freeze every object alive: once per `stage` of this process's
    start-up (a web process, then the worker machinery it may start). Whether it froze now."""
    with _lock:
        if stage in _frozen:
            return False
        _frozen.add(stage)
        gc.collect()
        gc.freeze()
        return True
