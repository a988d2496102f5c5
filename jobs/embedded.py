"""The embedded default: the Huey consumer runs inside the web process, as threads."""

from __future__ import annotations

import logging
import threading
from typing import Any

from huey import Huey
from huey.consumer import Consumer
from huey.storage import SqliteStorage

logger = logging.getLogger(__name__)

# A worker thread that found the queue empty waits this long for an enqueue of this process
# before it looks again; tasks put in the file by another process are seen within it.
DEQUEUE_WAIT_S = 1.0


class WakingSqliteStorage(SqliteStorage):  # type: ignore[misc]
    """Huey's SQLite queue, with a dequeue that waits to be woken by an enqueue.

    Huey's consumer polls a storage that does not block, backing off from 0.1 s to 10 s
    while idle: a generation created after a quiet spell waited tens to hundreds of ms for a
    worker to look (the bulk of the embedded tier's time to first token). Here the web
    process enqueues and consumes, so an enqueue wakes a waiting worker at once.
    """

    blocking = True  # the consumer calls dequeue again at once instead of sleeping

    def __init__(self, *args: Any, dequeue_wait_s: float = DEQUEUE_WAIT_S, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wake = threading.Condition()
        self._enqueued = 0
        self._dequeue_wait_s = dequeue_wait_s

    def _create_connection(self) -> Any:
        conn = super()._create_connection()
        if self._fsync is None:
            # WAL with synchronous=NORMAL: a commit survives the process crashing, only not
            # the machine losing power, and costs no fsync (1.5-5 ms here per enqueue and
            # per dequeue). A task lost that way is re-enqueued by the reaper, which finds
            # its generation still queued in the database.
            conn.execute("pragma synchronous=NORMAL")
        return conn

    def enqueue(self, data: bytes, priority: float | None = None) -> None:
        super().enqueue(data, priority)
        with self._wake:
            self._enqueued += 1
            self._wake.notify()

    def dequeue(self) -> bytes | None:
        with self._wake:
            seen = self._enqueued
        data: bytes | None = super().dequeue()
        if data is not None:
            return data
        with self._wake:
            # An enqueue between the empty read and here has already notified: no wait.
            if self._enqueued == seen:
                self._wake.wait(self._dequeue_wait_s)
        data = super().dequeue()
        return data


class WakingSqliteHuey(Huey):  # type: ignore[misc]
    storage_class = WakingSqliteStorage


class EmbeddedConsumer(Consumer):  # type: ignore[misc]
    def _set_signal_handlers(self) -> None:
        # The web server owns the process's signals; the consumer's threads are daemons that
        # end with it, and the reaper re-queues whatever they were running.
        pass


_lock = threading.Lock()
_consumer: EmbeddedConsumer | None = None


def start_embedded_consumer() -> None:
    global _consumer
    with _lock:
        if _consumer is not None:
            return
        from django.conf import settings
        from huey.contrib.djhuey import HUEY

        import jobs.tasks  # noqa: F401  (registers the tasks with HUEY)

        options = dict(settings.HUEY["consumer"])
        _consumer = EmbeddedConsumer(HUEY, **options)
        _consumer.start()
        logger.info("embedded worker started with %s threads", options.get("workers"))


def embedded_worker_alive() -> bool:
    with _lock:
        if _consumer is None:
            return False
        return any(thread.is_alive() for _, thread in _consumer.worker_threads)
