"""The fault-injection suite: 20+ clients stream and reconnect while one kind of fault repeats.

Two Daphne processes and two Huey workers on MySQL (through a proxy that can be cut) and a
Redis of the suite's own (that can be restarted). For each fault, for FAULT_SECONDS: clients
create generations and follow them to `done` over WebSocket and SSE, switching process and
transport at random and resuming by seq; about one in ten is cancelled mid-way. Then every
generation must end (none stuck in queued or running), and every client's fold must equal
the final `output` character for character, with no gap and no duplicate on the way.

The table of each run goes to docs/faults.md.
"""

from __future__ import annotations

import datetime
import random
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import (
    FAULT_CLIENTS,
    FAULT_SECONDS,
    FULL,
    distributed_only,
)
from tests.faults.infra import (
    DatabaseProxy,
    RedisServer,
    alive,
    fault_cluster,
    wait_workers_ready,
)
from tests.faults.storm import FaultRow, Storm
from tests.harness import FakeLLM, Service, wait_until
from tests.tier_env import RUN_DIR

pytestmark = [distributed_only, pytest.mark.timeout(600 + 10 * FAULT_SECONDS)]

# How long, after the fault phase, every generation has to end: a worker killed at the
# last moment costs HEARTBEAT_TIMEOUT_S (4) + a reaper round, then the generation reruns.
SETTLE_S = 60.0

Inject = Callable[[float], int]


@pytest.fixture(scope="module")
def cluster(
    fake_llm: FakeLLM, redis_server: RedisServer, database_proxy: DatabaseProxy
) -> Iterator[Service]:
    instance = fault_cluster(fake_llm, redis_server, database_proxy).start()
    wait_workers_ready(instance)
    yield instance
    instance.stop()


def plain_prompt(rng: random.Random, number: int) -> str:
    tokens = rng.randint(40, 180)
    rate = rng.choice([50, 80, 120])
    return f"storm {number} {uuid.uuid4().hex[:8]} [fake tokens={tokens} rate={rate}]"


class ProviderFaults:
    """Prompts whose provider fails in every way the fake can: counted as injected faults."""

    def __init__(self) -> None:
        self.injected = 0

    def __call__(self, rng: random.Random, number: int) -> str:
        tokens = rng.randint(60, 160)
        fault = rng.choice(
            [
                "",
                "fail=503x2",  # retried before the first token, invisibly
                "fail=429x1",
                "fail=500x1",
                f"drop={rng.randint(5, 50)}x1",  # cut mid-way: a new attempt with `reset`
                f"drop={rng.randint(5, 50)}x2",
                "fail=400x1",  # a permanent error: failed at once
                "ttft=4500",  # no first token within PROVIDER_FIRST_BYTE_TIMEOUT_S (3 s here)
                *(["hang=30"] if FULL else []),  # silent mid-way, on every attempt
            ]
        )
        self.injected += bool(fault)
        return f"provider {number} {uuid.uuid4().hex[:8]} [fake tokens={tokens} rate=60 {fault}]"


def note(message: str) -> None:
    """A line in the run's injection log, to line up with the processes' logs."""
    with open(Path(RUN_DIR) / "fault-injections.log", "a") as log:
        log.write(f"{datetime.datetime.now(datetime.UTC):%H:%M:%S.%f} {message}\n")


def every(rng: random.Random, low_s: float, high_s: float, end_at: float) -> Iterator[None]:
    """Yield at random intervals until `end_at`."""
    while True:
        time.sleep(rng.uniform(low_s, high_s))
        if time.monotonic() >= end_at - 0.5:
            return
        yield


def restore_cluster(cluster: Service) -> None:
    for index, process in enumerate(cluster.workers):
        if process is None or process.poll() is not None:
            cluster.start_worker(index)
    for index, process in enumerate(cluster.webs):
        if process is None or process.poll() is not None:
            cluster.start_web(index)
    wait_until(lambda: ready(cluster), timeout_s=60, interval_s=0.3)


