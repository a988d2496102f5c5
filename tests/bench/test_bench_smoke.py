"""The benchmark's smoke run: `python -m bench --quick` keeps working and stays correct.

Seconds long (5 streams of 3 s on each system, the reconnect and database runs at their
smallest). Asserts only what must hold whatever the machine's speed: every stream checked,
nothing lost or doubled where the design promises it, the report and plots written. Never a
timing. Needs MySQL + Redis, so it runs on the distributed tier only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT
from tests.tier_env import TIER

pytestmark = pytest.mark.skipif(
    TIER != "distributed", reason="the benchmark runs against MySQL + Redis"
)


def test_quick_capacity_run_loses_nothing_and_writes_its_report(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "capacity",
            "--results",
            str(tmp_path),
        ],
        cwd=ROOT,
        env={**os.environ, "TEST_TIER": "distributed"},
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    data = json.loads((tmp_path / "capacity.json").read_text())
    # The minimal server's step right after ours at the same count, the others after them.
    assert [row["system"] for row in data["steps"]] == ["ours", "streams", "embedded", "naive"]
    steps = {row["system"]: row for row in data["steps"]}
    assert set(steps) == {"ours", "embedded", "streams", "naive"}
    for system in ("ours", "embedded", "streams", "naive"):
        row = steps[system]
        assert row["streams_failed"] == 0, row["errors"]
        assert row["streams_checked"] == row["streams"] == 5
        assert row["tokens_received"] == 5 * row["tokens_per_stream"]
    # The service and the streams server keep everything; the naive one promises nothing.
    for system in ("ours", "embedded", "streams"):
        assert steps[system]["lost_chars"] == steps[system]["duplicated_chars"] == 0
        assert steps[system]["mismatched_streams"] == 0
    reconnects = {row["system"]: row for row in data["reconnects"]}
    ours = reconnects["ours"]
    assert ours["reconnects"] == 3 * ours["streams"]
    assert ours["streams_failed"] == 0
    assert ours["lost_chars"] == ours["duplicated_chars"] == 0
    # One UPDATE per token, counted per table on the system's own database.
    per_token = data["write_per_token"]
    changed = per_token["db"]["rows_changed.generation"]
    assert changed >= per_token["streams"] * per_token["tokens_per_stream"]

    # The service's metrics: its web process's, then each worker's own port, where the
    # worker-side counters are.
    sections: dict[str, list[str]] = {}
    for line in (tmp_path / "metrics_after_capacity.txt").read_text().splitlines():
        if line.startswith("# http://"):
            url = line[2:]
            sections[url] = []
        else:
            sections[url].append(line)
    _web, *workers = sections.values()
    assert len(workers) == 2
    done = 'llm_events_published_total{type="done"} '
    finished = sum(float(line[len(done) :]) for w in workers for line in w if line.startswith(done))
    assert finished >= steps["ours"]["streams"]

    for name in ("capacity.md", "capacity_p99.png", "capacity_cpu.png", "REPORT.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    report = (tmp_path / "REPORT.md").read_text()
    assert "## Versions" in report and "### Reconnects: lost characters" in report
