"""Where the event-latency tail of one step comes from: the latencies by the 100 ms in which
they were received (needs a load generator whose outcomes carry `event_at`, README.md).

    python tail.py /path/to/checkout 200
"""

from __future__ import annotations

import os
import sys
import time


def main(root: str, streams: int) -> None:
    sys.path.insert(0, root)
    os.chdir(root)
    from bench import capacity, loadgen
    from tests.harness import FakeLLM

    fake = FakeLLM()
    system = capacity.start_system("ours", fake)
    try:
        plan = capacity.make_plan(
            system.name, system.ports, streams, 750, 3.0, 0, cuts=0, sse_share=0.2
        )
        t0 = time.time()
        print("t0", t0)
        outcomes = loadgen.run(plan, 2)
    finally:
        system.stop()
        fake.stop()
    pairs = sorted(
        (at - t0, lag)
        for outcome in outcomes
        for at, lag in zip(outcome["event_at"], outcome["event_latency_s"], strict=True)
    )
    lags = sorted(lag for _, lag in pairs)
    print(
        "n", len(lags), "p50", lags[len(lags) // 2] * 1e3, "p99", lags[int(len(lags) * 0.99)] * 1e3
    )
    bins: dict[int, list[float]] = {}
    for at, lag in pairs:
        bins.setdefault(int(at * 10), []).append(lag)
    for tenth in sorted(bins):
        values = bins[tenth]
        worst = max(values) * 1e3
        if worst > 50:
            late = sum(1 for value in values if value > 0.05)
            print(f"t={tenth / 10:5.1f}s n={len(values):4d} max={worst:7.1f} >50ms={late}")


if __name__ == "__main__":  # the load generator's processes are spawned: they import this
    main(sys.argv[1], int(sys.argv[2]))
