"""Fixtures of the fault-injection suite: its own Redis, a cuttable path to MySQL, the report.

The bounded form (the default, part of every test run) gives each fault FAULT_SECONDS = 10
seconds of clients streaming; ``FAULTS_FULL=1`` gives each 120 s (see docs/faults.md).
Each run rewrites its table in docs/faults.md.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.infra import DatabaseProxy, RedisServer
from tests.faults.storm import MARKDOWN_HEADER, FaultRow
from tests.harness import ROOT
from tests.tier_env import TIER

FULL = os.environ.get("FAULTS_FULL", "") == "1"
FAULT_SECONDS = float(os.environ.get("FAULT_SECONDS", "120" if FULL else "10"))
FAULT_CLIENTS = int(os.environ.get("FAULT_CLIENTS", "24" if FULL else "20"))
REPORT = Path(ROOT) / "docs" / "faults.md"

distributed_only = pytest.mark.skipif(
    TIER != "distributed",
    reason="faults need real processes on MySQL + Redis (the distributed tier)",
)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def database_proxy() -> Iterator[DatabaseProxy]:
    proxy = DatabaseProxy()
    yield proxy
    proxy.close()


@pytest.fixture(scope="session")
def fault_report() -> Iterator[list[FaultRow]]:
    rows: list[FaultRow] = []
    yield rows
    if rows:
        write_report(rows)


def write_report(rows: list[FaultRow]) -> None:
    """Replace this mode's table in docs/faults.md (between its two markers)."""
    mode = "full" if FULL else "bounded"
    start, end = f"<!-- faults:{mode}:start -->", f"<!-- faults:{mode}:end -->"
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    notes = [f"- {row.fault}: {note}" for row in rows for note in row.notes]
    table = "\n".join(
        [
            start,
            f"Last {mode} run: {when}; {FAULT_CLIENTS} clients, {FAULT_SECONDS:g} s of faults "
            f"each, {os.cpu_count()} CPUs.",
            "",
            MARKDOWN_HEADER,
            *(row.markdown() for row in rows),
            *(["", *notes] if notes else []),
            end,
        ]
    )
    text = REPORT.read_text() if REPORT.exists() else ""
    if start in text and end in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: table, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + table + "\n"
    REPORT.write_text(text)
