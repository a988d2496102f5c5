"""bench/threadprof.py writes its stats on SIGUSR1 whatever its threads are doing, also with a
thread that has not finished a single call (blocked since its first): pstats refuses an
empty profile, and the dump once failed on one."""

from __future__ import annotations

import pstats
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_stats_are_written_with_a_thread_blocked_since_its_start(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, threading, time

            def work():
                return sum(range(1000))

            # Blocked in a C function from its first call: nothing of it ever finishes.
            threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
            for _ in range(100):
                work()
            print("ready", flush=True)
            time.sleep(3600)
            """
        )
    )
    out = tmp_path / "out.pstats"
    with subprocess.Popen(
        [sys.executable, "-m", "bench.threadprof", str(out), str(script)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
            process.send_signal(signal.SIGUSR1)
            assert process.wait(timeout=60) == 0
        finally:
            process.kill()
    functions = {name for _, _, name in pstats.Stats(str(out)).stats}  # type: ignore[attr-defined]
    assert "work" in functions
