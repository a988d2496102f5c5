"""project.handler: a web process serves HTTP on a few threads that keep their database
connections between requests, and replaces one the database has dropped."""

from __future__ import annotations

import MySQLdb
import pytest

from project.handler import REQUEST_THREADS
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
        assert 1 <= len(kept) <= REQUEST_THREADS
        for _ in range(20):
            assert client.get("/api/v1/me").status_code == 200
        now = connection_ids(service)
        assert len(now) <= REQUEST_THREADS
        assert kept & now, "the connections of the first requests were not reused"

        # The database drops them (a restart, wait_timeout): the next requests are served on
        # new ones, checked before their first statement, not answered with an error.
        kill(now)
        wait_until(lambda: not connection_ids(service) & now)
        for _ in range(REQUEST_THREADS + 2):
            response = client.get("/api/v1/me")
            assert response.status_code == 200, response.text
        assert not connection_ids(service) & now
