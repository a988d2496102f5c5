"""SSE while nothing happens: a `: ping` comment keeps proxies from cutting the stream, and
the waiting streams hold no database connection."""

from __future__ import annotations

import threading
import time

import httpx
import MySQLdb
import pytest

from jobs.engine import DATABASE_THREADS
from project.handler import KEPT_CONNECTIONS
from realtime.db import READ_THREADS, WRITE_THREADS
from tests.conftest import create
from tests.harness import Service, make_token, parse_sse
from tests.tier_env import TIER


def test_idle_sse_stream_sends_ping_comments(alice: httpx.Client) -> None:
    # The provider thinks for 13 s before its first token: the stream is idle meanwhile.
    generation = create(alice, "think first [fake tokens=3 ttft=13000]")
    seen: list[str] = []
    started = time.monotonic()
    with alice.stream(
        "GET", f"/api/v1/generations/{generation['id']}/events", timeout=30
    ) as response:
        for frame in parse_sse(response.iter_lines()):
            if "comment" in frame:
                seen.append(frame["comment"])
                break
            if "data" in frame:
                seen.append(frame["data"]["type"])
    assert seen == ["snapshot", "ping"]
    # PROTOCOL §4: at least every 15 s while idle.
    assert time.monotonic() - started < 15


@pytest.mark.skipif(TIER != "distributed", reason="counts MySQL connections")
def test_waiting_sse_streams_hold_no_database_connection(service: Service) -> None:
    token = make_token("waiter")
    with httpx.Client(base_url=service.url(), headers={"Authorization": f"Bearer {token}"}) as c:
        generation = create(c, "slow start [fake tokens=3 ttft=8000]")
    # More streams than the connections the processes may keep (below), within the user's
    # MAX_SSE_STREAMS_PER_USER (1000 in the suite's environment, tests.tier_env).
    streams = 40
    kept_at_most = (
        (KEPT_CONNECTIONS + READ_THREADS + WRITE_THREADS) * len(service.ports)
        + DATABASE_THREADS
        + 1
    )
    assert kept_at_most < streams

    def follow() -> None:
        with (
            httpx.Client(base_url=service.url(), timeout=30) as client,
            client.stream(
                "GET",
                f"/api/v1/generations/{generation['id']}/events",
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            for _ in response.iter_lines():
                pass

    followers = [threading.Thread(target=follow, daemon=True) for _ in range(streams)]
    for thread in followers:
        thread.start()
    time.sleep(3)  # all 40 have their snapshot and wait for the first token

    conn = MySQLdb.connect(host="127.0.0.1", user="root", passwd="", port=3306)
    cursor = conn.cursor()
    cursor.execute(
        "SELECT COUNT(*) FROM information_schema.processlist WHERE db = %s", (service.db_name,)
    )
    (open_connections,) = cursor.fetchone()
    conn.close()
    # A worker holds at most its DATABASE_THREADS and the housekeeping thread's, a web process
    # its kept request threads', its READ_THREADS' and the WRITE_THREADS' of WebSocket
    # generates and cancels (earlier tests on this service may have used them all), however
    # many streams it holds; the waiting streams none.
    assert open_connections <= kept_at_most, open_connections
    for thread in followers:
        thread.join(30)