def ready(cluster: Service) -> bool:
    try:
        return all(
            httpx.get(cluster.url("/readyz", web=i), timeout=5).status_code == 200
            for i in range(len(cluster.webs))
        )
    except httpx.HTTPError:
        return False


def run_fault(
    cluster: Service,
    fault_report: list[FaultRow],
    name: str,
    inject: Inject,
    *,
    prompt: Callable[[random.Random, int], str] = plain_prompt,
    injected: Callable[[int], int] = lambda n: n,
    seed: int,
) -> FaultRow:
    import asyncio

    note(f"-- {name}")
    storm = Storm(cluster, clients=FAULT_CLIENTS, seconds=FAULT_SECONDS, prompt=prompt, seed=seed)
    try:
        count = asyncio.run(storm.run(inject))
    finally:
        restore_cluster(cluster)
        wait_workers_ready(cluster)
    rows = storm.final_rows(SETTLE_S)
    row = storm.report(name, injected(count), rows)
    fault_report.append(row)
    print(MARKDOWN_ROW_PREFIX + row.markdown())
    wait_until(lambda: ready(cluster), timeout_s=30, interval_s=0.5)
    assert alive(cluster) == {"webs": [True, True], "workers": [True, True]}
    assert row.injected >= 1
    assert row.started >= FAULT_CLIENTS
    assert row.stuck == 0, row
    assert row.clients_without_done == 0, row
    assert (row.chars_lost, row.chars_doubled) == (0, 0), row
    assert row.seq_violations == 0, row
    assert not [note for note in row.notes if "`done` seq" in note], row
    # A WebSocket is not closed as an internal error because a dependency hiccuped.
    assert row.ws_closes[1011] == 0, row
    return row


MARKDOWN_ROW_PREFIX = "\nfault result: "


def test_worker_sigkill_loop(cluster: Service, fault_report: list[FaultRow]) -> None:
    """SIGKILL a worker at random every few seconds; it is started again a moment later."""
    rng = random.Random(1)

    def inject(end_at: float) -> int:
        count = 0
        # A worker takes a few seconds to start: kills much more often than that leave no
        # worker up, and every generation fails after MAX_ATTEMPTS (a crash loop, not this).
        for _ in every(rng, 2.0, 4.0, end_at):
            index = count % len(cluster.workers)
            note(f"SIGKILL worker{index}")
            cluster.stop_process(cluster.workers[index], signal.SIGKILL)
            count += 1
            time.sleep(0.5)
            cluster.start_worker(index)
        return count

    row = run_fault(cluster, fault_report, "worker SIGKILL", inject, seed=11)
    assert row.completed + row.cancelled > 0


def test_worker_sigterm_and_sigint_loop(cluster: Service, fault_report: list[FaultRow]) -> None:
    """Stop a worker with SIGTERM (stop now: hand back at once) or SIGINT (finish within the
    grace period, then hand back); it is started again once it has exited."""
    rng = random.Random(2)

    def inject(end_at: float) -> int:
        count = 0
        # A stop takes a few seconds (SIGINT: the 2 s grace period, then the hand-back).
        for _ in every(rng, 0.3, 1.0, end_at):
            index = count % len(cluster.workers)
            sig = signal.SIGTERM if count % 2 == 0 else signal.SIGINT
            note(f"{sig.name} worker{index}")
            cluster.stop_process(cluster.workers[index], sig)
            note(f"worker{index} exited")
            count += 1
            cluster.start_worker(index)
        return count

    row = run_fault(cluster, fault_report, "worker SIGTERM / SIGINT", inject, seed=12)
    # Handed back, not lost: nothing fails. (A hand-back keeps the attempt number; only a
    # runner too slow to answer within 3 s is re-queued as the next attempt.)
    assert not row.failed, row


