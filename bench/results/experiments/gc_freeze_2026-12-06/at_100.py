"""Ours and the minimal streams server at 100 streams: each started fresh, warmed up with 10
short streams, then three 100-stream steps; two rounds in alternating order. Prints one
``ROW <system> {json}`` line per step.

    python at_100.py /path/to/checkout
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
    "cpu_s_per_1k_tokens",
    "cpu_s",
    "lagged",
)


def main(root: str) -> None:
    sys.path.insert(0, root)
    os.chdir(root)
    from bench import capacity
    from tests.harness import FakeLLM

    fake = FakeLLM()
    try:
        for order in (("ours", "streams"), ("streams", "ours")):
            for name in order:
                system = capacity.start_system(name, fake)
                try:
                    capacity.run_step(system, 10, tokens=50, ramp_s=1.0, client_procs=1, fake=fake)
                    for seed in range(3):
                        row = capacity.run_step(
                            system,
                            100,
                            tokens=750,
                            ramp_s=3.0,
                            client_procs=2,
                            fake=fake,
                            seed=seed,
                        )
                        print("ROW", name, json.dumps({k: row[k] for k in KEPT}), flush=True)
                finally:
                    system.stop()
    finally:
        fake.stop()


if __name__ == "__main__":  # the load generator's processes are spawned: they import this
    main(sys.argv[1])
