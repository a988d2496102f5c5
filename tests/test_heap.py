"""core.heap: what start-up leaves is frozen out of the collector's way, in a web process and
in a worker, and what comes after is collected as before. Each case runs in a process of its
own: freezing is for the life of a process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(code: str, tmp_path: Path) -> str:
    env = dict(os.environ)
    # The embedded default, whatever the tier of this run: nothing here connects anywhere.
    env.pop("REDIS_URL", None)
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3",
        VAR_DIR=str(tmp_path / "var"),
        WORKER_METRICS_PORT="0",
    )
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_freezing_once_per_stage_and_collecting_what_comes_after(tmp_path: Path) -> None:
    out = run(
        """
        import gc, weakref
        from core.heap import freeze_startup_heap

        class Node:
            pass

        kept = [Node() for _ in range(5000)]
        assert gc.get_freeze_count() == 0
        assert freeze_startup_heap("web") is True
        frozen = gc.get_freeze_count()
        assert frozen >= 5000, frozen
        # A second call of the same stage does nothing.
        assert freeze_startup_heap("web") is False
        assert gc.get_freeze_count() == frozen
        # A cycle made after the freeze is still found and freed by the collector.
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
        # A later stage freezes what was loaded since.
        more = [Node() for _ in range(5000)]
        assert freeze_startup_heap("worker") is True
        assert gc.get_freeze_count() >= frozen + 5000
        print("ok")
        """,
        tmp_path,
    )
    assert out == "ok"


def test_the_web_process_freezes_once_its_application_is_loaded(tmp_path: Path) -> None:
    out = run(
        """
        import gc
        import project.asgi
        print(gc.get_freeze_count())
        """,
        tmp_path,
    )
    # Django, Channels, the project's modules: far more than a bare interpreter's objects.
    assert int(out) > 50_000


def test_a_worker_freezes_once_its_machinery_has_started(tmp_path: Path) -> None:
    out = run(
        """
        import gc, os
        import django
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
        django.setup()
        from jobs.tasks import start_housekeeping

        start_housekeeping()
        before = gc.get_freeze_count()
        start_housekeeping()
        print(before, gc.get_freeze_count())
        """,
        tmp_path,
    )
    first, second = (int(n) for n in out.split())
    # The worker machinery (the provider's SDK among it) is frozen, once: the hook runs in
    # every worker thread.
    assert first > 50_000
    assert second == first
