"""The realtime path's database work, on a few threads that keep their connections
(docs/design.md, "Reads on kept connections"). A read that fails on a kept connection (the
database restarted, or dropped it after `wait_timeout`) is tried once more on a new one.

A write (a WebSocket `generate` or `cancel`) is never run twice: its kept connection is
checked first instead, as a request's is (Django's CONN_HEALTH_CHECKS), and replaced when the
database no longer answers on it; a write that fails leaves its connection closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connection

from core import selectors
from core.errors import ApiError
from core.selectors import RowState

P = ParamSpec("P")
R = TypeVar("R")

# Connections held per process; reads beyond this many at once wait for a thread.
READ_THREADS = 4
_executor = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="realtime-db")
# Writes have threads of their own: a slow write holds up no resume's reads.
WRITE_THREADS = 4
_writes = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="realtime-db-write")


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


def _write(fn: Callable[[], R]) -> R:
    if connection.connection is not None and not connection.is_usable():
        connection.close()
    try:
        return fn()
    except ApiError:
        raise  # refused (a limit, a conflict): rolled back, the connection as good as before
    except BaseException:
        # Anything else may have left the connection in any state: the next write gets a
        # new one.
        connection.close()
        raise


async def write(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """`fn(*args, **kwargs)`, a write through the ORM, once, on a thread that keeps its
    connection."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_writes, _write, partial(fn, *args, **kwargs))


async def read_row(generation_id: str) -> RowState | None:
    return await read(selectors.row_state, generation_id)
