"""Run a Python script with cProfile in every thread, timed by each thread's own CPU clock.

    python -m bench.threadprof OUT.pstats manage.py run_huey

cProfile alone sees only the thread that enabled it, and a worker process spends its CPU in
its generation threads; here each new thread enables a profiler of its own on its first
profiled event. The clock is ``time.thread_time``, so time a thread spends blocked on a socket
counts for nothing and the figures rank CPU. On SIGUSR1 the process writes every thread's
stats, merged, to OUT and exits at once. (Profiling makes each call slower; the shares
between functions are what to read.)
"""

from __future__ import annotations

import cProfile
import os
import pstats
import runpy
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _start_in_thread(frame: FrameType, event: str, arg: Any) -> None:
    sys.setprofile(None)
    profile = cProfile.Profile(time.thread_time)
    with _lock:
        _profiles.append(profile)
    profile.enable()


class _Snapshot:
    """What pstats loads: the stats of finished calls only. (`create_stats` would first
    close the calls still open in every thread, timing them with this thread's clock.)"""

    def __init__(self, profile: cProfile.Profile) -> None:
        profile.snapshot_stats()
        self.stats = profile.stats  # type: ignore[attr-defined]

    def create_stats(self) -> None:
        pass


def _dump(out: str) -> None:
    with _lock:
        profiles = list(_profiles)
    stats: pstats.Stats | None = None
    for profile in profiles:
        snapshot = _Snapshot(profile)
        if not snapshot.stats:
            # A thread with no call finished yet (one blocked since its first): pstats
            # refuses an empty profile.
            continue
        stats = pstats.Stats(snapshot) if stats is None else stats.add(snapshot)  # type: ignore[arg-type]
    if stats is not None:
        stats.dump_stats(out)


def main() -> None:
    out, script, *rest = sys.argv[1:]

    def dump_and_exit(_signal: int, _frame: FrameType | None) -> None:
        _dump(out)
        os._exit(0)

    signal.signal(signal.SIGUSR1, dump_and_exit)
    threading.setprofile(_start_in_thread)
    # The main thread too: Daphne's event loop runs there.
    _start_in_thread(sys._getframe(), "call", None)
    sys.argv = [script, *rest]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
