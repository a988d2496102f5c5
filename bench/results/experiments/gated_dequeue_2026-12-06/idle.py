"""The service as bench/capacity.py runs it (2 Daphne, 2 run_huey workers of HUEY_WORKERS
threads each, MySQL + Redis), started from the checkout given and left idle: CPU-ms per second
of each process group over 30 s.

    HW=260 python idle.py /path/to/checkout
"""

from __future__ import annotations

import os
import sys
import time


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(root: str) -> None:
    sys.path.insert(0, root)
    os.chdir(root)
    os.environ.setdefault("TEST_TIER", "distributed")
    from bench import capacity
    from tests.harness import FakeLLM

    capacity.HUEY_WORKERS = int(os.environ.get("HW", "260"))
    fake = FakeLLM()
    try:
        system = capacity.start_system("ours", fake)
        try:
            time.sleep(5)
            groups = system.cpu_groups
            before = {g: sum(cpu_s(p) for p in pids) for g, pids in groups.items()}
            time.sleep(30)
            after = {g: sum(cpu_s(p) for p in pids) for g, pids in groups.items()}
            used = {g: round((after[g] - before[g]) / 30 * 1000, 1) for g in groups}
            print(used, "CPU-ms per s idle", flush=True)
        finally:
            system.stop()
    finally:
        fake.stop()


if __name__ == "__main__":
    main(sys.argv[1])
