"""The harness ends the processes that a killed test or benchmark run left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from tests.harness import ROOT, _alive, reap_orphans, wait_until

# A stand-in for a test run: it starts a long-lived child through the harness (as a Service
# starts Daphne and run_huey), prints the child's pid, then waits to be killed.
_RUN = """
import sys, time
from tests.harness import spawn
child = spawn([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def test_children_of_a_killed_run_are_reaped_by_the_next_run() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _RUN], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as run:
        assert run.stdout is not None
        child = int(run.stdout.readline())
        _kill_run_then_reap(run, child)


def _kill_run_then_reap(run: subprocess.Popen[str], child: int) -> None:
    # While the run lives, its child is its own business.
    assert child not in reap_orphans()
    assert _alive(child)

    run.send_signal(signal.SIGKILL)  # no handler, no cleanup: as a killed pytest
    run.wait()
    time.sleep(0.2)
    assert _alive(child), "the orphan outlived its run (as a leftover worker would)"

    assert child in reap_orphans()
    wait_until(lambda: not _alive(child) or _zombie(child), timeout_s=5)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
