"""The distributed tier's queue (jobs.redis_queue): of a process's idle Huey threads, only a
few wait in a BRPOP at a time; every task still reaches a thread at once, and an idle thread
still comes back to its worker loop (its stop flag) within the read timeout."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from jobs.redis_queue import DEQUEUE_POLLERS, GatedRedisHuey, GatedRedisStorage

pytestmark = pytest.mark.skipif(
    not settings.DISTRIBUTED, reason="the embedded default has its SQLite queue"
)

THREADS = 20


@pytest.fixture
def storage() -> Iterator[GatedRedisStorage]:
    name = f"test{uuid.uuid4().hex[:12]}"
    # Each of the pool's connections carries the name, so that Redis lists this queue's own.
    pool = redis.ConnectionPool.from_url(settings.REDIS_URL, client_name=name)
    queue = GatedRedisStorage(name, connection_pool=pool, read_timeout=1)
    yield queue
    queue.flush_all()
    pool.disconnect()


class IdleThreads:
    """THREADS threads dequeuing from `storage` as Huey's worker loops do, until stopped."""

    def __init__(self, storage: GatedRedisStorage) -> None:
        self.storage = storage
        self.received: list[bytes] = []
        self.empty_answers = [0] * THREADS
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, args=(index,), daemon=True)
            for index in range(THREADS)
        ]

    def _loop(self, index: int) -> None:
        while not self.stop.is_set():
            data = self.storage.dequeue()
            if data is None:
                self.empty_answers[index] += 1
            else:
                self.received.append(data)

    def __enter__(self) -> IdleThreads:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)


def in_brpop(storage: GatedRedisStorage) -> int:
    admin = redis.Redis.from_url(settings.REDIS_URL)
    try:
        clients: list[dict[str, str]] = admin.client_list()  # type: ignore[assignment]
        return sum(
            client.get("name") == storage.name and client.get("cmd") == "brpop"
            for client in clients
        )
    finally:
        admin.close()


def test_the_distributed_tier_uses_it() -> None:
    from huey.contrib.djhuey import HUEY

    assert isinstance(HUEY, GatedRedisHuey)
    assert isinstance(HUEY.storage, GatedRedisStorage)


def test_only_a_few_idle_threads_wait_in_redis(storage: GatedRedisStorage) -> None:
    with IdleThreads(storage):
        seen = []
        for _ in range(10):
            time.sleep(0.1)
            seen.append(in_brpop(storage))
    assert max(seen) <= DEQUEUE_POLLERS
    assert max(seen) >= 1  # someone is always listening


def test_every_task_reaches_a_thread_once_and_at_once(storage: GatedRedisStorage) -> None:
    with IdleThreads(storage) as idle:
        time.sleep(0.2)
        sent = [f"task-{n}".encode() for n in range(50)]
        started = time.monotonic()
        for data in sent:
            storage.enqueue(data)
        while len(idle.received) < len(sent) and time.monotonic() - started < 5:
            time.sleep(0.005)
        elapsed_s = time.monotonic() - started
    assert sorted(idle.received) == sorted(sent)
    # Far below the read timeout (1 s): a thread that takes a task lets the next one in.
    assert elapsed_s < 0.5


def test_an_idle_thread_returns_to_its_loop_within_the_read_timeout(
    storage: GatedRedisStorage,
) -> None:
    with IdleThreads(storage) as idle:
        time.sleep(2.6)
    # Each thread, in a BRPOP or waiting for its turn, has answered "nothing" at least twice
    # in 2.6 s of a 1 s read timeout: Huey's worker loop sees its stop flag as before.
    assert min(idle.empty_answers) >= 2