def test_daphne_kill_loop(cluster: Service, fault_report: list[FaultRow]) -> None:
    """Kill one of the two Daphne processes (SIGKILL, or SIGTERM: close 1001), start it
    again; its clients resume on the other one meanwhile."""
    rng = random.Random(3)

    def inject(end_at: float) -> int:
        count = 0
        for _ in every(rng, 1.5, 3.0, end_at):
            index = count % len(cluster.webs)
            sig = signal.SIGKILL if count % 2 == 0 else signal.SIGTERM
            note(f"{sig.name} web{index}")
            cluster.stop_process(cluster.webs[index], sig)
            count += 1
            time.sleep(0.5)
            # Not waiting for it to be up: the next fault may hit the other one meanwhile,
            # and clients then retry until either answers.
            cluster.start_web(index, wait=False)
        return count

    row = run_fault(cluster, fault_report, "Daphne SIGKILL / SIGTERM", inject, seed=13)
    assert not row.failed, row
    # A Daphne stopped by SIGTERM said "going away" to its WebSockets first.
    assert row.ws_closes[1001] >= 1, row


def test_redis_client_kill_loop(
    cluster: Service, redis_server: RedisServer, fault_report: list[FaultRow]
) -> None:
    """CLIENT KILL every connection of every process (commands and pub/sub) every ~2 s."""
    rng = random.Random(4)

    def inject(end_at: float) -> int:
        count = 0
        for _ in every(rng, 0.7, 1.5, end_at):
            note(f"CLIENT KILL: {redis_server.kill_clients()}")
            count += 1
        return count

    row = run_fault(cluster, fault_report, "Redis CLIENT KILL", inject, seed=14)
    assert not row.failed, row


def test_redis_restart_loop(
    cluster: Service, redis_server: RedisServer, fault_report: list[FaultRow]
) -> None:
    """Restart Redis (no persistence: buffers, fences, the queue and cancel flags are lost)."""
    rng = random.Random(5)

    def inject(end_at: float) -> int:
        count = 0
        for _ in every(rng, 1.5, 3.0, end_at):
            note("Redis restart")
            redis_server.restart(down_s=rng.uniform(0.3, 1.5))
            note("Redis up")
            count += 1
        return count

    run_fault(cluster, fault_report, "Redis restart", inject, seed=15)


def test_mysql_outage_loop(
    cluster: Service, database_proxy: DatabaseProxy, fault_report: list[FaultRow]
) -> None:
    """Cut every connection to MySQL for 1-2.5 s, every few seconds."""
    rng = random.Random(6)

    def inject(end_at: float) -> int:
        count = 0
        for _ in every(rng, 1.0, 2.5, end_at):
            # Refused (a restarting server), or silent (packets dropped: a client waits for
            # its connect timeout), in turn.
            if count % 2 == 0:
                note("MySQL cut")
                database_proxy.cut()
            else:
                note("MySQL silent")
                database_proxy.hang()
            count += 1
            time.sleep(rng.uniform(1.0, 2.5))
            database_proxy.restore()
            note("MySQL restored")
        return count

    run_fault(cluster, fault_report, "MySQL unreachable", inject, seed=16)


def test_provider_errors_and_drops(cluster: Service, fault_report: list[FaultRow]) -> None:
    """The provider answers 429/5xx, drops the stream mid-way, times out, or refuses (400)."""
    faults = ProviderFaults()

    def inject(end_at: float) -> int:
        while time.monotonic() < end_at:
            time.sleep(0.2)
        return 0

    row = run_fault(
        cluster,
        fault_report,
        "provider errors and drops",
        inject,
        prompt=faults,
        injected=lambda _: faults.injected,
        seed=17,
    )
    # Each failure named as PROTOCOL §8 says (a 400 is provider_bad_request; 5xx, 429 and
    # drops that outlast the retries are provider_unavailable or provider_rate_limited).
    assert set(row.failed) <= {
        "provider_bad_request",
        "provider_unavailable",
        "provider_rate_limited",
    }, row
    assert sum(row.failed.values()) >= 1, row
