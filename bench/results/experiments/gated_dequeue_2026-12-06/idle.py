"""The service as bench/capacity.py runs it (2 Daphne, 2 run_huey workers of HUEY_WORKERS
threads each, MySQL + Redis), started from the checkout given and left idle: CPU-ms per second
of each process group over 30 s.

    HW=260 python idle.py /path/to/checkout
"""

from __future__ import annotations

import os
import sys
import time


def main(root: str) -> None:
    sys.path.insert(0, root)
    os.chdir(root)
    os.environ.setdefault("TEST_TIER", "distributed")
    from bench import capacity
    from bench.procstat import cpu_meter
    from tests.harness import FakeLLM

    capacity.HUEY_WORKERS = int(os.environ.get("HW", "260"))
    fake = FakeLLM()
    try:
        system = capacity.start_system("ours", fake)
        try:
            time.sleep(5)
            meter = cpu_meter(system.cpu_groups)
            time.sleep(30)
            used = {g: round(cpu_s / 30 * 1000, 1) for g, cpu_s in meter().items()}
            print(used, "CPU-ms per s idle", flush=True)
        finally:
            system.stop()
    finally:
        fake.stop()


if __name__ == "__main__":
    main(sys.argv[1])
