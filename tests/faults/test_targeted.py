"""Single faults, each at a chosen moment, with what a user sees checked exactly.

- a worker stopped by SIGTERM or SIGINT hands its generations back, and another worker
  continues them within seconds, long before the reaper would;
- Redis loses a generation's log while a subscriber is mid-stream and the worker is killed:
  the next attempt (or the reaper's end) numbers its events above everything the subscriber
  saw, so the subscriber still ends with exactly the final output;
- MySQL unreachable while a generation ends: nothing is marked completed before the row holds
  the output, and the generation completes once the database is back;
- /readyz names the dependency that is down;
- 30 parallel repeats of one Idempotency-Key, across two web processes, create one generation.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from jobs.events import fold
from tests.conftest import wait_terminal
from tests.fake_openai import expected_text
from tests.faults.conftest import distributed_only
from tests.faults.infra import DatabaseProxy, RedisServer, fault_cluster, wait_workers_ready
from tests.faults.storm import check_segment
from tests.harness import FakeLLM, Service, make_token, wait_until
from tests.wire import decoded_frame

pytestmark = [distributed_only, pytest.mark.timeout(300)]

# Long enough that recovering within a few seconds can only be the hand-back's doing.
HEARTBEAT_TIMEOUT_S = 8.0


@pytest.fixture(scope="module")
def cluster(
    fake_llm: FakeLLM, redis_server: RedisServer, database_proxy: DatabaseProxy
) -> Iterator[Service]:
    instance = fault_cluster(
        fake_llm,
        redis_server,
        database_proxy,
        env={
            "HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
            "MAX_ATTEMPTS": "3",
            "WORKER_SHUTDOWN_GRACE_S": "2",
            # The runner logs which generation it starts at INFO (see worker_running).
            "LOG_LEVEL": "INFO",
        },
    ).start()
    wait_workers_ready(instance)
    yield instance
    instance.stop()


@pytest.fixture(autouse=True)
def all_processes_running(cluster: Service) -> Iterator[None]:
    yield
    for index, process in enumerate(cluster.workers):
        if process is None or process.poll() is not None:
            cluster.start_worker(index)
    for index, process in enumerate(cluster.webs):
        if process is None or process.poll() is not None:
            cluster.start_web(index)
    wait_workers_ready(cluster)


def unique(text: str) -> str:
    return f"{text} #{uuid.uuid4().hex[:10]}"


def get(client: httpx.Client, generation_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/api/v1/generations/{generation_id}").json()
    return body


def worker_running(cluster: Service, generation_id: str) -> int:
    """Which worker process runs the generation (from the worker logs)."""

    def find() -> int | None:
        for index in range(len(cluster.workers)):
            log = (cluster.dir / f"worker{index}.log").read_text(errors="replace")
            if f"generation {generation_id}: attempt 1 started" in log:
                return index + 1
        return None

    found: int = wait_until(find, timeout_s=20)
    return found - 1


class Subscriber(threading.Thread):
    """A WebSocket client that follows one generation to `done`, resuming by seq on a
    dropped connection, and keeps every message."""

    def __init__(self, cluster: Service, username: str, generation_id: str) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.token = make_token(username)
        self.generation_id = generation_id
        self.received: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.connections = 0

    @property
    def position(self) -> int:
        return int(self.received[-1]["seq"]) if self.received else 0

    def run(self) -> None:
        asyncio.run(self._follow())

    async def _follow(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            web = self.connections % len(self.cluster.webs)
            self.connections += 1
            start, after = len(self.received), self.position
            try:
                await self._segment(web, self.received)
            except Exception:
                await asyncio.sleep(0.3)
            self.violations.extend(check_segment(self.received[start:], after))
            if self.received and self.received[-1]["type"] == "done":
                return

    async def _segment(self, web: int, out: list[dict[str, Any]]) -> None:
        url = self.cluster.url("/ws/v1", web=web).replace("http://", "ws://")
        async with connect(url, open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "auth", "token": self.token}))
            assert decoded_frame(await ws.recv())["type"] == "auth.ok"
            await ws.send(
                json.dumps({"type": "subscribe", "id": self.generation_id, "after": self.position})
            )
            while True:
                frame = decoded_frame(await asyncio.wait_for(ws.recv(), 30))
                if frame["type"] in ("subscribed",):
                    continue
                out.append(frame)
                if frame["type"] == "done":
                    return


def follow(cluster: Service, username: str, generation_id: str) -> Subscriber:
    subscriber = Subscriber(cluster, username, generation_id)
    subscriber.start()
    return subscriber


def assert_folds_to(subscriber: Subscriber, final: dict[str, Any]) -> None:
    subscriber.join(120)
    assert not subscriber.is_alive()
    assert subscriber.violations == []
    assert subscriber.received[-1]["type"] == "done"
    assert subscriber.received[-1]["seq"] == final["seq"]
    assert fold(subscriber.received) == final["output"]


# -- graceful shutdown ----------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopped_worker_hands_back_and_another_continues_within_seconds(
    cluster: Service, sig: signal.Signals
) -> None:
    # 400 tokens at 40/s: ten seconds, more than the SIGINT grace period (2 s).
    with cluster.client("shutdown") as client:
        generation = client.post(
            "/api/v1/generations", json={"prompt": unique("long [fake tokens=400 rate=40]")}
        ).json()
        gid = generation["id"]
        subscriber = follow(cluster, "shutdown", gid)
        wait_until(lambda: get(client, gid)["output"], timeout_s=20)
        index = worker_running(cluster, gid)

        stopped_at = time.monotonic()
        cluster.stop_process(cluster.workers[index], sig)
        exited_in_s = time.monotonic() - stopped_at
        # The other worker has it running again well before HEARTBEAT_TIMEOUT_S.
        other_log = cluster.dir / f"worker{1 - index}.log"
        wait_until(
            lambda: f"generation {gid}: attempt 1 started" in other_log.read_text(errors="replace"),
            timeout_s=HEARTBEAT_TIMEOUT_S * 0.6,
        )
        resumed_in_s = time.monotonic() - stopped_at
        final = wait_terminal(client, gid, timeout_s=60)

    assert final["status"] == "completed"
    # A stop is not a failure: the same attempt runs again, and uses up none of MAX_ATTEMPTS.
    assert final["attempt"] == 1
    assert final["output"] == expected_text(400)
    assert_folds_to(subscriber, final)
    resets = [message for message in subscriber.received if message["type"] == "reset"]
    assert len(resets) == 1
    print(f"{sig.name}: worker exited in {exited_in_s:.1f} s, resumed in {resumed_in_s:.1f} s")


def test_sigint_lets_a_generation_that_ends_within_the_grace_period_finish(
    cluster: Service,
) -> None:
    with cluster.client("graceful") as client:
        generation = client.post(
            "/api/v1/generations", json={"prompt": unique("short [fake tokens=60 rate=60]")}
        ).json()
        subscriber = follow(cluster, "graceful", generation["id"])
        wait_until(lambda: get(client, generation["id"])["output"], timeout_s=20)
        index = worker_running(cluster, generation["id"])

        cluster.stop_process(cluster.workers[index], signal.SIGINT)
        final = get(client, generation["id"])

    # The worker finished it before exiting: one attempt, no `reset`.
    assert final["status"] == "completed"
    assert final["attempt"] == 1
    assert final["output"] == expected_text(60)
    assert_folds_to(subscriber, final)
    assert "reset" not in [message["type"] for message in subscriber.received]


# -- Redis loses the log --------------------------------------------------------------------


def row_behind(cluster: Service, generation_id: str, subscriber: Subscriber) -> bool:
    """The subscriber has seen events that the row's last checkpoint does not include (and
    there was a checkpoint: a worker killed before its first one leaves an empty row)."""
    row = cluster.stored_row(generation_id)
    return bool(
        row["status"] == "running" and row["seq"] > 0 and subscriber.position > row["seq"] + 2
    )


def test_log_lost_with_redis_then_worker_killed_next_attempt_seqs_are_new(
    cluster: Service, redis_server: RedisServer
) -> None:
    """The next attempt used to continue at the row's seq, below what the subscriber had
    seen: it dropped the `reset` and the first deltas as duplicates and kept stale text."""
    with cluster.client("lost-log") as client:
        generation = client.post(
            "/api/v1/generations", json={"prompt": unique("lost [fake tokens=400 rate=40]")}
        ).json()
        gid = generation["id"]
        subscriber = follow(cluster, "lost-log", gid)
        wait_until(lambda: row_behind(cluster, gid, subscriber), timeout_s=20, interval_s=0.01)
        index = worker_running(cluster, gid)
        seen = subscriber.position

        cluster.stop_process(cluster.workers[index], signal.SIGKILL)
        redis_server.restart(down_s=0.5)
        cluster.start_worker(index)
        final = wait_terminal(client, gid, timeout_s=HEARTBEAT_TIMEOUT_S + 60)

    assert final["status"] == "completed"
    assert final["attempt"] == 2
    assert final["output"] == expected_text(400)
    assert_folds_to(subscriber, final)
    # The new attempt numbered its events above everything the subscriber had seen.
    after_kill = [m for m in subscriber.received if m["seq"] > seen]
    assert after_kill[0]["seq"] > seen + 1000, after_kill[:3]


@pytest.fixture(scope="module")
def last_attempt_cluster(
    fake_llm: FakeLLM, redis_server: RedisServer, database_proxy: DatabaseProxy
) -> Iterator[Service]:
    """One attempt only: a lost worker means the reaper fails the generation."""
    instance = Service(
        fake_llm,
        webs=1,
        workers=1,
        env={
            "HEARTBEAT_TIMEOUT_S": "4",
            "CHECKPOINT_INTERVAL_S": "0.5",
            "MAX_ATTEMPTS": "1",
            "LOG_LEVEL": "INFO",
        },
        # Its own database of the suite's Redis: the other cluster's queue is not its own.
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/1",
        database_address=database_proxy.address,
    ).start()
    wait_workers_ready(instance)
    yield instance
    instance.stop()


def test_log_lost_with_redis_then_worker_killed_on_last_attempt_done_is_above_seen(
    last_attempt_cluster: Service, redis_server: RedisServer
) -> None:
    """The reaper's `done` used to be numbered right after the row's seq: a subscriber that
    had seen more dropped it and never ended, with text the row did not have."""
    cluster = last_attempt_cluster
    with cluster.client("lost-log-last") as client:
        generation = client.post(
            "/api/v1/generations", json={"prompt": unique("lost [fake tokens=400 rate=40]")}
        ).json()
        gid = generation["id"]
        subscriber = follow(cluster, "lost-log-last", gid)
        wait_until(lambda: row_behind(cluster, gid, subscriber), timeout_s=20, interval_s=0.01)
        seen = subscriber.position

        cluster.stop_process(cluster.workers[0], signal.SIGKILL)
        redis_server.restart(down_s=0.5)
        cluster.start_worker(0)
        final = wait_terminal(client, gid, timeout_s=60)

    assert final["status"] == "failed"
    assert final["error"]["code"] == "worker_lost"
    assert final["attempt"] == 1
    # The row's last checkpoint: a prefix of the answer, and what every subscriber ends with.
    assert expected_text(400).startswith(final["output"])
    assert final["output"]
    assert_folds_to(subscriber, final)
    assert final["seq"] > seen + 1000


# -- MySQL unreachable ----------------------------------------------------------------------


def test_mysql_cut_while_a_generation_ends_nothing_is_done_before_the_row_holds_it(
    cluster: Service, redis_server: RedisServer, database_proxy: DatabaseProxy
) -> None:
    with cluster.client("mysql-cut") as client:
        generation = client.post(
            "/api/v1/generations", json={"prompt": unique("cut [fake tokens=100 rate=50]")}
        ).json()
        gid = generation["id"]
        subscriber = follow(cluster, "mysql-cut", gid)
        wait_until(lambda: get(client, gid)["output"], timeout_s=20)
        # Subscribed (and authenticated, which needs the database) before the cut.
        wait_until(lambda: subscriber.received, timeout_s=20)
        log = redis_server.client()

        database_proxy.cut()
        try:
            # The provider's stream ends within 2 s; the worker cannot write the final row.
            cut_at = time.monotonic()
            while time.monotonic() - cut_at < 4:
                entries: list[Any] = log.xrange(f"llm:log:{gid}")  # type: ignore[assignment]
                kinds = [fields[b"k"] for _, fields in entries]
                assert b"done" not in kinds
                time.sleep(0.1)
            # ...while everything streamed reached the log and the subscriber.
            assert fold(subscriber.received) == expected_text(100)
        finally:
            database_proxy.restore()
        final = wait_terminal(client, gid, timeout_s=60)

    assert final["status"] == "completed"
    assert final["attempt"] == 1
    assert final["output"] == expected_text(100)
    assert_folds_to(subscriber, final)


# -- /readyz ----------------------------------------------------------------------------------


def readyz(cluster: Service) -> tuple[int, dict[str, Any]]:
    response = httpx.get(cluster.url("/readyz"), timeout=30)
    body: dict[str, Any] = response.json()
    return response.status_code, body


def test_readyz_names_the_dependency_that_is_down(
    cluster: Service, redis_server: RedisServer, database_proxy: DatabaseProxy
) -> None:
    assert readyz(cluster) == (
        200,
        {"status": "ok", "checks": {"database": "ok", "redis": "ok", "queue": "ok"}},
    )

    database_proxy.cut()
    try:
        status, body = readyz(cluster)
    finally:
        database_proxy.restore()
    assert status == 503
    assert body["error"]["code"] == "unavailable"
    checks = body["error"]["details"]
    assert checks["database"].startswith("error")
    assert (checks["redis"], checks["queue"]) == ("ok", "ok")
    assert "database" in body["error"]["message"]

    # Unreachable the quiet way (packets dropped): answered within the connect timeout.
    database_proxy.hang()
    try:
        asked_at = time.monotonic()
        status, body = readyz(cluster)
        answered_in_s = time.monotonic() - asked_at
    finally:
        database_proxy.restore()
    assert status == 503
    assert body["error"]["details"]["database"].startswith("error")
    assert answered_in_s < 10

    redis_server.stop()
    try:
        status, body = readyz(cluster)
    finally:
        redis_server.start()
    assert status == 503
    checks = body["error"]["details"]
    assert checks["database"] == "ok"
    assert checks["redis"].startswith("error") and checks["queue"].startswith("error")

    wait_until(lambda: readyz(cluster)[0] == 200, timeout_s=20, interval_s=0.5)


# -- idempotency ------------------------------------------------------------------------------


def test_thirty_parallel_repeats_of_one_key_on_two_web_processes_create_one_generation(
    cluster: Service,
) -> None:
    username = f"repeat-{uuid.uuid4().hex[:8]}"
    key = uuid.uuid4().hex
    body = {"prompt": unique("once [fake tokens=5]")}
    repeats = 30
    with cluster.client(username) as client:
        client.get("/api/v1/me")  # the user exists: only the key is raced
    barrier = threading.Barrier(repeats)
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def repeat(number: int) -> None:
        with cluster.client(username, web=number % 2) as client:
            barrier.wait(timeout=30)
            response = client.post(
                "/api/v1/generations", json=body, headers={"Idempotency-Key": key}
            )
        with lock:
            results.append((response.status_code, response.json()["id"]))

    threads = [threading.Thread(target=repeat, args=(n,)) for n in range(repeats)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(status for status, _ in results) == [200] * (repeats - 1) + [202]
    assert len({generation_id for _, generation_id in results}) == 1
    with cluster.client(username) as client:
        listed = client.get("/api/v1/generations").json()["results"]
        assert [g["id"] for g in listed] == [results[0][1]]
        assert wait_terminal(client, results[0][1])["status"] == "completed"


# -- live delivery after Redis comes back ---------------------------------------------------


async def arrival_times(
    cluster: Service, username: str, generation_id: str, web: int, closes: list[int]
) -> list[float]:
    """When each delta reached a WebSocket subscriber that joined from the start (joining
    again, from the start, if the server closes the connection; its close codes go to
    `closes`)."""
    url = cluster.url("/ws/v1", web=web).replace("http://", "ws://")
    for _ in range(5):
        times: list[float] = []
        try:
            async with connect(url, open_timeout=5) as ws:
                await ws.send(json.dumps({"type": "auth", "token": make_token(username)}))
                assert decoded_frame(await ws.recv())["type"] == "auth.ok"
                await ws.send(json.dumps({"type": "subscribe", "id": generation_id}))
                while True:
                    frame = decoded_frame(await asyncio.wait_for(ws.recv(), 30))
                    if frame["type"] == "delta":
                        times.append(time.monotonic())
                    if frame["type"] == "done":
                        return times
        except ConnectionClosed as closed:
            closes.append(closed.rcvd.code if closed.rcvd else 1006)
    raise AssertionError(f"no complete subscription; closes {closes}")


@pytest.mark.parametrize("fault", ["restart", "client_kill"])
def test_live_delivery_resumes_after_redis_comes_back(
    cluster: Service, redis_server: RedisServer, fault: str
) -> None:
    """Subscribers would still get everything from the replay buffer, polled every 2 s; the
    channel layer's pub/sub connection must come back so that they get it live again."""
    if fault == "restart":
        redis_server.restart(down_s=0.5)
    else:
        redis_server.kill_clients()
    wait_until(lambda: readyz(cluster)[0] == 200, timeout_s=20, interval_s=0.3)
    with cluster.client("live-again") as client:
        generation = client.post(
            "/api/v1/generations",
            # 2 s before the first token: both subscribers are in place before text flows.
            json={"prompt": unique("live [fake tokens=120 rate=40 ttft=2000]")},
        ).json()

        closes: list[int] = []

        async def both() -> list[list[float]]:
            return list(
                await asyncio.gather(
                    *(
                        arrival_times(cluster, "live-again", generation["id"], w, closes)
                        for w in (0, 1)
                    )
                )
            )

        results = asyncio.run(both())
        # The first subscribe after the fault succeeds: the layer's dropped connection is
        # replaced, not reported to the WebSocket as an internal error (1011).
        assert closes == []
        for times in results:
            # Live: deltas arrive spread over the 3 s the provider takes, a few every 100 ms
            # (about 30 distinct 100 ms slots); polled from the buffer every 2 s they would
            # come in at most 3 bursts. 6 leaves room for a loaded machine.
            spread = {int((t - times[0]) * 10) for t in times}
            assert len(spread) >= 6, sorted(spread)


