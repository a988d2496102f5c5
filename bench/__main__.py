"""Runs every benchmark and assembles bench/results/REPORT.md.

    .venv/bin/python -m bench [--quick] [--only capacity,ttft_overhead] [--results DIR]

Each benchmark is a module of this package that writes ``<results>/<name>.md`` (and its own
.json and plots). A module is run through ``run(results_dir, quick)`` when it defines it;
otherwise through ``main()``/``main(argv)``, with its standard output kept as ``<name>.md``
(those run only in the full run: they have no quick mode). A module that is not there yet is
listed as missing. Starts processes as tests/harness.py does, on MySQL + Redis.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

os.environ.setdefault("TEST_TIER", "distributed")

from bench import procstat

ROOT = Path(__file__).resolve().parent.parent
# In this order: the capacity run first, while the machine is freshest.
MODULES = [
    "capacity",
    "profile_worker",
    "profile_daphne",
    "provider_read",
    "ttft_overhead",
    "resume",
    "idle_connections",
]


def run_module(name: str, results_dir: Path, quick: bool) -> tuple[str, bool]:
    """Runs one benchmark in a process of its own: (how it went, for the report; whether it
    ran to its end).

    A process of its own: the TTFT burst's 50 clients and the resume runs measure from
    threads of the benchmark's process, and what the benchmarks before them had left in one
    shared process (Django, the SDKs, the capacity run's results) made its garbage
    collections long enough to show in their figures: the distributed burst's p50 was 174 ms
    after bench.provider_read in the same process, 12.7 ms alone (docs/scaling.md, "The
    benchmarks' own processes")."""
    with tempfile.TemporaryDirectory() as scratch:
        outcome = Path(scratch) / "outcome"
        command = [sys.executable, "-m", "bench", "--one", name, "--outcome", str(outcome)]
        command += ["--results", str(results_dir), *(["--quick"] if quick else [])]
        child = subprocess.Popen(command, cwd=ROOT)
        try:
            code = child.wait()
        except BaseException:
            # Stopped from outside: the benchmark's own `finally` blocks stop what it started.
            child.terminate()
            child.wait()
            raise
        said = outcome.read_text().strip() if outcome.exists() else ""
    return said or f"FAILED: exited with status {code}", code == 0 and bool(said)


def _run_here(name: str, results_dir: Path, quick: bool) -> str:
    """Runs one benchmark in this process; returns how it went, for the report."""
    try:
        module: Any = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as error:
        if error.name == f"bench.{name}":
            return "missing (no such module yet)"
        raise
    started = time.monotonic()
    if hasattr(module, "run"):
        module.run(results_dir, quick)
    elif hasattr(module, "main"):
        if quick:
            return "skipped in --quick (it has no quick mode)"
        output = io.StringIO()
        saved = sys.argv
        # No arguments: main() parses the empty sys.argv[1:] (a main(argv) defaults to it).
        sys.argv = [f"bench.{name}"]
        try:
            with contextlib.redirect_stdout(output):
                module.main()
        finally:
            sys.argv = saved
        target = results_dir / f"{name}.md"
        if not target.exists() or target.stat().st_mtime < time.time() - (
            time.monotonic() - started
        ):
            target.write_text(f"# {name}\n\n```\n{output.getvalue().strip()}\n```\n")
    else:
        return "not runnable (no run() or main())"
    return f"ran in {time.monotonic() - started:.0f} s"


def assemble(
    results_dir: Path,
    outcomes: dict[str, str],
    command: str,
    started: datetime.datetime,
    load_before: str,
    uptime_before: str,
) -> None:
    lines = [
        "# Benchmark report",
        "",
        f"Command: `{command}` (from the repository root). Started "
        f"{started:%Y-%m-%d %H:%M} UTC, finished "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in procstat.machine().items()]
    lines += ["", "## Versions", ""]
    lines += [f"- {key}: {value}" for key, value in procstat.versions().items()]
    lines += [
        "",
        "## Machine load",
        "",
        "The machine is shared: other test runs used it during this run. Load average "
        f"(1, 5, 15 min) before: {load_before}; after: {procstat.loadavg()}.",
        f"`uptime` before: `{uptime_before}`; after: `{procstat.uptime()}`.",
        "",
        "## Benchmarks",
        "",
    ]
    lines += [f"- `{name}`: {outcome}" for name, outcome in outcomes.items()]
    for name in outcomes:
        path = results_dir / f"{name}.md"
        if path.exists():
            body = path.read_text().strip()
            # Each module's headings move one level down under the report's.
            body = "\n".join(
                "#" + line if line.startswith("#") else line for line in body.splitlines()
            )
            lines += ["", body]
    (results_dir / "REPORT.md").write_text("\n".join(lines) + "\n")


def _exit_on_signal(number: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + number)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # A stop by SIGTERM (or SIGINT, which a background job ignores) unwinds through every
    # `finally`: the processes a benchmark started are stopped and MariaDB's settings restored.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds long: the smoke run")
    parser.add_argument("--only", help="comma-separated module names")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    # One benchmark in this process, how it went written to --outcome (run_module's child).
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--outcome", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return _run_one(args.one, args.results, args.quick, args.outcome)
    names = args.only.split(",") if args.only else MODULES
    args.results.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC)
    load_before, uptime_before = procstat.loadavg(), procstat.uptime()
    outcomes: dict[str, str] = {}
    failed = False
    for name in names:
        print(f"== bench.{name}", flush=True)
        module_started = time.monotonic()
        try:
            outcomes[name], ran = run_module(name, args.results, args.quick)
        except SystemExit as stop:
            # Stopped from outside: what ran so far still makes a report.
            failed = True
            outcomes[name] = (
                f"stopped by signal {stop.code} after {time.monotonic() - module_started:.0f} s"
                " (its section below, if any, is from an earlier run)"
            )
            break
        if not ran:
            failed = True
            outcomes[name] += " (its section below, if any, is from an earlier run)"
        print(f"== bench.{name}: {outcomes[name]}", flush=True)
    command = " ".join([".venv/bin/python -m bench", *argv])
    assemble(args.results, outcomes, command, started, load_before, uptime_before)
    print(f"report: {args.results / 'REPORT.md'}")
    return 1 if failed else 0


def _run_one(name: str, results_dir: Path, quick: bool, outcome: Path | None) -> int:
    """run_module's child: one benchmark, how it went written to `outcome`."""
    code = 0
    try:
        said = _run_here(name, results_dir, quick)
    except SystemExit as stop:
        code, said = 1, f"stopped by signal {stop.code}"
    except Exception:
        traceback.print_exc()
        code, said = 1, "FAILED: " + traceback.format_exc().strip().splitlines()[-1]
    if outcome is not None:
        outcome.write_text(said)
    return code


if __name__ == "__main__":
    sys.exit(main())
