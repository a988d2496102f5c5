"""Sequential requests against one Daphne (and one worker) on the tier given (default
distributed): the p50 in ms of each kind of request, 200 of each (100 SSE resumes).

    .venv/bin/python bench/results/experiments/one_hop/requests_idle.py [distributed|embedded]
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)
TIER = sys.argv[1] if len(sys.argv) > 1 else "distributed"
os.environ["TEST_TIER"] = TIER

from tests.harness import Service  # noqa: E402


def p50_ms(call: Callable[[], object], runs: int = 200) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return round(samples[runs // 2], 2)


def main() -> None:
    with Service(tier=TIER) as service, service.client("alice") as client:
        client.get("/api/v1/me")
        print("GET /healthz", p50_ms(lambda: client.get("/healthz")))
        print("GET /api/v1/me", p50_ms(lambda: client.get("/api/v1/me")))
        generation_id = client.post(
            "/api/v1/generations", json={"prompt": "[fake tokens=3 rate=1000 ttft=0] x"}
        ).json()["id"]
        time.sleep(0.5)
        print(
            "GET /api/v1/generations/{id}",
            p50_ms(lambda: client.get(f"/api/v1/generations/{generation_id}")),
        )

        def resume() -> None:
            with client.stream("GET", f"/api/v1/generations/{generation_id}/events") as events:
                for _ in events.iter_lines():
                    break

        print("SSE resume of a finished generation, to its first line", p50_ms(resume, 100))


if __name__ == "__main__":
    main()