def test_rest_answers_503_unavailable_while_a_dependency_is_down(
    cluster: Service, redis_server: RedisServer, database_proxy: DatabaseProxy
) -> None:
    """A storage outage is not a bug: 503 `unavailable` with Retry-After, not a 500."""
    with cluster.client("outage") as client:
        generation = client.post(
            "/api/v1/generations", json={"prompt": unique("before [fake tokens=3]")}
        ).json()

        redis_server.stop()
        try:
            # Creating takes a rate-limit token from Redis.
            refused = client.post("/api/v1/generations", json={"prompt": "during"})
        finally:
            redis_server.start()
        database_proxy.cut()
        try:
            unread = client.get(f"/api/v1/generations/{generation['id']}")
        finally:
            database_proxy.restore()

        for response in (refused, unread):
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "unavailable"
            assert response.headers["Retry-After"] == "1"
        wait_until(lambda: readyz(cluster)[0] == 200, timeout_s=20, interval_s=0.3)
        assert wait_terminal(client, generation["id"])["status"] == "completed"


# -- the WebSocket while storage is down ----------------------------------------------------


async def _frame(ws: Any, timeout_s: float = 15) -> dict[str, Any]:
    frame: dict[str, Any] = decoded_frame(await asyncio.wait_for(ws.recv(), timeout_s))
    return frame


