"""Requests one at a time before and after a burst: new MySQL connections, Daphne's and
MariaDB's CPU and the wall time per request (distributed tier, one Daphne process).

    .venv/bin/python bench/results/experiments/kept_threads_2026-12-06/after_burst.py

200 sequential `GET /api/v1/generations/{id}` before any burst, right after 40 clients sent 5
each at once, and 2 s later. New connections are MariaDB's `Connections` counter (server-wide:
run it while nothing else uses the server).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.getcwd())

import MySQLdb

from bench.procstat import cpu_meter, mysql_pids
from tests.harness import Service

REQUESTS = 200


def main() -> None:
    # One connection kept for the counter (bench.procstat.mysql would connect per read and
    # count itself).
    server = MySQLdb.connect(host="127.0.0.1", user="root", passwd="", port=3306)

    def connections() -> int:
        cursor = server.cursor()
        cursor.execute("SHOW GLOBAL STATUS LIKE 'Connections'")
        return int(cursor.fetchone()[1])

    with Service(tier="distributed") as service:
        web = service.webs[0]
        assert web is not None
        client = service.client("alice")
        path = (
            "/api/v1/generations/"
            + client.post("/api/v1/generations", json={"prompt": "x [fake tokens=2]"}).json()["id"]
        )
        time.sleep(1)

        def one_at_a_time(label: str) -> None:
            opened = connections()
            used = cpu_meter({"web": [web.pid], "mariadb": mysql_pids()})
            started = time.perf_counter()
            for _ in range(REQUESTS):
                client.get(path)
            cpu = used()
            print(
                f"{label}: new MySQL connections {connections() - opened} of {REQUESTS}"
                f" requests; per request Daphne CPU "
                f"{cpu['web'] * 1000 / REQUESTS:.2f} ms, MariaDB "
                f"{cpu['mariadb'] * 1000 / REQUESTS:.2f} ms, wall "
                f"{(time.perf_counter() - started) * 1000 / REQUESTS:.2f} ms",
                flush=True,
            )

        one_at_a_time("before any burst")
        burst = [service.client("alice") for _ in range(40)]
        with ThreadPoolExecutor(len(burst)) as pool:
            list(pool.map(lambda each: [each.get(path) for _ in range(5)], burst))
        one_at_a_time("right after a burst of 40 clients")
        time.sleep(2)
        one_at_a_time("2 s later")


if __name__ == "__main__":
    main()
