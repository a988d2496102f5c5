"""Where a Daphne process's CPU goes while it streams: a CPU profile of every thread under load.

    .venv/bin/python -m bench.profile_daphne [--streams 50] [--tokens 750] [--quick]

The service as in bench/capacity.py (2 ``run_huey`` workers, MySQL + Redis) behind one Daphne
process run under bench/threadprof.py, so that every stream goes through it; the load
generator runs a step of concurrent streams (80% WebSocket, 20% SSE), then the profiled
process writes its stats. Writes ``profile_daphne.md``: the cumulative CPU of the stages an
event passes through and of the per-stream work, and the functions with the most own CPU.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TEST_TIER", "distributed")

from bench import capacity, loadgen
from bench.profile_worker import SERVICE_ENV, markdown, step_options, write_stats
from tests.harness import DAPHNE, PYTHON, ROOT, Service, wait_until
from tests.tier_env import RUN_DIR

NAME = "profile_daphne"
# The stages of the live path and the per-stream work, by the function that enters each.
STAGES = [
    (
        "channel layer's read loop, all of it (the live messages' Redis replies read and "
        "parsed, and what the hub does with them)",
        "realtime/layer.py",
        "_do_receiving",
    ),
    ("of which: hub -> subscriber sessions (realtime/live.py)", "live.py", "dispatch"),
    ("of which: WebSocket frames out (consumer -> socket)", "consumers.py", "emit|emit_now"),
    (
        "SSE events out (realtime/sse.py: to the response's writer, or queued for its stream)",
        "realtime/sse.py",
        "emit_now",
    ),
    ("SSE chunks through Django's streamed response", "handlers/asgi.py", "send_response"),
    (
        "request and database threads (HTTP requests, auth, creates, row reads)",
        "concurrent/futures/thread.py",
        "run",
    ),
    ("process start-up (imports, Django's setup)", "daphne/utils.py", "import_by_path"),
]


class _ProfiledService(Service):
    """Its one Daphne process runs under bench/threadprof.py, writing `out` on SIGUSR1."""

    def __init__(self, out: Path, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.out = out

    def start_web(self, index: int = 0, *, wait: bool = True) -> None:
        port = self.ports[index]
        command = [DAPHNE, "-b", "127.0.0.1", "-p", str(port), "project.asgi:application"]
        self.webs[index] = self._spawn(
            f"web{index}", [PYTHON, "-m", "bench.threadprof", str(self.out), *command]
        )
        if wait:
            wait_until(lambda: self._healthy(port), timeout_s=30)


def run(results_dir: Path, quick: bool = False, argv: list[str] | None = None) -> None:
    streams, tokens, quick = step_options(__doc__, argv, quick, streams=50, tokens=750)
    results_dir.mkdir(parents=True, exist_ok=True)
    out = Path(RUN_DIR) / f"daphne-profile-{os.getpid()}.pstats"
    with _ProfiledService(out, webs=1, workers=2, tier="distributed", env=SERVICE_ENV) as service:
        time.sleep(2)
        plan = capacity.make_plan("ours", service.ports, streams, tokens, 3.0, seed=5)
        outcomes = loadgen.run(plan, 1 if quick else 2)
        web = service.webs[0]
        assert web is not None
        write_stats(web, out)
    delivered = sum(o["tokens"] for o in outcomes)
    text = markdown(
        out,
        STAGES,
        title="Daphne CPU profile",
        what=(
            f"The one Daphne process of the service (2 `run_huey` workers), under "
            f"bench/threadprof.py (cProfile in every thread, the event loop's included, timed "
            f"by `time.thread_time`), while {streams} streams of {tokens} tokens at 50 tokens/s "
            f"ran through it, 80% WebSocket and 20% SSE ({delivered} tokens delivered in all)"
        ),
    )
    (results_dir / f"{NAME}.md").write_text(text)


def main() -> None:
    run(Path(ROOT) / "bench" / "results", argv=sys.argv[1:])


if __name__ == "__main__":
    main()
