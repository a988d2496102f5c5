"""Huey tasks: thin, they take ids and call the runner."""

from __future__ import annotations

from huey.contrib.djhuey import db_task, on_startup

from jobs.runner import housekeeping, run_generation_job
from realtime.eventlog import event_log


@db_task()  # type: ignore[untyped-decorator]
def run_generation(generation_id: str) -> None:
    run_generation_job(generation_id)


@on_startup()  # type: ignore[untyped-decorator]
def start_housekeeping() -> None:
    # Every worker process beats for its own generations and reaps others' lost ones, even
    # before its first task, so a restarted fleet recovers generations left running.
    housekeeping.start()
    event_log().watch_cancels()
