"""CPU per create, by process: N POSTs that create a generation, back to back, and the CPU
that Daphne, MariaDB and Redis spent on them, with the statements MariaDB ran.

    PYTHONPATH=. .venv/bin/python \\
        bench/results/experiments/round_trips_2026-12-06/create_cpu.py [N]

One Daphne, no worker (nothing but the requests runs), MySQL + Redis (tests.harness.Service),
one keep-alive client; from the root of a checkout. 50 unmeasured POSTs first. Each user
makes at most 200 generations, so that the usage read stays as short as in a day of use.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TEST_TIER", "distributed")

from bench import procstat
from tests.harness import Service

BODY = {"prompt": "x [fake tokens=1]"}
PER_USER = 200


def _statements() -> int:
    """MariaDB's count of statements run so far (its own SHOW counts as one)."""
    return int(procstat.mysql("SHOW GLOBAL STATUS LIKE 'Questions'")[0][1])


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with Service(tier="distributed", workers=0) as service:
        web = service.webs[0]
        assert web is not None
        groups = {
            "daphne": [web.pid],
            "mariadb": procstat.mysql_pids(),
            "redis": procstat.redis_pids(),
        }
        clients = [service.client(f"cpu{index}") for index in range(-(-count // PER_USER))]
        for _ in range(50):
            clients[0].post("/api/v1/generations", json=BODY)
        used = procstat.cpu_meter(groups)
        statements = _statements()
        started = time.perf_counter()
        for index in range(count):
            clients[index // PER_USER].post("/api/v1/generations", json=BODY)
        wall = time.perf_counter() - started
        statements = _statements() - statements - 1
        spent = used()
        for client in clients:
            client.close()
    result: dict[str, float] = {
        f"{name} CPU-ms per create": round(1000 * seconds / count, 3)
        for name, seconds in spent.items()
    }
    result["MariaDB statements per create"] = round(statements / count, 2)
    result["wall ms per create"] = round(1000 * wall / count, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
