"""Full garbage collections in the benchmark's own process while bench.ttft_overhead runs,
after another benchmark ran in the same process (as `python -m bench` ran them until
then) or alone:

    .venv/bin/python bench/results/experiments/bench_processes_2026-12-06/gc_in_driver.py \
        provider_read|none
"""

import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TEST_TIER", "distributed")
sys.path.insert(0, ".")

from bench.__main__ import _run_here

pauses: list[tuple[int, float]] = []
t0 = [0.0]


def cb(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        t0[0] = time.perf_counter()
    else:
        pauses.append((info["generation"], (time.perf_counter() - t0[0]) * 1000))


RESULTS = Path(tempfile.mkdtemp())
first = sys.argv[1]
if first != "none":
    _run_here(first, RESULTS, False)
print("objects tracked", len(gc.get_objects()))
gc.callbacks.append(cb)
_run_here("ttft_overhead", RESULTS, False)
g2 = [p for g, p in pauses if g == 2]
print(
    "collections",
    len(pauses),
    "gen2",
    len(g2),
    "gen2 ms max",
    round(max(g2, default=0), 1),
    "sum",
    round(sum(g2), 1),
    "all ms sum",
    round(sum(p for _, p in pauses), 1),
)
