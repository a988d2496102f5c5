"""project.handler: a web process serves HTTP on a few threads that keep their database
connections between requests, and replaces one the database has dropped."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import MySQLdb
import pytest

from project.handler import KEPT_CONNECTIONS, REQUEST_THREADS
from tests.conftest import create
from tests.faults.infra import DatabaseProxy
from tests.harness import Service, wait_until
from tests.tier_env import TIER

pytestmark = pytest.mark.skipif(TIER != "distributed", reason="reads MySQL's process list")


def connection_ids(service: Service) -> set[int]:
    server = MySQLdb.connect(host="127.0.0.1", user="root", passwd="", port=3306)
    try:
        cursor = server.cursor()
        cursor.execute(
            "SELECT id FROM information_schema.processlist WHERE db = %s", (service.db_name,)
        )
        return {row[0] for row in cursor.fetchall()}
    finally:
        server.close()


def kill(ids: set[int]) -> None:
    server = MySQLdb.connect(host="127.0.0.1", user="root", passwd="", port=3306)
    try:
        for connection_id in ids:
            server.cursor().execute(f"KILL {int(connection_id)}")
    finally:
        server.close()


def test_requests_reuse_kept_connections_and_survive_their_loss() -> None:
    # No worker: every connection of the service's database is the web process's.
    with Service(workers=0) as service, service.client("keeper") as client:
        for _ in range(5):
            assert client.get("/api/v1/me").status_code == 200
        kept = connection_ids(service)
        # Each request opened its own connection and closed it before (none left here).
        assert 1 <= len(kept) <= KEPT_CONNECTIONS
        for _ in range(20):
            assert client.get("/api/v1/me").status_code == 200
        now = connection_ids(service)
        assert len(now) <= KEPT_CONNECTIONS
        assert kept & now, "the connections of the first requests were not reused"

        # The database drops them (a restart, wait_timeout): the next requests are served on
        # new ones, checked before their first statement, not answered with an error.
        kill(now)
        wait_until(lambda: not connection_ids(service) & now)
        for _ in range(KEPT_CONNECTIONS + 2):
            response = client.get("/api/v1/me")
            assert response.status_code == 200, response.text
        assert not connection_ids(service) & now


def test_after_a_burst_one_request_at_a_time_reuses_the_kept_connections() -> None:
    """A burst puts requests on the threads that do not keep their connections; once it is
    over, requests one at a time go to the threads that do, instead of opening a connection
    each on whichever thread of the burst is free."""
    database = DatabaseProxy()
    try:
        with (
            Service(workers=0, database_address=database.address) as service,
            service.client("keeper") as client,
        ):
            burst = [service.client("keeper") for _ in range(REQUEST_THREADS)]
            try:
                at_start = database.accepted()
                with ThreadPoolExecutor(len(burst)) as pool:
                    replies = pool.map(
                        lambda each: [each.get("/api/v1/me").status_code for _ in range(5)],
                        burst,
                    )
                    assert all(status == 200 for statuses in replies for status in statuses)
                # The burst went past the threads that keep their connections.
                assert database.accepted() - at_start > KEPT_CONNECTIONS
            finally:
                for each in burst:
                    each.close()
            for _ in range(2 * KEPT_CONNECTIONS):
                assert client.get("/api/v1/me").status_code == 200
            before = database.accepted()
            for _ in range(40):
                assert client.get("/api/v1/me").status_code == 200
            # At most one new connection per keeping thread that had none yet.
            assert database.accepted() - before <= KEPT_CONNECTIONS
    finally:
        database.close()


def test_requests_that_wait_do_not_hold_up_the_others() -> None:
    """A REST cancel waits up to 2 s for the worker to stop (jobs.cancel); more of them than
    the kept connections' threads at once must not queue every other request behind them."""
    waiting = KEPT_CONNECTIONS + 4
    with Service() as service:
        clients = [service.client(f"waiter{index}") for index in range(waiting)]
        try:
            ids = [create(client, "long [fake tokens=2000 rate=20]")["id"] for client in clients]
            for client, generation_id in zip(clients, ids, strict=True):
                wait_until(
                    lambda c=client, g=generation_id: (
                        c.get(f"/api/v1/generations/{g}").json()["status"] == "running"
                    )
                )
            # A frozen worker never sees the flag: each cancel waits its whole 2 s.
            worker = service.workers[0]
            assert worker is not None
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                with ThreadPoolExecutor(waiting) as pool:
                    cancels = [
                        pool.submit(client.post, f"/api/v1/generations/{generation_id}/cancel")
                        for client, generation_id in zip(clients, ids, strict=True)
                    ]
                    time.sleep(0.5)  # every cancel is waiting now
                    started = time.monotonic()
                    assert clients[0].get("/api/v1/me").status_code == 200
                    answered_in_s = time.monotonic() - started
                    assert all(not cancel.done() for cancel in cancels)
                    for cancel in cancels:
                        assert cancel.result().status_code == 200
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            assert answered_in_s < 1.0, answered_in_s
        finally:
            for client in clients:
                client.close()
