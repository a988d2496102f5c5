"""The realtime path's database reads, on a few threads that keep their connections
(docs/design.md, "Reads on kept connections"). A read that fails on a kept connection (the
database restarted, or dropped it after `wait_timeout`) is tried once more on a new one.

Only idempotent reads come here: a write is never run twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connection

from core import selectors
from core.selectors import RowState

P = ParamSpec("P")
R = TypeVar("R")

# Connections held per process; reads beyond this many at once wait for a thread.
READ_THREADS = 4
_executor = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="realtime-db")


def _call(fn: Callable[[], R]) -> R:
    reused = connection.connection is not None
    try:
        return fn()
    except (OperationalError, InterfaceError):
        connection.close()
        if not reused:
            raise
    except DatabaseError:
        connection.close()
        raise
    try:
        return fn()
    except (DatabaseError, InterfaceError):
        connection.close()
        raise


async def read(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """`fn(*args, **kwargs)`, a read-only ORM call, on a thread that keeps its connection."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, _call, partial(fn, *args, **kwargs))


async def read_row(generation_id: str) -> RowState | None:
    return await read(selectors.row_state, generation_id)
