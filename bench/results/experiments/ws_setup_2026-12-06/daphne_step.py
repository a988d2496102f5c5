"""One capacity step of the service (as bench.capacity runs `ours`: 2 Daphne, 2 run_huey,
MySQL + Redis), printing the step's row and the Daphne processes' CPU second by second.

    PYTHONPATH=. .venv/bin/python bench/results/experiments/ws_setup_2026-12-06/daphne_step.py \
        STREAMS TOKENS [SSE_SHARE]

Run from the root of a checkout: the service is that checkout's.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TEST_TIER", "distributed")

from bench import capacity, procstat
from tests.harness import FakeLLM


def user_and_system_s(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def main() -> None:
    streams, tokens = int(sys.argv[1]), int(sys.argv[2])
    sse_share = float(sys.argv[3]) if len(sys.argv) > 3 else None
    fake = FakeLLM()
    system = capacity.start_system("ours", fake)
    try:
        daphnes = system.cpu_groups["daphne"]
        timeline: list[tuple[int, float]] = []
        stop = threading.Event()

        def watch() -> None:
            started = time.time()
            before = sum(procstat.cpu_s(pid) for pid in daphnes)
            while not stop.wait(1.0):
                now = sum(procstat.cpu_s(pid) for pid in daphnes)
                timeline.append((round(time.time() - started), round(now - before, 3)))
                before = now

        threading.Thread(target=watch, daemon=True).start()
        split_before = {pid: user_and_system_s(pid) for pid in daphnes}
        row = capacity.run_step(
            system,
            streams,
            tokens=tokens,
            ramp_s=3.0,
            client_procs=2,
            fake=fake,
            sse_share=sse_share,
        )
        stop.set()
        keys = ("streams", "event_p99_ms", "tokens_received", "events_received", "cpu_s")
        out = {key: row[key] for key in keys}
        out["lost_chars"] = row["lost_chars"]
        out["mismatched_streams"] = row["mismatched_streams"]
        out["daphne_user_system_s"] = [
            [
                round(a - b, 2)
                for a, b in zip(user_and_system_s(pid), split_before[pid], strict=True)
            ]
            for pid in daphnes
        ]
        out["daphne_cpu_s_by_second"] = timeline
        print(json.dumps(out), flush=True)
    finally:
        system.stop()
        fake.stop()


if __name__ == "__main__":
    main()
