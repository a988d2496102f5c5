"""The embedded tier's queue: an idle worker is woken by an enqueue, it does not poll."""

from __future__ import annotations

import threading
from pathlib import Path

from jobs.embedded import WakingSqliteHuey, WakingSqliteStorage


def _storage(tmp_path: Path) -> WakingSqliteStorage:
    # A wait far longer than the test: a dequeue that returns did not time out.
    return WakingSqliteStorage("test-queue", filename=str(tmp_path / "q.db"), dequeue_wait_s=600)


def test_a_dequeue_on_an_empty_queue_waits_for_the_next_enqueue_and_returns_it(
    tmp_path: Path,
) -> None:
    storage = _storage(tmp_path)
    got: list[bytes | None] = []
    waiting = threading.Thread(target=lambda: got.append(storage.dequeue()), daemon=True)
    waiting.start()

    storage.enqueue(b"task-1")
    waiting.join(timeout=60)

    # One dequeue call, begun before the enqueue, hands the task over: the consumer's
    # polling sleep (with its backoff up to 10 s) is not on the path.
    assert not waiting.is_alive()
    assert got == [b"task-1"]


def test_the_consumer_treats_the_queue_as_blocking_so_it_never_sleeps_between_looks(
    tmp_path: Path,
) -> None:
    huey = WakingSqliteHuey("test-queue", filename=str(tmp_path / "q.db"))
    assert isinstance(huey.storage, WakingSqliteStorage)
    assert huey.storage.blocking


def test_tasks_enqueued_before_the_dequeue_come_out_at_once_in_order(tmp_path: Path) -> None:
    storage = _storage(tmp_path)
    storage.enqueue(b"a")
    storage.enqueue(b"b")
    assert storage.dequeue() == b"a"
    assert storage.dequeue() == b"b"


def test_the_embedded_default_uses_the_waking_queue() -> None:
    from django.conf import settings

    if settings.DISTRIBUTED:
        assert settings.HUEY["huey_class"] == "jobs.redis_queue.GatedRedisHuey"
    else:
        assert settings.HUEY["huey_class"] == "jobs.embedded.WakingSqliteHuey"


def test_the_queue_commits_without_waiting_for_the_disk(tmp_path: Path) -> None:
    """WAL with synchronous=NORMAL (1): an enqueue or dequeue costs no fsync; a task lost to
    a power cut is re-enqueued by the reaper from its still-queued generation."""
    storage = _storage(tmp_path)
    storage.enqueue(b"x")
    assert storage.sql("pragma synchronous", results=True) == [(1,)]
    assert storage.sql("pragma journal_mode", results=True) == [("wal",)]
