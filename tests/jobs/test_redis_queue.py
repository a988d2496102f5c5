"""The distributed tier's queue (jobs.redis_queue): of a process's idle Huey threads, only a
few wait in a BRPOP at a time; every task still reaches a thread at once, and an idle thread
still comes back to its worker loop (its stop flag) within the read timeout."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest
import redis
from django.conf import settings
from huey.consumer import Worker

from jobs.redis_queue import (
    DEQUEUE_POLLERS,
    UNREACHABLE_RETRY_S,
    GatedRedisHuey,
    GatedRedisStorage,
)

pytestmark = pytest.mark.skipif(
    not settings.DISTRIBUTED, reason="the embedded default has its SQLite queue"
)

THREADS = 20


@pytest.fixture
def storage() -> Iterator[GatedRedisStorage]:
    with queue_on(settings.REDIS_URL) as queue:
        yield queue


@contextmanager
def queue_on(url: str) -> Iterator[GatedRedisStorage]:
    """A queue of its own name on the Redis at `url`, emptied and disconnected after."""
    name = f"test{uuid.uuid4().hex[:12]}"
    # Each of the pool's connections carries the name, so that Redis lists this queue's own.
    pool = redis.ConnectionPool.from_url(url, client_name=name)
    queue = GatedRedisStorage(name, connection_pool=pool, read_timeout=1)
    try:
        yield queue
    finally:
        with suppress(redis.RedisError):
            queue.flush_all()
        pool.disconnect()


class IdleThreads:
    """THREADS of Huey's own worker loops (huey.consumer.Worker, with the consumer's default
    back-off) on a Huey whose storage is `storage`, each in a thread of its own, until
    stopped; `record(text)` is a task that notes its argument in `received`. `delay_s`: each
    loop's back-off as it starts (Huey resets it only when the thread takes a task)."""

    def __init__(self, storage: GatedRedisStorage, delay_s: float = 0.1) -> None:
        self.storage = storage
        self.delay_s = delay_s
        self.received: list[str] = []
        self.empty_answers: Counter[str] = Counter()
        self.stop = threading.Event()
        self.huey = GatedRedisHuey(storage.name, connection_pool=storage.pool, read_timeout=1)
        self.huey.storage = storage
        dequeue = storage.dequeue

        def counted() -> bytes | None:
            data = dequeue()
            if data is None:
                self.empty_answers[threading.current_thread().name] += 1
            return data

        storage.dequeue = counted  # type: ignore[method-assign]

        def record(text: str) -> None:
            self.received.append(text)

        self.record = self.huey.task(name="record")(record)
        self.threads = [
            threading.Thread(target=self._loop, name=f"idle-{index}", daemon=True)
            for index in range(THREADS)
        ]

    def _loop(self) -> None:
        worker = Worker(self.huey, self.stop, default_delay=0.1, max_delay=10.0, backoff=1.15)
        worker.delay = self.delay_s
        while not self.stop.is_set():
            worker.loop()

    def __enter__(self) -> IdleThreads:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


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
        sent = [f"task-{n}" for n in range(50)]
        started = time.monotonic()
        for data in sent:
            idle.record(data)
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
    assert len(idle.empty_answers) == THREADS
    assert min(idle.empty_answers.values()) >= 2


def test_after_redis_comes_back_a_task_is_taken_at_once_however_long_it_was_gone() -> None:
    """Huey's worker loop sleeps after a queue error, longer after every error (up to 10 s),
    and a thread's back-off is reset only when it takes a task: after the outages of a
    process's life, an idle thread sleeps 10 s on its next error, and after one more outage
    every idle thread could be asleep. Here the threads in the BRPOP ask again every
    UNREACHABLE_RETRY_S and the others keep waiting for their turn."""
    from tests.faults.infra import RedisServer

    server = RedisServer().start()
    try:
        # Each loop's back-off as earlier outages left it: 10 s.
        with queue_on(server.url) as storage, IdleThreads(storage, delay_s=10.0) as idle:
            time.sleep(0.3)
            server.stop()
            time.sleep(2)
            server.start()
            started = time.monotonic()
            for n in range(3):
                # A task each, one after another: a thread that takes one is busy with it
                # for a moment, the next must come from the other threads.
                idle.record(f"after-{n}")
            while len(idle.received) < 3 and time.monotonic() - started < 15:
                time.sleep(0.01)
            elapsed_s = time.monotonic() - started
        assert sorted(idle.received) == [f"after-{n}" for n in range(3)]
        assert elapsed_s < 2 * UNREACHABLE_RETRY_S + 1
    finally:
        server.close()


def test_a_task_starts_without_a_look_for_its_revocation(storage: GatedRedisStorage) -> None:
    """Nothing here revokes a task (a generation is stopped by its cancel), so Huey's read of
    the revocation keys before each task is left out: one round trip less on the way to a
    generation's first token. Revoking is refused rather than silently ignored."""
    huey = GatedRedisHuey(storage.name, connection_pool=storage.pool, read_timeout=1)
    huey.storage = storage
    ran: list[int] = []
    peeks: list[object] = []
    peek_many = storage.peek_many

    def counted(keys: object) -> object:
        peeks.append(keys)
        return peek_many(keys)

    storage.peek_many = counted  # type: ignore[method-assign]

    @huey.task()  # type: ignore[untyped-decorator]
    def note(value: int) -> None:
        ran.append(value)

    note(7)
    task = huey.dequeue()
    assert task is not None
    huey.execute(task)
    assert ran == [7]
    assert peeks == []
    with pytest.raises(NotImplementedError):
        huey.revoke(task)
    with pytest.raises(NotImplementedError):
        huey.revoke_by_id(task.id)