async def _until_done(ws: Any, generation_id: str, out: list[dict[str, Any]]) -> None:
    while True:
        frame = await _frame(ws, 30)
        if frame.get("id") == generation_id and frame["type"] in ("snapshot", "delta", "reset"):
            out.append(frame)
        if frame.get("id") == generation_id and frame["type"] == "done":
            out.append(frame)
            return


def test_websocket_answers_unavailable_while_mysql_is_cut_and_streams_go_on(
    cluster: Service, database_proxy: DatabaseProxy
) -> None:
    """While the database is unreachable, frames that need it get an `unavailable` error and
    the connection stays open (never 1011); a new connection cannot authenticate and is
    closed 1013 (try again later); the stream already subscribed goes on to `done`."""
    username = "ws-db-outage"
    url = cluster.url("/ws/v1").replace("http://", "ws://")
    streaming: dict[str, str] = {}
    with cluster.client(username) as client:
        other = client.post(
            "/api/v1/generations", json={"prompt": unique("other [fake tokens=3]")}
        ).json()
        wait_terminal(client, other["id"])

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], int]:
        received: list[dict[str, Any]] = []
        replies: dict[str, dict[str, Any]] = {}
        async with connect(url, open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "auth", "token": make_token(username)}))
            assert (await _frame(ws))["type"] == "auth.ok"
            # Created just before the cut and long enough to outlast it (the worker retries its
            # checkpoints meanwhile): a stream that ended before the cut, or that had not
            # started, would prove nothing.
            await ws.send(
                json.dumps(
                    {
                        "type": "generate",
                        "prompt": unique("outage [fake tokens=120 rate=20]"),
                        "ref": "s",
                    }
                )
            )
            created = await _frame(ws)
            assert created["type"] == "created", created
            streaming["id"] = created["generation"]["id"]
            received.append(await _frame(ws))
            assert received[0]["type"] == "snapshot", received
            # The worker has claimed it and streams when the cut comes.
            received.append(await _frame(ws))
            assert received[1]["type"] == "delta", received
            database_proxy.cut()
            try:
                for ref, frame in {
                    "sub": {"type": "subscribe", "id": other["id"]},
                    "gen": {"type": "generate", "prompt": "during the outage"},
                    "cancel": {"type": "cancel", "id": other["id"]},
                    "ping": {"type": "ping"},
                }.items():
                    await ws.send(json.dumps({**frame, "ref": ref}))
                while len(replies) < 4:
                    frame = await _frame(ws)
                    if frame.get("ref") in ("sub", "gen", "cancel", "ping"):
                        replies[frame["ref"]] = frame
                    elif frame.get("id") == streaming["id"]:
                        received.append(frame)
                async with connect(url, open_timeout=5) as fresh:
                    await fresh.send(json.dumps({"type": "auth", "token": make_token(username)}))
                    replies["auth"] = await _frame(fresh)
                    with pytest.raises(ConnectionClosed) as closed:
                        await _frame(fresh)
                    assert closed.value.rcvd is not None
                    fresh_close = closed.value.rcvd.code
            finally:
                database_proxy.restore()
            # Nothing is `done` before the row holds the output, so not while the cut lasts.
            assert not [f for f in received if f["type"] == "done"], received
            await _until_done(ws, streaming["id"], received)
        return received, replies, fresh_close

    received, replies, fresh_close = asyncio.run(scenario())
    for ref in ("sub", "gen", "cancel", "auth"):
        assert replies[ref]["type"] == "error", replies
        assert replies[ref]["code"] == "unavailable", replies
        assert replies[ref]["retry_after"] == 1
    assert replies["sub"]["id"] == other["id"]
    assert replies["ping"]["type"] == "pong"
    assert fresh_close == 1013
    with cluster.client(username) as client:
        final = wait_terminal(client, streaming["id"])
        # The refused `generate` created nothing.
        listed = client.get("/api/v1/generations").json()["results"]
    assert {g["id"] for g in listed} == {streaming["id"], other["id"]}
    assert final["status"] == "completed"
    assert check_segment(received, 0) == []
    assert fold(received) == final["output"]


