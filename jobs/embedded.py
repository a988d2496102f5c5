"""The embedded default: the Huey consumer runs inside the web process, as threads."""

from __future__ import annotations

import logging
import threading

from huey.consumer import Consumer

logger = logging.getLogger(__name__)


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
