"""One fresh service from the checkout given first, then the capacity steps given second
(comma-separated stream counts); prints one ``ROW {json}`` line per step.

    python pair.py /path/to/checkout 50,200
"""

from __future__ import annotations

import json
import os
import sys

KEPT = (
    "streams",
    "delivered_tok_s",
    "event_p50_ms",
    "event_p99_ms",
    "token_p50_ms",
    "token_p99_ms",
    "cpu_s_per_1k_tokens",
    "cpu_s",
    "tokens_received",
    "events_received",
    "lost_chars",
    "duplicated_chars",
    "streams_failed",
    "lagged",
)


def main(root: str, steps: list[int]) -> None:
    # The checkout's own bench and service code (tests.harness starts the service from it).
    sys.path.insert(0, root)
    os.chdir(root)
    from bench import capacity
    from tests.harness import FakeLLM

    fake = FakeLLM()
    system = capacity.start_system("ours", fake)
    try:
        for index, streams in enumerate(steps):
            row = capacity.run_step(
                system, streams, tokens=750, ramp_s=3.0, client_procs=2, fake=fake, seed=index
            )
            print("ROW " + json.dumps({**{k: row[k] for k in KEPT}, "root": root}), flush=True)
    finally:
        system.stop()
        fake.stop()


if __name__ == "__main__":  # the load generator's processes are spawned: they import this
    main(sys.argv[1], [int(s) for s in sys.argv[2].split(",")])
