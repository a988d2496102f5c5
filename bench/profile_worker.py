"""Where a worker process's CPU goes while it streams: a per-thread CPU profile under load.

    .venv/bin/python -m bench.profile_worker [--streams 100] [--tokens 300] [--quick]

The service as in bench/capacity.py (2 Daphne, MySQL + Redis), with one ordinary
``run_huey`` worker and one under bench/threadprof.py; the load generator runs a step of
concurrent streams, then the profiled worker writes its stats. Writes
``profile_worker.md`` (the functions with the most own CPU, and the cumulative CPU of the
stages a token passes through).
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TEST_TIER", "distributed")

from bench import capacity, loadgen
from tests.harness import PYTHON, ROOT, Service, spawn, wait_until

NAME = "profile_worker"
# The stages a token passes through in a worker, by the function that enters each.
STAGES = [
    # Cumulative: a stage counts every call of its function, with what that call called.
    ("provider stream: read and parse (jobs/providers)", "openai_compatible.py", "astream"),
    (
        "engine: log appends and live publishes, one script call per tick (Redis)",
        "engine.py",
        "_send_appends",
    ),
    (
        "engine: checkpoints and heartbeats, one statement per tick (MySQL)",
        "writer.py",
        "generation_checkpoint_many",
    ),
    ("Huey: idle threads asking for a task (BRPOP)", "storage.py", "dequeue"),
    ("Huey: worker threads' start-up hook (once each)", "tasks.py", "start_housekeeping"),
]


# The service's settings, as bench/capacity.py runs it.
SERVICE_ENV = {"HUEY_WORKERS": str(capacity.HUEY_WORKERS), "REDIS_MAX_CONNECTIONS": "1000"}


def step_options(
    doc: str, argv: list[str] | None, quick: bool, *, streams: int, tokens: int
) -> tuple[int, int, bool]:
    """(streams, tokens, quick) of the step to profile: the command line's, else the defaults
    given; a quick run's are 5 streams of 100 tokens."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=streams)
    parser.add_argument("--tokens", type=int, default=tokens)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv or [])
    quick = quick or args.quick
    return (5, 100, True) if quick else (args.streams, args.tokens, False)


def write_stats(profiled: subprocess.Popen[bytes], out: Path) -> None:
    """Have a process run under bench/threadprof.py write its stats to `out` (it exits)."""
    profiled.send_signal(signal.SIGUSR1)
    profiled.wait(60)
    wait_until(out.exists, timeout_s=10)


def run(results_dir: Path, quick: bool = False, argv: list[str] | None = None) -> None:
    streams, tokens, quick = step_options(__doc__, argv, quick, streams=100, tokens=300)
    results_dir.mkdir(parents=True, exist_ok=True)
    with Service(webs=2, workers=1, tier="distributed", env=SERVICE_ENV) as service:
        out = service.dir / "worker-profile.pstats"
        log = open(service.dir / "profiled-worker.log", "ab")  # noqa: SIM115
        profiled = spawn(
            [PYTHON, "-m", "bench.threadprof", str(out), "manage.py", "run_huey"],
            cwd=ROOT,
            env=service.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(3)
            plan = capacity.make_plan("ours", service.ports, streams, tokens, 2.0, seed=5)
            outcomes = loadgen.run(plan, 1 if quick else 2)
            write_stats(profiled, out)
            delivered = sum(o["tokens"] for o in outcomes)
            text = markdown(
                out,
                STAGES,
                title="Worker CPU profile",
                what=(
                    "One of two `run_huey` processes under bench/threadprof.py (cProfile in "
                    "every thread, timed by `time.thread_time`), while "
                    f"{streams} streams of {tokens} tokens at 50 tokens/s ran through the "
                    f"service ({delivered} tokens delivered in all)"
                ),
            )
        finally:
            service.stop_process(profiled)
    (results_dir / f"{NAME}.md").write_text(text)


def markdown(path: Path, stages: list[tuple[str, str, str]], *, title: str, what: str) -> str:
    """The profile at `path`: the cumulative CPU of each of `stages` (title, the end of its
    function's file name, the function or functions of that file, `|` between them), and the
    functions with the most own CPU."""
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values())
    lines = [
        f"# {title}",
        "",
        f"{what}. Profiled CPU in this process: {total:.1f} s (profiling itself inflates "
        "every call, the more so the more calls: read the shares).",
        "",
        "| stage | cumulative CPU-s | share |",
        "|---|---|---|",
    ]
    for stage, filename, functions in stages:
        names = functions.split("|")
        cumulative = sum(
            entry[3]
            for (file, _line, name), entry in raw.items()
            if file.endswith(filename) and name in names
        )
        lines.append(f"| {stage} | {cumulative:.1f} | {cumulative / max(total, 1e-9):.0%} |")
    buffer = io.StringIO()
    stats.stream = buffer  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(25)
    lines += ["", "Top functions by own CPU:", "", "```", buffer.getvalue().strip(), "```", ""]
    return "\n".join(lines)


def main() -> None:
    run(Path(ROOT) / "bench" / "results", argv=sys.argv[1:])


if __name__ == "__main__":
    main()
