"""Daphne's CPU per REST cancel of a running generation (distributed tier).

    .venv/bin/python bench/results/experiments/cancel_reads_2026-12-06/cancel_cpu.py

Three rounds: 40 generations created (3,000 tokens at 50 tokens/s), 1.5 s of streaming, then
each cancelled in turn over REST; per round, the Daphne process's and the worker's CPU (from
/proc) per cancel and the wall time per cancel. In the first round most generations are still
in the queue (the harness's worker has few threads), so the later rounds are the running
case.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())
os.environ.setdefault("TEST_TIER", "distributed")

from bench.procstat import cpu_meter
from tests.harness import Service

CANCELS = 40


def main() -> None:
    with Service(tier="distributed") as service:
        web, worker = service.webs[0], service.workers[0]
        assert web is not None and worker is not None
        client = service.client("alice")
        for round_ in range(3):
            ids = []
            for index in range(CANCELS):
                prompt = f"q {round_} {index} [fake tokens=3000 rate=50 ttft=0]"
                ids.append(client.post("/api/v1/generations", json={"prompt": prompt}).json()["id"])
            time.sleep(1.5)
            used = cpu_meter({"web": [web.pid], "worker": [worker.pid]})
            started = time.perf_counter()
            for generation_id in ids:
                reply = client.post(f"/api/v1/generations/{generation_id}/cancel").json()
                assert reply["status"] == "cancelled", reply["status"]
            cpu = used()
            print(
                json.dumps(
                    {
                        "web_cpu_ms_per_cancel": round(cpu["web"] * 1000 / CANCELS, 2),
                        "worker_cpu_ms": round(cpu["worker"] * 1000 / CANCELS, 2),
                        "wall_ms": round((time.perf_counter() - started) * 1000 / CANCELS, 1),
                    }
                ),
                flush=True,
            )
            time.sleep(1)


if __name__ == "__main__":
    main()
