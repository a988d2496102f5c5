"""Huey tasks: thin, they take ids and call the runner."""

from __future__ import annotations

from typing import Any

from huey.contrib.djhuey import db_task, on_startup, signal
from huey.signals import SIGNAL_INTERRUPTED

from core import metrics
from core.heap import freeze_startup_heap
from jobs.embedded import embedded_worker_alive
from jobs.runner import housekeeping, run_generation_job, start_worker


@db_task()  # type: ignore[untyped-decorator]
def run_generation(generation_id: str) -> None:
    run_generation_job(generation_id)


@on_startup()  # type: ignore[untyped-decorator]
def start_housekeeping() -> None:
    # Every worker process beats for its own generations and reaps others' lost ones, even
    # before its first task, so a restarted fleet recovers generations left running.
    start_worker()
    # A run_huey process is scraped on a port of its own; the embedded worker's metrics are
    # already in its web process's /metrics.
    if not embedded_worker_alive():
        metrics.serve_worker_metrics()
    # The worker machinery and the provider's SDK are loaded: what start-up left stays for the
    # life of the process, out of the collector's way (core.heap). Once, by the first thread.
    freeze_startup_heap("worker")


@signal(SIGNAL_INTERRUPTED)  # type: ignore[untyped-decorator]
def hand_back_interrupted(signal_name: str, task: Any, *args: Any, **kwargs: Any) -> None:
    # Huey has no acknowledgement: a task the consumer stops (SIGTERM at once, SIGINT after
    # the grace period) is simply gone. Called in the consumer's main thread just before the
    # process exits, while the worker threads still run: they hand their generations back to
    # the queue, so another worker continues within seconds, not after the reaper's
    # HEARTBEAT_TIMEOUT_S. Once per interrupted task; all but the first find nothing left.
    housekeeping.hand_back_all()