def test_websocket_subscription_made_while_redis_is_down_delivers_once_it_is_back(
    cluster: Service, redis_server: RedisServer
) -> None:
    """`subscribed` is the promise: a subscription whose live group or buffer cannot be
    reached yet is set up by the server once Redis is back, with no new request. A new
    connection meanwhile is told `unavailable` at its `auth` (the user's connections are
    counted in Redis) and closed 1013 (try again later)."""
    username = "ws-redis-outage"
    url = cluster.url("/ws/v1").replace("http://", "ws://")
    with cluster.client(username) as client:
        generation = client.post(
            "/api/v1/generations", json={"prompt": unique("ended [fake tokens=5]")}
        ).json()
        final = wait_terminal(client, generation["id"])

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], int]:
        received: list[dict[str, Any]] = []
        async with connect(url, open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "auth", "token": make_token(username)}))
            assert (await _frame(ws))["type"] == "auth.ok"
            redis_server.stop()
            try:
                await ws.send(json.dumps({"type": "subscribe", "id": generation["id"], "ref": 1}))
                reply = await _frame(ws)
                # A new connection cannot be counted: try again later, not 1011.
                async with connect(url, open_timeout=5) as fresh:
                    await fresh.send(
                        json.dumps({"type": "auth", "token": make_token(username), "ref": 2})
                    )
                    fresh_reply = await _frame(fresh)
                    with pytest.raises(ConnectionClosed) as closed:
                        await _frame(fresh)
                    assert closed.value.rcvd is not None
                    fresh_close = closed.value.rcvd.code
            finally:
                redis_server.start()
            await _until_done(ws, generation["id"], received)
        return received, reply, fresh_reply, fresh_close

    received, reply, fresh_reply, fresh_close = asyncio.run(scenario())
    assert fresh_reply["type"] == "error" and fresh_reply["code"] == "unavailable", fresh_reply
    assert fresh_reply["ref"] == 2
    assert fresh_close == 1013
    assert reply == {"type": "subscribed", "ref": 1, "id": generation["id"]}
    assert [frame["type"] for frame in received] == ["snapshot", "done"]
    assert fold(received) == final["output"]
    assert received[-1]["seq"] == final["seq"]
