"""How long a POST that creates a generation takes, by how long the service sat idle before
it: POSTs back to back, and 10 ms, 50 ms and 300 ms apart, two rounds.

    TEST_TIER=distributed PYTHONPATH=. .venv/bin/python \\
        bench/results/experiments/ws_setup_2026-12-06/post_gap.py

One Daphne (distributed: no worker, so that nothing but the request runs; embedded: its
in-process worker runs the one-token generations), one keep-alive client, from the root of a
checkout.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TEST_TIER", "distributed")

import httpx

from tests.harness import Service, make_token

GAPS_S = (0.0, 0.01, 0.05, 0.3)
BODY = {"prompt": "x [fake tokens=1]"}


def main() -> None:
    tier = os.environ["TEST_TIER"]
    options = {"workers": 0} if tier == "distributed" else {}
    with Service(tier=tier, **options) as service:  # type: ignore[arg-type]
        base = f"http://127.0.0.1:{service.ports[0]}"
        headers = {"Authorization": f"Bearer {make_token('gap')}"}
        with httpx.Client(base_url=base, headers=headers) as client:
            for _ in range(20):
                client.post("/api/v1/generations", json=BODY)
            p50_ms: dict[float, list[float]] = {gap: [] for gap in GAPS_S}
            for _ in range(2):
                for gap in GAPS_S:
                    walls = []
                    for _ in range(40 if gap < 0.3 else 25):
                        time.sleep(gap)
                        started = time.perf_counter()
                        client.post("/api/v1/generations", json=BODY)
                        walls.append(time.perf_counter() - started)
                    p50_ms[gap].append(round(statistics.median(walls) * 1000, 2))
                    time.sleep(0.5)
    print(tier, "POST p50 ms by the idle gap before it:", p50_ms)


if __name__ == "__main__":
    main()
